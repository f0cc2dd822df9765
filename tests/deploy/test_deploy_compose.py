"""docker-compose.yml and the files it mounts (Prometheus, Grafana, Kibana set-up),
checked statically: there is no Docker engine on the machines that run the tests."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
METRIC = re.compile(r"\biot_collector_[a-z_]+")
KNOWN_METRICS = {
    "iot_collector_requests_total",
    "iot_collector_events_total",
    "iot_collector_store_up",
    "iot_collector_pending_events",
    "iot_collector_request_duration_seconds_bucket",
    "iot_collector_worker_restarts_total",
    "iot_collector_malformed_datagrams_total",
    "iot_collector_duplicates_total",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def env(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: str(v) for k, v in raw.items()}


def expand(value: str) -> str:
    """Resolve ${VAR:-default} the way compose does with VAR unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def host_path(mount: str) -> Path:
    return ROOT / mount.split(":", 1)[0]


def test_stack_has_the_expected_services(services: dict[str, Any]) -> None:
    assert {"elasticsearch", "kibana", "collector", "setup", "prometheus", "grafana"} <= set(
        services
    )


def test_collector_publishes_coap_udp_and_metrics(services: dict[str, Any]) -> None:
    collector = services["collector"]
    assert collector["build"] == "."
    ports = collector["ports"]
    assert "5683:5683/udp" in ports
    metrics_port = env(collector)["COLLECTOR_METRICS_PORT"]
    assert any(p.endswith(f":{metrics_port}") and "/udp" not in p for p in ports)


def test_collector_variables_are_real_flags(
    services: dict[str, Any], collector_env_vars: frozenset[str]
) -> None:
    used = {k for k in env(services["collector"]) if k.startswith("COLLECTOR_")}
    assert used <= collector_env_vars, used - collector_env_vars


def test_collector_writes_to_the_compose_elasticsearch(services: dict[str, Any]) -> None:
    e = env(services["collector"])
    assert e["COLLECTOR_SINK"] == "elasticsearch"
    assert re.fullmatch(r"http://elasticsearch:9200/?", e["COLLECTOR_ES_URL"])
    assert e["COLLECTOR_ES_INDEX_PREFIX"] == "iot-events"
    assert float(e["COLLECTOR_STORE_WAIT"]) > 0
    dep = services["collector"]["depends_on"]["elasticsearch"]
    assert dep["condition"] == "service_healthy"
    assert services["elasticsearch"]["healthcheck"]["test"]


def test_collector_is_hardened_and_drains_before_being_killed(services: dict[str, Any]) -> None:
    collector = services["collector"]
    e = env(collector)
    assert collector["read_only"] is True
    assert e["PROMETHEUS_MULTIPROC_DIR"] in collector["tmpfs"]
    assert "/tmp" in collector["tmpfs"]
    assert collector["cap_drop"] == ["ALL"]
    grace = collector["stop_grace_period"]
    assert re.fullmatch(r"\d+s", grace)
    assert int(grace[:-1]) > float(e["COLLECTOR_DRAIN_TIMEOUT"])


def test_elasticsearch_is_single_node_with_heap_and_named_volume(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    es = services["elasticsearch"]
    assert es["image"].startswith("docker.elastic.co/elasticsearch/elasticsearch:")
    e = env(es)
    assert e["discovery.type"] == "single-node"
    heap = expand(e["ES_JAVA_OPTS"])
    xms, xmx = re.search(r"-Xms(\S+)", heap), re.search(r"-Xmx(\S+)", heap)
    assert xms and xmx and xms.group(1) == xmx.group(1), heap
    (volume,) = es["volumes"]
    name, target = volume.split(":")[:2]
    assert target == "/usr/share/elasticsearch/data"
    assert name in compose["volumes"], "a named volume, not a bind mount"


def test_elastic_images_share_one_version(services: dict[str, Any]) -> None:
    versions = {
        expand(services[s]["image"]).rsplit(":", 1)[1] for s in ("elasticsearch", "kibana", "setup")
    }
    (version,) = versions
    assert re.fullmatch(r"8\.19\.\d+", version)


def test_setup_imports_the_saved_objects_once_kibana_is_up(services: dict[str, Any]) -> None:
    setup = services["setup"]
    assert setup["depends_on"]["kibana"]["condition"] == "service_healthy"
    assert setup.get("restart") == "no"
    (mount,) = setup["volumes"]
    mounted, target = mount.split(":")[:2]
    e = env(setup)
    script = setup["entrypoint"][-1]
    assert script.startswith(target) and (host_path(mount) / Path(script).name).is_file()
    objects = e["SAVED_OBJECTS"]
    assert objects.startswith(target)
    assert (ROOT / mounted / Path(objects).relative_to(target)).is_file()
    assert e["KIBANA_URL"] == "http://kibana:5601"
    assert e["ELASTICSEARCH_URL"] == "http://elasticsearch:9200"


def test_setup_script_is_valid_bash_and_uses_the_import_api() -> None:
    script = ROOT / "deploy" / "kibana" / "setup.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "/api/saved_objects/_import?overwrite=true" in text
    assert "kbn-xsrf" in text


def test_monitoring_profile_scrapes_the_collector(services: dict[str, Any]) -> None:
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name
    for name in ("elasticsearch", "kibana", "collector", "setup"):
        assert "profiles" not in services[name], name
    prom = services["prometheus"]
    mount = next(v for v in prom["volumes"] if v.startswith("./"))
    config_dir = host_path(mount)
    config = yaml.safe_load((config_dir / "prometheus.yml").read_text())
    targets = [
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    metrics_port = env(services["collector"])["COLLECTOR_METRICS_PORT"]
    assert f"collector:{metrics_port}" in targets
    for rule_file in config["rule_files"]:
        assert (config_dir / Path(rule_file).name).is_file(), rule_file


def test_grafana_is_provisioned_with_prometheus_and_a_dashboard(services: dict[str, Any]) -> None:
    mounts = dict(
        v.split(":")[:2][::-1] for v in services["grafana"]["volumes"] if v.startswith("./")
    )
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())[
        "providers"
    ]
    dashboards_dir = ROOT / mounts[provider["options"]["path"]]
    dashboards = list(dashboards_dir.glob("*.json"))
    assert dashboards
    for path in dashboards:
        dash = json.loads(path.read_text())
        exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
        assert exprs, path
        used = {m for e in exprs for m in METRIC.findall(e)}
        assert used <= KNOWN_METRICS, used - KNOWN_METRICS
        for panel in dash["panels"]:
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
