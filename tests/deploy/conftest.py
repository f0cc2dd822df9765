"""Fixtures for the deployment checks: the repository paths, the collector's real
list of environment variables, and a helm binary with a chart renderer.

There is no Docker engine and no cluster here, so the image, the compose stack and
the chart are checked statically and by rendering: `helm template` output is
validated against the Kubernetes OpenAPI schemas shipped in kubernetes-validate.
helm comes from scripts/helm.sh, which builds it with `go install` the first time
(minutes; cached in .cache/bin), hence the long timeout of the tests that use it.
"""

from __future__ import annotations

import re
import subprocess
import sys
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
