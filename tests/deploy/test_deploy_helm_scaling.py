"""The chart's scheduling, scaling and monitoring options, rendered with `helm
template`: topology spread and priority (which matter with externalTrafficPolicy:
Local, where a node without a collector pod drops its datagrams), the startup probe,
extra volumes and env, the PodMonitor next to the ServiceMonitor, the HPA on CPU and
on requests per second with its behavior, the Grafana dashboard ConfigMap for the
sidecar, and Kibana saved objects that follow the index prefix."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.helm, pytest.mark.timeout(1800)]

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]
ROOT = Path(__file__).resolve().parents[2]
FULLNAME = "rel-iot-collector"
SELECTOR = {
    "app.kubernetes.io/name": "iot-collector",
    "app.kubernetes.io/instance": "rel",
    "app.kubernetes.io/component": "collector",
}


def one(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def pod_spec(objects: list[Manifest]) -> Manifest:
    spec: Manifest = one(objects, "Deployment", FULLNAME)["spec"]["template"]["spec"]
    return spec


def collector(objects: list[Manifest]) -> Manifest:
    (found,) = [c for c in pod_spec(objects)["containers"] if c["name"] == "collector"]
    return found


def failed_render(
    helm: Callable[..., subprocess.CompletedProcess[str]],
    template_cmd: Callable[..., list[str]],
    *args: str,
) -> str:
    done = helm(*template_cmd(*args))
    assert done.returncode != 0, "rendering should have failed"
    return done.stderr


def test_pods_spread_over_nodes_by_default(default_objects: list[Manifest]) -> None:
    spec = pod_spec(default_objects)
    (spread,) = spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"] == {"matchLabels": SELECTOR}
    assert "priorityClassName" not in spec


def test_spread_constraints_and_priority_as_given(all_objects: list[Manifest]) -> None:
    spec = pod_spec(all_objects)
    assert spec["priorityClassName"] == "iot-critical"
    keys = [(c["topologyKey"], c["whenUnsatisfiable"]) for c in spec["topologySpreadConstraints"]]
    assert keys == [
        ("kubernetes.io/hostname", "DoNotSchedule"),
        ("topology.kubernetes.io/zone", "ScheduleAnyway"),
    ]
    assert all(
        c["labelSelector"] == {"matchLabels": SELECTOR} for c in spec["topologySpreadConstraints"]
    )


def test_an_explicit_label_selector_is_kept(render: Render) -> None:
    spec = pod_spec(
        render(
            "--set",
            "topologySpreadConstraints[0].maxSkew=2",
            "--set",
            "topologySpreadConstraints[0].topologyKey=zone",
            "--set",
            "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
            "--set",
            "topologySpreadConstraints[0].labelSelector.matchLabels.team=iot",
        )
    )
    (spread,) = spec["topologySpreadConstraints"]
    assert spread["labelSelector"] == {"matchLabels": {"team": "iot"}}
    assert spread["maxSkew"] == 2


@pytest.mark.parametrize("objects", ["default_objects", "all_objects"])
def test_startup_probe_covers_the_store_wait(
    objects: str, request: pytest.FixtureRequest, render: Render
) -> None:
    rendered: list[Manifest] = request.getfixturevalue(objects)
    container = collector(rendered)
    probe = container["startupProbe"]
    assert probe["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert "metrics" in {p["name"] for p in container["ports"]}
    config = one(rendered, "ConfigMap", FULLNAME)["data"]
    assert probe["periodSeconds"] * probe["failureThreshold"] > float(
        config["COLLECTOR_STORE_WAIT"]
    )


def test_extra_volumes_mounts_and_env(all_objects: list[Manifest]) -> None:
    spec = pod_spec(all_objects)
    assert {
        "name": "extra-config",
        "configMap": {"name": "iot-collector-extra", "optional": True},
    } in spec["volumes"]
    container = collector(all_objects)
    assert {
        "name": "extra-config",
        "mountPath": "/etc/iot-collector/extra",
        "readOnly": True,
    } in container["volumeMounts"]
    assert {"name": "TZ", "value": "UTC"} in container["env"]
    # The chart's own mounts stay.
    assert {"prometheus-multiproc", "tmp"} <= {m["name"] for m in container["volumeMounts"]}


def test_pod_monitor_scrapes_the_collector_pods(render: Render) -> None:
    objects = render(
        "--set", "podMonitor.enabled=true", "--set", "podMonitor.forceCreate=true",
        "--set", "serviceMonitor.enabled=false", "--set", "podMonitor.labels.release=kps",
    )  # fmt: skip
    monitor = one(objects, "PodMonitor", FULLNAME)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["selector"]["matchLabels"] == SELECTOR
    pod_labels = one(objects, "Deployment", FULLNAME)["spec"]["template"]["metadata"]["labels"]
    assert SELECTOR.items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert not [o for o in objects if o["kind"] == "ServiceMonitor"]


def test_pod_monitor_needs_the_operator_api(render: Render) -> None:
    objects = render("--set", "podMonitor.enabled=true", "--set", "serviceMonitor.enabled=false")
    assert not [o for o in objects if o["kind"] == "PodMonitor"]
    objects = render(
        "--set", "podMonitor.enabled=true", "--set", "serviceMonitor.enabled=false",
        "--api-versions", "monitoring.coreos.com/v1",
    )  # fmt: skip
    one(objects, "PodMonitor", FULLNAME)


def test_pod_and_service_monitor_together_fail(
    helm: Callable[..., subprocess.CompletedProcess[str]],
    template_cmd: Callable[..., list[str]],
) -> None:
    err = failed_render(
        helm,
        template_cmd,
        "--set",
        "podMonitor.enabled=true",
        "--set",
        "podMonitor.forceCreate=true",
    )
    assert "scrape every pod twice" in err


def test_hpa_on_cpu_and_requests_per_second_with_behavior(all_objects: list[Manifest]) -> None:
    hpa = one(all_objects, "HorizontalPodAutoscaler", FULLNAME)["spec"]
    cpu, rps = hpa["metrics"]
    assert cpu["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}
    assert rps["type"] == "Pods"
    assert rps["pods"]["metric"]["name"] == "iot_collector_requests_per_second"
    assert rps["pods"]["target"] == {"type": "AverageValue", "averageValue": "2000"}
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert hpa["behavior"]["scaleUp"]["policies"]
    # While the HPA owns the replica count the Deployment does not set it.
    assert "replicas" not in one(all_objects, "Deployment", FULLNAME)["spec"]


def test_hpa_on_requests_per_second_alone(render: Render) -> None:
    hpa = one(
        render(
            "--set",
            "autoscaling.enabled=true",
            "--set",
            "autoscaling.targetCPUUtilizationPercentage=0",
            "--set",
            "autoscaling.requestsPerSecond.targetAverageValue=1500",
        ),
        "HorizontalPodAutoscaler",
    )
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["target"]["averageValue"] == "1500"


def test_hpa_without_a_metric_fails(
    helm: Callable[..., subprocess.CompletedProcess[str]],
    template_cmd: Callable[..., list[str]],
) -> None:
    err = failed_render(
        helm, template_cmd,
        "--set", "autoscaling.enabled=true", "--set", "autoscaling.targetCPUUtilizationPercentage=0",
    )  # fmt: skip
    assert "autoscaling.enabled needs a metric" in err


def test_grafana_dashboard_configmap_for_the_sidecar(
    all_objects: list[Manifest], default_objects: list[Manifest]
) -> None:
    cm = one(all_objects, "ConfigMap", f"{FULLNAME}-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "IoT"}
    shipped = ROOT / "deploy" / "grafana" / "dashboards" / "iot-collector.json"
    assert json.loads(cm["data"]["iot-collector.json"]) == json.loads(shipped.read_text())
    assert (ROOT / "charts/iot-collector/files/grafana-dashboard.json").read_bytes() == (
        shipped.read_bytes()
    )
    assert not [o for o in default_objects if o["metadata"]["name"].endswith("-grafana-dashboard")]


def test_kibana_saved_objects_follow_the_index_prefix(render: Render) -> None:
    objects = render("--set", "store.elasticsearch.indexPrefix=fleet")
    ndjson = one(objects, "ConfigMap", f"{FULLNAME}-kibana-saved-objects")["data"][
        "saved_objects.ndjson"
    ]
    assert "iot-events-*" not in ndjson
    saved = [json.loads(line) for line in ndjson.splitlines()]
    (view,) = [o for o in saved if o["type"] == "index-pattern"]
    assert view["attributes"]["title"] == "fleet-*"
    assert "index=fleet-*" in ndjson
    config = one(objects, "ConfigMap", FULLNAME)["data"]
    assert config["COLLECTOR_ES_INDEX_PREFIX"] == "fleet"
