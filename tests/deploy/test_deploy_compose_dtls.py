"""The docker-compose DTLS example (deploy/dtls), checked statically."""

from __future__ import annotations

from pathlib import Path

import yaml

from collector.psk import load_psk_file

ROOT = Path(__file__).resolve().parents[2]
OVERRIDE = ROOT / "deploy" / "dtls" / "docker-compose.dtls.yml"


def test_override_serves_coaps_with_the_example_psk_file(
    collector_env_vars: frozenset[str],
) -> None:
    collector = yaml.safe_load(OVERRIDE.read_text())["services"]["collector"]
    env = {k: str(v) for k, v in collector["environment"].items()}
    assert set(env) <= collector_env_vars, set(env) - collector_env_vars
    assert env["COLLECTOR_PLAIN"] == "off"
    assert "5684:5684/udp" in collector["ports"]
    [mount] = collector["volumes"]
    host, container, mode = mount.split(":")
    assert container == env["COLLECTOR_PSK_FILE"] and mode == "ro"
    entries = load_psk_file(str(ROOT / host))
    assert {"dev-17", "dev-18"} <= set(entries)
