"""The chart's collector run for real: `helm template` (in-chart Elasticsearch and
Kibana off, the test run's Elasticsearch as the store) renders the Deployment, its
ConfigMap and its Secret; `podman kube play` runs them with the project's image;
the pod turns ready (/readyz on the metrics port), stores the thesis' demo in
Elasticsearch, and `podman kube down` stops it within the grace period.

What podman (4.3) does not emulate, and so is not checked here: Services (the UDP
LoadBalancer, externalTrafficPolicy), NetworkPolicy, the ServiceAccount, replicas and
the rolling-update strategy (one pod is played), the readiness and startup probes
(ignored; only the liveness probe becomes a container healthcheck) and the preStop
hook. podman publishes every containerPort on the host (hostPort = containerPort),
so the test renders the chart with free ports. The pod runs on slirp4netns with
host-loopback access, the one network here that both publishes ports and reaches
this machine's 127.0.0.1 (as 10.0.2.2), where the test Elasticsearch listens.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.es, pytest.mark.helm, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "iot-collector"
Podman = Callable[..., subprocess.CompletedProcess[str]]
# slirp4netns' address for the host's loopback (allow_host_loopback=true).
SLIRP_HOST = "10.0.2.2"
NETWORK = "slirp4netns:allow_host_loopback=true"


def pod_es_url(url: str) -> str:
    """The test Elasticsearch as the pod reaches it: loopback becomes slirp's host."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname in {"127.0.0.1", "localhost"}:
        parts = parts._replace(netloc=f"{SLIRP_HOST}:{parts.port or 9200}")
    return urllib.parse.urlunsplit(parts).rstrip("/")


def test_chart_deployment_runs_under_kube_play_and_stores_events(
    podman: Podman,
    image: str,
    helm_bin: str,
    tmp_path: Path,
    free_port: Callable[..., int],
    wait_ready: Callable[..., None],
) -> None:
    url = os.environ.get("ES_URL", "").rstrip("/")
    if not url:
        pytest.skip("ES_URL is not set (make test starts Elasticsearch and sets it)")
    from elasticsearch import Elasticsearch

    repository, tag = image.rsplit(":", 1)
    prefix = f"k{uuid.uuid4().hex[:12]}"
    udp, tcp = free_port(socket.SOCK_DGRAM), free_port()
    values = {
        "elasticsearch.enabled": "false",
        "kibana.enabled": "false",
        "store.elasticsearch.url": pod_es_url(url),
        "store.elasticsearch.indexPrefix": prefix,
        "image.repository": repository,
        "image.tag": tag,
        "image.pullPolicy": "Never",
        "collector.port": str(udp),
        "collector.metricsPort": str(tcp),
        "collector.workers": "1",
    }
    shown = ("deployment", "configmap", "secret")
    rendered = subprocess.run(
        [helm_bin, "template", "rel", str(CHART), "--namespace", "iot",
         *[arg for k, v in values.items() for arg in ("--set", f"{k}={v}")],
         *[arg for s in shown for arg in ("--show-only", f"templates/{s}.yaml")]],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    objects = [o for o in yaml.safe_load_all(rendered.stdout) if o]
    assert sorted(o["kind"] for o in objects) == ["ConfigMap", "Deployment", "Secret"]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    kube_file = tmp_path / "collector.yaml"
    kube_file.write_text(rendered.stdout)

    es = Elasticsearch(url, request_timeout=30)
    played = False
    try:
        podman("kube", "play", "--network", NETWORK, str(kube_file), timeout=300)
        played = True
        wait_ready(f"http://127.0.0.1:{tcp}/readyz", deadline_s=120)
        sent = subprocess.run(
            [sys.executable, "-m", "collector.client", "-H", "127.0.0.1", "-P", str(udp),
             "-s", "demoKube", "-o", "probe1", "incremental", "-n", "10", "-f", "1.1",
             "temperature", "15", "--timeout", "30"],
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr
        es.indices.refresh(index=f"{prefix}-*")
        hits = es.search(index=f"{prefix}-*", query={"term": {"sender": "demoKube"}}, size=20)
        assert hits["hits"]["total"]["value"] == 10

        started = time.monotonic()
        podman("kube", "down", str(kube_file), timeout=grace + 60)
        played = False
        took = time.monotonic() - started
        print(f"kube down took {took:.1f}s (grace period {grace}s)")
        assert took < grace, took
        left = podman("pod", "ps", "-q", "--filter", f"name={deployment['metadata']['name']}")
        assert left.stdout.strip() == ""
    finally:
        if played:
            podman("kube", "down", str(kube_file), timeout=grace + 60, check=False)
        es.options(ignore_status=404).indices.delete(index=f"{prefix}-*", expand_wildcards="all")
        es.options(ignore_status=404).indices.delete_index_template(name=f"{prefix}-template")
        es.close()
