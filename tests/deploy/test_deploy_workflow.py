"""The GitHub Actions pipeline (.github/workflows/ci.yml): actionlint accepts it
(built from the Go module proxy by scripts/actionlint.sh, cached in .cache/bin), and
its jobs do what the thesis' pipeline did: lint and test on every push and pull
request, a daemonless image build and push plus the chart as an OCI artifact on
version tags, and a manual deploy with `helm upgrade --install`."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.timeout(1800)

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
BUILD_TIMEOUT_S = 1500


@pytest.fixture(scope="module")
def actionlint() -> str:
    try:
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / "actionlint.sh")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"scripts/actionlint.sh did not finish in {BUILD_TIMEOUT_S}s")
    if done.returncode != 0:
        pytest.fail(f"scripts/actionlint.sh failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def lint(actionlint: str, path: Path) -> subprocess.CompletedProcess[str]:
    # shellcheck and pyflakes integrations off: they are not installed everywhere,
    # and the verdict must not depend on what happens to be on PATH.
    return subprocess.run(
        [actionlint, "-no-color", "-shellcheck=", "-pyflakes=", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    doc: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the key `on` as the boolean true.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def steps_text(job: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) + str(step.get("uses", "")) for step in job["steps"])


def test_actionlint_accepts_the_workflow(actionlint: str) -> None:
    done = lint(actionlint, WORKFLOW)
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_rejects_a_broken_copy(actionlint: str, tmp_path: Path) -> None:
    # The linter really runs: an unknown runner key and an undefined job dependency.
    broken = WORKFLOW.read_text().replace("runs-on:", "runs-onn:", 1)
    broken = broken.replace("needs: test", "needs: tset", 1)
    path = tmp_path / ".github" / "workflows" / "ci.yml"
    path.parent.mkdir(parents=True)
    path.write_text(broken)
    done = lint(actionlint, path)
    assert done.returncode != 0
    assert "runs-onn" in done.stdout and "tset" in done.stdout, done.stdout


def test_lint_and_test_on_pushes_and_pull_requests(workflow: dict[str, Any]) -> None:
    on = workflow["on"]
    assert "pull_request" in on and "push" in on
    assert "v*" in on["push"]["tags"]
    text = steps_text(workflow["jobs"]["test"])
    assert "make lint" in text and "make test" in text


def test_image_and_chart_pushed_on_tags(workflow: dict[str, Any]) -> None:
    jobs = workflow["jobs"]
    for name in ("image", "chart"):
        assert "refs/tags/v" in jobs[name]["if"], name
        assert jobs[name]["needs"] == "test"
        assert jobs[name]["permissions"]["packages"] == "write"
    image = steps_text(jobs["image"])
    assert "make image" in image and "podman.sh push" in image
    assert "docker" not in image, "the image is built daemonless"
    chart = steps_text(jobs["chart"])
    assert "helm package" in chart and "helm push" in chart and "oci://" in chart


def test_manual_deploy_with_a_kubeconfig_secret(workflow: dict[str, Any]) -> None:
    assert "workflow_dispatch" in workflow["on"]
    deploy = workflow["jobs"]["deploy"]
    assert deploy["if"] == "github.event_name == 'workflow_dispatch'"
    (step,) = [s for s in deploy["steps"] if "helm upgrade --install" in s.get("run", "")]
    assert step["env"]["KUBECONFIG_DATA"] == "${{ secrets.KUBECONFIG }}"
    assert "KUBECONFIG=" in step["run"]
