"""The Dockerfile and .dockerignore, read as text (no Docker engine here): the final
stage runs as a non-root user, carries no compiler, exposes CoAP over UDP, checks
/healthz and starts the collector."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPILERS = ("build-essential", "gcc", "g++", "clang", "make", "python3-dev", "libc6-dev")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages of a Dockerfile: line continuations joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "dangling line continuation"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.I)
            assert m, line
            stages.append(Stage(base=m.group(1), name=m.group(2)))
        elif stages:
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_multi_stage_on_python_311_slim(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    text = (ROOT / "Dockerfile").read_text()
    (default,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M)
    assert default.startswith("python:3.11-slim")
    assert all(s.base == "${PYTHON_IMAGE}" for s in stages)
    assert any("pip wheel" in r for r in stages[0].all("RUN"))


def test_final_stage_runs_as_a_non_root_user(final: Stage) -> None:
    users = final.all("USER")
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert not user.isdigit() or int(user) >= 1000


def test_final_stage_has_no_compiler_and_no_sources(final: Stage) -> None:
    runs = " ".join(final.all("RUN"))
    for package in COMPILERS:
        assert not re.search(rf"(?<![\w-]){re.escape(package)}(?![\w-])", runs), package
    assert "apt-get install" not in runs
    for copy in final.all("COPY"):
        assert "--from=" in copy, f"the runtime stage copies only build outputs: {copy}"
    assert "--no-index" in runs, "installs the prebuilt wheels only"


def test_exposes_coap_udp_and_metrics(final: Stage) -> None:
    exposed = " ".join(final.all("EXPOSE")).split()
    assert "5683/udp" in exposed
    assert "9100" in exposed or "9100/tcp" in exposed


def test_healthcheck_asks_healthz_without_curl(final: Stage) -> None:
    (check,) = final.all("HEALTHCHECK")
    assert "/healthz" in check
    assert "curl" not in check and "wget" not in check
    cmd = json.loads(check.split("CMD", 1)[1].strip())
    assert cmd[0] == "python"
    compile(cmd[2], "<healthcheck>", "exec")


def test_default_command_serves_and_env_names_are_real_flags(
    final: Stage, collector_env_vars: frozenset[str]
) -> None:
    (cmd,) = final.all("CMD")
    assert json.loads(cmd) == ["iot-collector", "serve"]
    env_text = " ".join(final.all("ENV"))
    names = set(re.findall(r"\b(COLLECTOR_[A-Z_]+)=", env_text))
    assert names <= collector_env_vars, names - collector_env_vars
    multiproc = re.search(r"PROMETHEUS_MULTIPROC_DIR=(\S+)", env_text)
    assert multiproc
    assert any("${PROMETHEUS_MULTIPROC_DIR}" in r for r in final.all("RUN"))


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p.rstrip("/")) for p in patterns)

    for path in (".venv", ".cache", ".git", "data", "events.db", ".hypothesis"):
        assert ignored(path), path
    # What the build stage copies must stay in the context.
    build_copies = [
        shlex.split(c)[:-1]
        for c in parse_dockerfile((ROOT / "Dockerfile").read_text())[0].all("COPY")
    ]
    for sources in build_copies:
        for source in sources:
            assert not ignored(source), source
            assert (ROOT / source).exists(), source
