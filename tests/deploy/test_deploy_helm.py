"""The Helm chart, rendered with `helm template` and checked object by object.

Built-in kinds are validated against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict: unknown fields are errors) for the newest version
and for the oldest one the chart admits; Prometheus Operator and other CRD kinds,
which have no schema there, get a structural check of their own. Then the
essentials an operator relies on are asserted one by one.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from collector.client import cli as client_cli

pytestmark = [pytest.mark.helm, pytest.mark.timeout(1800)]

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]

CHART = Path(__file__).resolve().parents[2] / "charts" / "iot-collector"
ALL_FEATURES = str(CHART / "ci" / "all-features-values.yaml")
FULLNAME = "rel-iot-collector"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
METRIC_NAMES = {
    "iot_collector_requests_total",
    "iot_collector_events_total",
    "iot_collector_store_up",
    "iot_collector_pending_events",
    "iot_collector_request_duration_seconds",
    "iot_collector_worker_restarts_total",
    "iot_collector_malformed_datagrams_total",
    "iot_collector_duplicates_total",
    "iot_collector_spool_oldest_event_age_seconds",
}
ALERTS = {
    "IotCollectorHighServerErrorRatio",
    "IotCollectorStoreUnavailable",
    "IotCollectorNoEventsReceived",
    "IotCollectorTargetMissing",
    "IotCollectorSpoolBacklog",
}


def find(objects: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def deployment(objects: list[Manifest]) -> Manifest:
    return one(objects, "Deployment", FULLNAME)


def collector_container(objects: list[Manifest]) -> Manifest:
    (found,) = [
        c
        for c in deployment(objects)["spec"]["template"]["spec"]["containers"]
        if c["name"] == "collector"
    ]
    return found


def env_of(objects: list[Manifest]) -> dict[str, str]:
    """The collector's effective environment: its ConfigMap, then its env list."""
    env = dict(one(objects, "ConfigMap", FULLNAME)["data"])
    for item in collector_container(objects)["env"]:
        env[item["name"]] = item.get("value", "<from secret>")
    return env


def pod_specs(objects: list[Manifest]) -> list[tuple[str, Manifest]]:
    specs = []
    for o in objects:
        name = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] == "Pod":
            specs.append((name, o["spec"]))
        elif o["kind"] in ("Deployment", "StatefulSet", "Job"):
            specs.append((name, o["spec"]["template"]["spec"]))
        elif o["kind"] == "CronJob":
            specs.append((name, o["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    return specs


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- helm lint and schema validation -------------------------------------------------


@pytest.mark.parametrize("values", [[], ["-f", ALL_FEATURES]], ids=["default", "all-features"])
def test_helm_lint_strict_passes(helm: Callable[..., Any], values: list[str]) -> None:
    done = helm("lint", "--strict", str(CHART), *values)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("kube_version", ["1.25.0", "1.34.0"])
def test_every_rendered_object_is_valid_for_kubernetes(
    rendered: list[Manifest], kube_version: str
) -> None:
    validated = 0
    for obj in rendered:
        if obj["kind"] in CRD_KINDS:
            continue
        # Raises ValidationError (unknown field, wrong type) or SchemaNotFoundError
        # (a kind or apiVersion that Kubernetes version doesn't serve).
        kubernetes_validate.validate(obj, kube_version, strict=True)
        validated += 1
    assert validated >= 8


def test_all_features_render_every_optional_kind(all_objects: list[Manifest]) -> None:
    kinds = {o["kind"] for o in all_objects}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
        "CronJob",
        "StatefulSet",
        "Ingress",
        "Job",
        "Pod",
    } <= kinds


def test_object_names_are_unique_per_kind(rendered: list[Manifest]) -> None:
    keys = [(o["kind"], o["metadata"]["name"]) for o in rendered]
    assert len(keys) == len(set(keys))
    for kind, name in keys:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), (kind, name)
        assert len(name) <= 63, (kind, name)


# --- the collector Deployment and its Services ---------------------------------------


def test_udp_5683_on_container_and_loadbalancer_service(rendered: list[Manifest]) -> None:
    ports = {p["name"]: p for p in collector_container(rendered)["ports"]}
    assert ports["coap"] == {"name": "coap", "containerPort": 5683, "protocol": "UDP"}
    svc = one(rendered, "Service", FULLNAME)
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    assert svc["spec"]["ports"] == [
        {"name": "coap", "port": 5683, "targetPort": "coap", "protocol": "UDP"}
    ]


def test_services_select_only_collector_pods(rendered: list[Manifest]) -> None:
    pod_labels = deployment(rendered)["spec"]["template"]["metadata"]["labels"]
    others = [
        o["spec"]["template"]["metadata"]["labels"]
        for o in rendered
        if o["kind"] in ("Deployment", "StatefulSet") and o["metadata"]["name"] != FULLNAME
    ]
    assert others, "the default install has in-chart Elasticsearch and Kibana"
    for name in (FULLNAME, f"{FULLNAME}-metrics"):
        selector = one(rendered, "Service", name)["spec"]["selector"]
        assert matches(selector, pod_labels)
        assert not any(matches(selector, labels) for labels in others), name
    assert matches(deployment(rendered)["spec"]["selector"]["matchLabels"], pod_labels)


def test_probes_use_http_on_the_metrics_port(rendered: list[Manifest]) -> None:
    c = collector_container(rendered)
    metrics = next(p for p in c["ports"] if p["name"] == "metrics")
    assert metrics["protocol"] == "TCP"
    assert str(metrics["containerPort"]) == env_of(rendered)["COLLECTOR_METRICS_PORT"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    svc = one(rendered, "Service", f"{FULLNAME}-metrics")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert svc["spec"]["ports"][0]["protocol"] == "TCP"


@pytest.mark.parametrize("replicas", [1, 3, 7])
def test_replica_count_is_honoured(render: Render, replicas: int) -> None:
    objects = render("--set", f"replicaCount={replicas}")
    assert deployment(objects)["spec"]["replicas"] == replicas
    assert not find(objects, "HorizontalPodAutoscaler")


def test_autoscaling_hands_replicas_to_the_hpa(all_objects: list[Manifest]) -> None:
    assert "replicas" not in deployment(all_objects)["spec"]
    hpa = one(all_objects, "HorizontalPodAutoscaler", FULLNAME)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    pdb = one(all_objects, "PodDisruptionBudget", FULLNAME)
    pod_labels = deployment(all_objects)["spec"]["template"]["metadata"]["labels"]
    assert matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)


@pytest.mark.parametrize(
    ("cpu_limit", "workers"),
    [("2", 2), ("1500m", 2), ("500m", 1), ("4000m", 4), ("3", 3), ("2.5", 3), ("100m", 1)],
)
def test_workers_follow_the_cpu_limit(render: Render, cpu_limit: str, workers: int) -> None:
    objects = render("--set-string", f"resources.limits.cpu={cpu_limit}")
    assert env_of(objects)["COLLECTOR_WORKERS"] == str(workers)


def test_explicit_workers_override_the_cpu_limit(render: Render) -> None:
    objects = render("--set", "collector.workers=6")
    assert env_of(objects)["COLLECTOR_WORKERS"] == "6"


def test_grace_period_exceeds_prestop_plus_drain(rendered: list[Manifest]) -> None:
    spec = deployment(rendered)["spec"]["template"]["spec"]
    env = env_of(rendered)
    (sleep_cmd,) = [c["lifecycle"]["preStop"]["exec"]["command"] for c in spec["containers"]]
    assert sleep_cmd[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > float(sleep_cmd[1]) + float(
        env["COLLECTOR_DRAIN_TIMEOUT"]
    )


@pytest.mark.parametrize(
    "overrides",
    [
        ["terminationGracePeriodSeconds=10"],
        ["terminationGracePeriodSeconds=15", "collector.drainTimeout=10"],
        ["collector.drainTimeout=60"],
    ],
)
def test_rendering_fails_when_grace_period_is_too_short(
    helm: Callable[..., Any], template_cmd: Callable[..., list[str]], overrides: list[str]
) -> None:
    args = [a for o in overrides for a in ("--set", o)]
    done = helm(*template_cmd(*args))
    assert done.returncode != 0
    assert "terminationGracePeriodSeconds" in done.stderr


def test_collector_runs_non_root_read_only_without_capabilities(
    rendered: list[Manifest],
) -> None:
    spec = deployment(rendered)["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    sc = collector_container(rendered)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]


def test_every_chart_pod_drops_all_capabilities_and_runs_non_root(
    rendered: list[Manifest],
) -> None:
    for name, spec in pod_specs(rendered):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in spec["containers"]:
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert "resources" in c and c["resources"]["limits"], name


def test_writable_paths_are_emptydirs(rendered: list[Manifest]) -> None:
    spec = deployment(rendered)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in collector_container(rendered)["volumeMounts"]}
    multiproc = env_of(rendered)["PROMETHEUS_MULTIPROC_DIR"]
    assert "emptyDir" in volumes[mounts[multiproc]]
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_resources_are_bounded(rendered: list[Manifest]) -> None:
    resources = collector_container(rendered)["resources"]
    assert set(resources) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(resources["limits"])
    assert {"cpu", "memory"} <= set(resources["requests"])


# --- configuration: ConfigMap, Secret, environment -----------------------------------


def test_every_collector_variable_is_a_real_flag(
    rendered: list[Manifest], collector_env_vars: frozenset[str]
) -> None:
    used = {k for k in env_of(rendered) if k.startswith("COLLECTOR_")}
    assert used
    assert used <= collector_env_vars, used - collector_env_vars


def test_store_points_at_the_in_chart_elasticsearch(rendered: list[Manifest]) -> None:
    env = env_of(rendered)
    assert env["COLLECTOR_SINK"] == "elasticsearch"
    assert env["COLLECTOR_ES_INDEX_PREFIX"] == "iot-events"
    url = env["COLLECTOR_ES_URL"]
    host, port = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", url).groups()  # type: ignore[union-attr]
    svc = one(rendered, "Service", host)
    assert int(port) in [p["port"] for p in svc["spec"]["ports"]]
    sts = one(rendered, "StatefulSet", f"{FULLNAME}-elasticsearch")
    assert matches(svc["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]


def test_external_elasticsearch_needs_a_url(
    helm: Callable[..., Any], template_cmd: Callable[..., list[str]], render: Render
) -> None:
    done = helm(*template_cmd("--set", "elasticsearch.enabled=false"))
    assert done.returncode != 0
    assert "store.elasticsearch.url" in done.stderr
    objects = render(
        "--set",
        "elasticsearch.enabled=false",
        "--set",
        "kibana.enabled=false",
        "--set",
        "store.elasticsearch.url=https://es.example.com:9200",
    )
    assert env_of(objects)["COLLECTOR_ES_URL"] == "https://es.example.com:9200"
    assert not find(objects, "StatefulSet")


def test_credentials_come_from_the_secret(all_objects: list[Manifest]) -> None:
    import base64

    secret = one(all_objects, "Secret", FULLNAME)
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"username": "collector", "password": "change-me"}
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in collector_container(all_objects)["env"]
        if "valueFrom" in e
    }
    assert refs["COLLECTOR_ES_USERNAME"]["name"] == FULLNAME
    assert refs["COLLECTOR_ES_PASSWORD"]["key"] == "password"
    assert "password" not in yaml.safe_dump(one(all_objects, "ConfigMap", FULLNAME)).lower()


def test_existing_secret_is_used_instead_of_a_new_one(render: Render) -> None:
    objects = render("--set", "store.elasticsearch.existingSecret=es-creds")
    assert not find(objects, "Secret", FULLNAME)
    refs = [
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in collector_container(objects)["env"]
        if "valueFrom" in e
    ]
    assert refs and set(refs) == {"es-creds"}


def test_config_change_rolls_the_pods(render: Render) -> None:
    def checksum(objects: list[Manifest]) -> str:
        return str(deployment(objects)["spec"]["template"]["metadata"]["annotations"])

    assert checksum(render()) != checksum(render("--set", "collector.batchMax=100"))


def test_sqlite_sink_gets_a_writable_data_dir(render: Render) -> None:
    objects = render("--set", "store.sink=sqlite")
    env = env_of(objects)
    assert env["COLLECTOR_SINK"] == "sqlite"
    assert "COLLECTOR_ES_URL" not in env
    data_dir = str(Path(env["COLLECTOR_SQLITE_PATH"]).parent)
    mounts = [m["mountPath"] for m in collector_container(objects)["volumeMounts"]]
    assert data_dir in mounts


# --- values schema -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "assignment"),
    [
        ("--set-string", "replicaCount=three"),
        ("--set", "store.sink=mongodb"),
        ("--set", "service.port=70000"),
        ("--set", "collector.logLevel=loud"),
        ("--set", "replicaCont=3"),
        ("--set-string", "autoscaling.enabled=yes"),
        ("--set", "service.externalTrafficPolicy=Nowhere"),
    ],
)
def test_values_schema_rejects_bad_values(
    helm: Callable[..., Any], template_cmd: Callable[..., list[str]], flag: str, assignment: str
) -> None:
    done = helm(*template_cmd(flag, assignment))
    assert done.returncode != 0
    assert "schema" in done.stderr


# --- monitoring ----------------------------------------------------------------------


def test_prometheus_operator_kinds_follow_the_api_capabilities(render: Render) -> None:
    without = render()
    assert not find(without, "ServiceMonitor") and not find(without, "PrometheusRule")
    with_api = render("--api-versions", "monitoring.coreos.com/v1")
    assert find(with_api, "ServiceMonitor") and find(with_api, "PrometheusRule")
    forced = render(
        "--set", "serviceMonitor.forceCreate=true", "--set", "prometheusRule.forceCreate=true"
    )
    assert find(forced, "ServiceMonitor") and find(forced, "PrometheusRule")
    disabled = render(
        "--api-versions",
        "monitoring.coreos.com/v1",
        "--set",
        "serviceMonitor.enabled=false",
        "--set",
        "prometheusRule.enabled=false",
    )
    assert not find(disabled, "ServiceMonitor") and not find(disabled, "PrometheusRule")


def test_service_monitor_scrapes_the_metrics_service(all_objects: list[Manifest]) -> None:
    sm = one(all_objects, "ServiceMonitor", FULLNAME)
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    selected = [
        s
        for s in find(all_objects, "Service")
        if matches(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in selected] == [f"{FULLNAME}-metrics"]
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in selected[0]["spec"]["ports"]]
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["iot"]}
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def _check_promql(expr: str) -> set[str]:
    """Balanced brackets and quotes; returns the iot_collector_* metric names used."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    in_string = False
    for ch in expr:
        if ch == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            assert stack and stack.pop() == pairs[ch], expr
    assert not stack and not in_string, expr
    return set(re.findall(r"\biot_collector_[a-z_]+", expr))


def test_prometheus_rule_alerts(all_objects: list[Manifest], root: Path) -> None:
    rule = one(all_objects, "PrometheusRule", FULLNAME)
    (group,) = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert set(alerts) == ALERTS
    for name, r in alerts.items():
        used = _check_promql(r["expr"])
        assert used <= METRIC_NAMES, (name, used)
        assert used or r["expr"].startswith("absent(up{"), name
        # Scoped to this release's metrics Service.
        assert f'service="{FULLNAME}-metrics"' in r["expr"], name
        assert re.fullmatch(r"\d+[smh]", r["for"]), name
        assert r["labels"]["severity"] in {"warning", "critical"}
        assert r["annotations"]["summary"]
    assert 'code=~"5' in alerts["IotCollectorHighServerErrorRatio"]["expr"]
    assert "iot_collector_store_up" in alerts["IotCollectorStoreUnavailable"]["expr"]
    # A target that disappeared fires an alert of its own (no series: no other alert).
    assert alerts["IotCollectorTargetMissing"]["expr"].startswith("absent(up{")
    # docker-compose's Prometheus carries the same alerts.
    compose_rules = yaml.safe_load((root / "deploy/prometheus/rules.yml").read_text())
    compose_alerts = {r["alert"]: r for g in compose_rules["groups"] for r in g["rules"]}
    assert set(compose_alerts) == ALERTS
    for r in compose_alerts.values():
        assert _check_promql(r["expr"]) <= METRIC_NAMES


# --- network policy ------------------------------------------------------------------


def test_network_policy_admits_coap_and_guards_elasticsearch(
    all_objects: list[Manifest],
) -> None:
    pol = one(all_objects, "NetworkPolicy", FULLNAME)
    pod_labels = deployment(all_objects)["spec"]["template"]["metadata"]["labels"]
    assert matches(pol["spec"]["podSelector"]["matchLabels"], pod_labels)
    rules = pol["spec"]["ingress"]
    coap = [r for r in rules if {"port": "coap", "protocol": "UDP"} in r["ports"]]
    assert coap and "from" not in coap[0], "devices may come from anywhere"
    metrics = [r for r in rules if {"port": "metrics", "protocol": "TCP"} in r["ports"]]
    assert metrics[0]["from"][0]["namespaceSelector"]
    es_pol = one(all_objects, "NetworkPolicy", f"{FULLNAME}-elasticsearch")
    (rule,) = es_pol["spec"]["ingress"]
    peer_labels = rule["from"][0]["podSelector"]["matchLabels"]
    assert matches(peer_labels, pod_labels)
    assert rule["ports"] == [{"port": 9200, "protocol": "TCP"}]


def test_network_policy_admits_no_metrics_peer_by_default(render: Render) -> None:
    """`metricsFrom: []` used to render a rule without `from`, which admits anyone."""
    pol = one(render(), "NetworkPolicy", FULLNAME)
    for rule in pol["spec"]["ingress"]:
        assert {"port": "metrics", "protocol": "TCP"} not in rule["ports"], rule


# --- client pods: CronJobs and the helm test -----------------------------------------


def _client_args(spec: Manifest) -> list[str]:
    (c,) = spec["containers"]
    args = c.get("command", []) + c.get("args", [])
    assert args[0] == "iot-client", args
    return args[1:]


def test_helm_test_pod_runs_the_client_healthcheck(rendered: list[Manifest]) -> None:
    pod = one(rendered, "Pod", f"{FULLNAME}-test-connection")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    args = _client_args(pod["spec"])
    parsed = client_cli.build_parser().parse_args(args)
    assert parsed.command == "healthcheck"
    assert (parsed.host, parsed.port) == (FULLNAME, 5683)
    one(rendered, "Service", parsed.host)


def test_cronjobs_run_the_real_client_against_the_service(all_objects: list[Manifest]) -> None:
    jobs = find(all_objects, "CronJob")
    by_command: dict[str, list[Any]] = {}
    for job in jobs:
        spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        parsed = client_cli.build_parser().parse_args(_client_args(spec))
        assert (parsed.host, parsed.port) == (FULLNAME, 5683), job["metadata"]["name"]
        assert job["spec"]["concurrencyPolicy"] == "Forbid"
        by_command.setdefault(parsed.command, []).append((parsed, spec))
    cities = sorted(p.name for p, _ in by_command["city"])
    assert cities == ["Madrid", "Nueva York", "Sevilla"]
    for parsed, spec in by_command["city"]:
        assert parsed.sender == "weathercity" and parsed.origin == parsed.name
        (env,) = spec["containers"][0]["env"]
        assert env["name"] == "OPENWEATHERMAP_APIKEY"
        one(all_objects, "Secret", env["valueFrom"]["secretKeyRef"]["name"])
    ((sim, _),) = by_command["simulate"]
    assert (sim.devices, sim.rate, sim.duration) == (100, 50.0, 60.0)


def test_city_cronjobs_need_an_api_key(
    helm: Callable[..., Any], template_cmd: Callable[..., list[str]]
) -> None:
    done = helm(
        *template_cmd(
            "--set", "cronJobs.city.enabled=true", "--set", "cronJobs.city.cities={Madrid}"
        )
    )
    assert done.returncode != 0
    assert "OpenWeatherMap" in done.stderr


# --- Kibana --------------------------------------------------------------------------


def test_kibana_ingress_has_tls_from_cert_manager(all_objects: list[Manifest]) -> None:
    ing = one(all_objects, "Ingress", f"{FULLNAME}-kibana")
    assert ing["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt-prod"
    (tls,) = ing["spec"]["tls"]
    assert tls["hosts"] == ["kibana.iot.example.com"] and tls["secretName"]
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    svc = one(all_objects, "Service", backend["name"])
    assert backend["port"]["name"] in [p["name"] for p in svc["spec"]["ports"]]


def test_kibana_setup_job_imports_the_shipped_saved_objects(
    rendered: list[Manifest], root: Path
) -> None:
    cm = one(rendered, "ConfigMap", f"{FULLNAME}-kibana-saved-objects")
    shipped = root / "deploy" / "kibana"
    assert cm["data"]["saved_objects.ndjson"] == (
        (shipped / "saved_objects.ndjson").read_text().strip()
    )
    assert cm["data"]["setup.sh"] == (shipped / "setup.sh").read_text().strip()
    (job,) = [
        j
        for j in find(rendered, "Job")
        if j["metadata"]["labels"]["app.kubernetes.io/component"] == "kibana-setup"
    ]
    spec = job["spec"]["template"]["spec"]
    (vol,) = spec["volumes"]
    assert vol["configMap"]["name"] == cm["metadata"]["name"]
    (c,) = spec["containers"]
    assert c["command"] == ["bash", "/setup/setup.sh"]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    kibana_host = re.fullmatch(r"http://([a-z0-9-]+):\d+", env["KIBANA_URL"]).group(1)  # type: ignore[union-attr]
    one(rendered, "Service", kibana_host)


def test_chart_copies_of_kibana_files_match_deploy(root: Path) -> None:
    files = CHART / "files"
    assert (files / "kibana-saved-objects.ndjson").read_bytes() == (
        root / "deploy/kibana/saved_objects.ndjson"
    ).read_bytes()
    assert (files / "kibana-setup.sh").read_bytes() == (
        root / "deploy/kibana/setup.sh"
    ).read_bytes()


# --- NOTES ---------------------------------------------------------------------------


def test_notes_tell_how_to_send_an_event(helm: Callable[..., Any], tmp_path: Path) -> None:
    # `helm template` skips NOTES.txt and `helm install --dry-run` wants a cluster:
    # render the notes through tpl in a copy of the chart instead.
    chart = tmp_path / "iot-collector"
    shutil.copytree(CHART, chart)
    shutil.copy(CHART / "templates" / "NOTES.txt", chart / "files" / "notes.tpl")
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ tpl (.Files.Get "files/notes.tpl") . | toJson }}\n'
    )
    done = helm(
        "template",
        "rel",
        str(chart),
        "--namespace",
        "iot",
        "--kube-version",
        "1.34.0",
        "--show-only",
        "templates/zz-notes.yaml",
    )
    assert done.returncode == 0, done.stderr
    notes = yaml.safe_load(done.stdout)["data"]["notes"]
    sends = [line for line in notes.splitlines() if "iot-client" in line and " send " in line]
    assert sends, notes
    words = shlex.split(sends[0].split("iot-client", 1)[1].replace("$COLLECTOR_IP", "1.2.3.4"))
    parsed = client_cli.build_parser().parse_args(words)
    assert parsed.command == "send" and parsed.port == 5683
    assert "helm test rel --namespace iot" in notes
    assert "svc/rel-iot-collector-kibana" in notes
