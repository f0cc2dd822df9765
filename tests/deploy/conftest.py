"""Fixtures for the deployment checks: the repository paths, the collector's real
list of environment variables, a helm binary with a chart renderer, and podman with
the project's image.

There is no Docker engine and no cluster here. The compose stack and the chart are
checked statically and by rendering: `helm template` output is validated against
the Kubernetes OpenAPI schemas shipped in kubernetes-validate. helm comes from
scripts/helm.sh, which builds it with `go install` the first time (minutes; cached
in .cache/bin), hence the long timeout of the tests that use it. The image is built
for real, once per session, by scripts/image.sh (podman, daemonless; the first build
takes minutes, later ones reuse podman's cache), and run by the image tests and by
`podman kube play` of the chart's Deployment.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "iot-collector"
ALL_FEATURES = CHART / "ci" / "all-features-values.yaml"
# The Kubernetes version the chart is rendered for; kubernetes-validate checks
# against it and against the oldest version the chart's kubeVersion admits.
KUBE_VERSION = "1.34.0"
HELM_BUILD_TIMEOUT_S = 1700
# A first build on a fresh machine: the Debian base, then the two stages (the
# build stage installs a compiler); minutes on a loaded 2-core box.
IMAGE_BUILD_TIMEOUT_S = 1200
PODMAN_SH = ROOT / "scripts" / "podman.sh"

Manifest = dict[str, Any]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "helm: needs helm (scripts/helm.sh builds it with go the first time)"
    )


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def collector_env_vars() -> frozenset[str]:
    """Every COLLECTOR_* variable `iot-collector serve` reads, from its own --help."""
    out = subprocess.run(
        [sys.executable, "-m", "collector.cli", "serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    names = frozenset(re.findall(r"\bCOLLECTOR_[A-Z0-9_]+\b", out))
    assert "COLLECTOR_SINK" in names, out
    return names


@pytest.fixture(scope="session")
def helm_bin() -> str:
    """Path of a helm binary (built once through the Go module proxy if needed)."""
    try:
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / "helm.sh")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=HELM_BUILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"scripts/helm.sh did not finish in {HELM_BUILD_TIMEOUT_S}s")
    if done.returncode != 0:
        pytest.fail(f"scripts/helm.sh failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def helm(helm_bin: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """helm(*args) -> the finished helm process (never raises on its exit status)."""

    def _helm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [helm_bin, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
        )

    return _helm


def template_args(*args: str) -> list[str]:
    return [
        "template",
        "rel",
        str(CHART),
        "--namespace",
        "iot",
        "--kube-version",
        KUBE_VERSION,
        *args,
    ]


@pytest.fixture(scope="session")
def render(helm_bin: str) -> Callable[..., list[Manifest]]:
    """render(*helm_args) -> the rendered objects (cached per argument list)."""
    cache: dict[tuple[str, ...], list[Manifest]] = {}

    def _render(*args: str) -> list[Manifest]:
        if args not in cache:
            done = subprocess.run(
                [helm_bin, *template_args(*args)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            cache[args] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
        return cache[args]

    return _render


@pytest.fixture(scope="session")
def default_objects(render: Callable[..., list[Manifest]]) -> list[Manifest]:
    return render()


@pytest.fixture(scope="session")
def all_objects(render: Callable[..., list[Manifest]]) -> list[Manifest]:
    return render("-f", str(ALL_FEATURES), "--api-versions", "monitoring.coreos.com/v1")


@pytest.fixture(scope="session")
def template_cmd() -> Callable[..., list[str]]:
    """template_cmd(*extra) -> the helm arguments of a `helm template` run."""
    return template_args


@pytest.fixture(params=["default", "all-features"])
def rendered(request: pytest.FixtureRequest) -> Iterator[list[Manifest]]:
    yield request.getfixturevalue(
        "default_objects" if request.param == "default" else "all_objects"
    )


Podman = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def podman() -> Podman:
    """podman(*args, timeout=, check=) -> the finished process, run through
    scripts/podman.sh (the project's containers.conf); skips where podman is absent."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/setup.sh installs it as root on Debian)")

    def _podman(
        *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["bash", str(PODMAN_SH), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            pytest.fail(f"podman {' '.join(args)} -> {done.returncode}: {done.stderr[-3000:]}")
        return done

    return _podman


@pytest.fixture(scope="session")
def image(podman: Podman) -> str:
    """The project's image, built once per session by scripts/image.sh (`make image`)."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / "image.sh")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=IMAGE_BUILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"scripts/image.sh did not finish in {IMAGE_BUILD_TIMEOUT_S}s")
    if done.returncode != 0:
        pytest.fail(f"scripts/image.sh failed ({done.returncode}): {done.stderr[-3000:]}")
    tag = done.stdout.strip().splitlines()[-1]
    print(f"image {tag} built in {time.monotonic() - started:.1f}s")
    return tag


@pytest.fixture
def containers(podman: Podman) -> Iterator[Callable[..., str]]:
    """start(*run_args) -> the name of a detached container (removed afterwards)."""
    names: list[str] = []

    def _start(*args: str) -> str:
        name = f"iotc-test-{uuid.uuid4().hex[:10]}"
        names.append(name)
        podman("run", "-d", "--name", name, *args)
        return name

    yield _start
    for name in names:
        podman("rm", "-f", "-t", "0", name, check=False)


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def free_port() -> Callable[..., int]:
    """free_port(kind=SOCK_STREAM) -> a port free on 127.0.0.1 right now (TCP or UDP)."""
    return _free_port


def _wait_ready(url: str, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    last: object = None
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = exc
            exc.close()  # it holds the connection
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    pytest.fail(f"{url} not ready within {deadline_s}s (last: {last})")


@pytest.fixture(scope="session")
def wait_ready() -> Callable[..., None]:
    """wait_ready(url, deadline_s=60) polls until the URL answers 200, else fails."""
    return _wait_ready
