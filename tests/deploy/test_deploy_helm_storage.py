"""The chart's storage features (issue 13): the spool StatefulSet, the refusal of a
spool on an emptyDir, a three-node in-chart Elasticsearch and the retention CronJob.
Rendered with `helm template` and validated like the rest of the chart."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest

from .conftest import template_args

pytestmark = [pytest.mark.helm, pytest.mark.timeout(1800)]

Manifest = dict[str, Any]
FULLNAME = "rel-iot-collector"
SPOOL = ("--set", "spool.enabled=true")


def one(objects: list[Manifest], kind: str, name: str) -> Manifest:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def container(workload: Manifest, name: str) -> Manifest:
    (found,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def test_spool_runs_the_collector_as_a_statefulset_with_a_claim_per_pod(
    render: Callable[..., list[Manifest]],
):
    objects = render(*SPOOL, "--set", "autoscaling.enabled=true")
    assert not [
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == FULLNAME
    ]
    sts = one(objects, "StatefulSet", FULLNAME)
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "spool"
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    c = container(sts, "collector")
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["COLLECTOR_SPOOL_PATH"] == "/var/spool/iot-collector"
    assert env["COLLECTOR_SPOOL_MAX_BYTES"] == "1G"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["spool"] == "/var/spool/iot-collector"
    # No emptyDir named spool: the claim is the volume.
    assert "spool" not in {v["name"] for v in sts["spec"]["template"]["spec"]["volumes"]}
    hpa = one(objects, "HorizontalPodAutoscaler", FULLNAME)
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    for obj in objects:
        if obj["kind"] not in ("ServiceMonitor", "PrometheusRule"):
            kubernetes_validate.validate(obj, "1.34.0", strict=True)


def test_spool_on_an_emptydir_is_refused_unless_accepted(
    helm: Callable[..., Any], render: Callable[..., list[Manifest]]
):
    refused = helm(*template_args(*SPOOL, "--set", "spool.persistence.enabled=false"))
    assert refused.returncode != 0 and "spool.acceptLossWithPod" in refused.stderr
    objects = render(
        *SPOOL, "--set", "spool.persistence.enabled=false", "--set", "spool.acceptLossWithPod=true"
    )
    sts = one(objects, "StatefulSet", FULLNAME)
    assert "volumeClaimTemplates" not in sts["spec"]
    (vol,) = [v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "spool"]
    assert "emptyDir" in vol


def test_three_node_elasticsearch_has_what_a_cluster_needs(render: Callable[..., list[Manifest]]):
    objects = render("--set", "elasticsearch.replicas=3")
    name = f"{FULLNAME}-elasticsearch"
    sts = one(objects, "StatefulSet", name)
    assert sts["spec"]["replicas"] == 3
    env = {e["name"]: e.get("value") for e in container(sts, "elasticsearch")["env"]}
    assert "discovery.type" not in env
    assert env["discovery.seed_hosts"] == f"{name}-headless"
    assert env["cluster.initial_master_nodes"] == ",".join(f"{name}-{i}" for i in range(3))
    pdb = one(objects, "PodDisruptionBudget", name)
    assert pdb["spec"]["maxUnavailable"] == 1
    anti = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    policy = one(objects, "NetworkPolicy", name)
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == {9200, 9300}
    headless = one(objects, "Service", f"{name}-headless")
    assert {p["port"] for p in headless["spec"]["ports"]} == {9200, 9300}
    for obj in objects:
        if obj["kind"] not in ("ServiceMonitor", "PrometheusRule"):
            kubernetes_validate.validate(obj, "1.34.0", strict=True)
    single = render()
    env1 = {
        e["name"]: e.get("value")
        for e in container(one(single, "StatefulSet", name), "elasticsearch")["env"]
    }
    assert env1["discovery.type"] == "single-node"


def test_retention_cronjob_runs_the_indices_command(render: Callable[..., list[Manifest]]):
    objects = render("--set", "cronJobs.retention.enabled=true")
    job = one(objects, "CronJob", f"{FULLNAME}-retention")
    (c,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["iot-collector", "indices", "--delete-older-than", "30d"]
    assert c["envFrom"] == [{"configMapRef": {"name": FULLNAME}}]
    kubernetes_validate.validate(job, "1.34.0", strict=True)


def test_values_schema_knows_the_storage_values(helm: Callable[..., Any]):
    bad = helm(*template_args("--set", "elasticsearch.replicas=2"))
    assert bad.returncode != 0
    bad = helm(*template_args("--set", "cronJobs.retention.deleteOlderThan=a-month"))
    assert bad.returncode != 0
