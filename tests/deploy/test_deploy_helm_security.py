"""The in-chart Elasticsearch with security on, rendered with `helm template`: a
generated `elastic` password in a Secret kept across upgrades, Kibana and the
collector signing in with credentials from Secrets (never literals), a set-up job
that gives each its user, and a Kibana Ingress that is refused unless Kibana asks
for a login.

The set-up script is checked for syntax only: the test run's Elasticsearch (the
integ-test-zip distribution) lacks the analysis-common module that the .security
index needs, so it cannot store native users."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.helm, pytest.mark.timeout(1800)]

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]
ROOT = Path(__file__).resolve().parents[2]
FULLNAME = "rel-iot-collector"
CREDENTIALS = f"{FULLNAME}-elasticsearch-credentials"
SETUP_SCRIPT = ROOT / "charts/iot-collector/files/elasticsearch-setup.sh"


def one(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def container(objects: list[Manifest], kind: str, name: str, container_name: str) -> Manifest:
    (found,) = [
        c
        for c in one(objects, kind, name)["spec"]["template"]["spec"]["containers"]
        if c["name"] == container_name
    ]
    return found


def job(objects: list[Manifest], component: str) -> Manifest:
    (found,) = [
        o
        for o in objects
        if o["kind"] == "Job"
        and o["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return found


def env(c: Manifest) -> dict[str, Any]:
    """name -> literal value, ("secret", name, key) for a secretKeyRef, else valueFrom."""
    out: dict[str, Any] = {}
    for e in c.get("env", []):
        if "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            out[e["name"]] = ("secret", ref["name"], ref["key"])
        elif "valueFrom" in e:
            out[e["name"]] = e["valueFrom"]
        else:
            out[e["name"]] = e["value"]
    return out


def test_generated_passwords_in_a_kept_secret(default_objects: list[Manifest]) -> None:
    secret = one(default_objects, "Secret", CREDENTIALS)
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    passwords = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(passwords) == {
        "elastic-password",
        "kibana-password",
        "collector-password",
        "retention-password",
    }
    assert all(len(p) == 32 and p.isalnum() for p in passwords.values())
    assert len(set(passwords.values())) == 4


def test_elasticsearch_runs_with_security_on(default_objects: list[Manifest]) -> None:
    es = container(default_objects, "StatefulSet", f"{FULLNAME}-elasticsearch", "elasticsearch")
    variables = env(es)
    assert variables["xpack.security.enabled"] == "true"
    assert variables["ELASTIC_PASSWORD"] == ("secret", CREDENTIALS, "elastic-password")
    # The probe signs in through the variable: no password in the pod spec.
    probe = " ".join(es["readinessProbe"]["exec"]["command"])
    assert '"elastic:$ELASTIC_PASSWORD"' in probe


def test_collector_and_kibana_sign_in_from_secrets(default_objects: list[Manifest]) -> None:
    collector = env(container(default_objects, "Deployment", FULLNAME, "collector"))
    assert collector["COLLECTOR_ES_USERNAME"] == "iot-collector"
    assert collector["COLLECTOR_ES_PASSWORD"] == ("secret", CREDENTIALS, "collector-password")
    kibana = env(container(default_objects, "Deployment", f"{FULLNAME}-kibana", "kibana"))
    assert kibana["ELASTICSEARCH_USERNAME"] == "kibana_system"
    assert kibana["ELASTICSEARCH_PASSWORD"] == ("secret", CREDENTIALS, "kibana-password")
    kibana_setup = env(
        job(default_objects, "kibana-setup")["spec"]["template"]["spec"]["containers"][0]
    )
    assert kibana_setup["ELASTIC_PASSWORD"] == ("secret", CREDENTIALS, "elastic-password")
    for doc in default_objects:
        if doc["kind"] != "Secret":
            for password in one(default_objects, "Secret", CREDENTIALS)["data"].values():
                assert base64.b64decode(password).decode() not in yaml.safe_dump(doc)


@pytest.mark.parametrize("objects", ["default_objects", "all_objects"])
def test_setup_job_creates_the_users_the_collector_and_kibana_use(
    objects: str, request: pytest.FixtureRequest
) -> None:
    rendered: list[Manifest] = request.getfixturevalue(objects)
    spec = job(rendered, "elasticsearch-setup")["spec"]["template"]["spec"]
    (setup,) = spec["containers"]
    variables = env(setup)
    collector = env(container(rendered, "Deployment", FULLNAME, "collector"))
    assert variables["COLLECTOR_USERNAME"] == collector["COLLECTOR_ES_USERNAME"]
    assert variables["COLLECTOR_PASSWORD"] == collector["COLLECTOR_ES_PASSWORD"]
    assert variables["KIBANA_PASSWORD"] == ("secret", CREDENTIALS, "kibana-password")
    config = one(rendered, "ConfigMap", FULLNAME)["data"]
    assert variables["INDEX_PREFIX"] == config["COLLECTOR_ES_INDEX_PREFIX"]
    assert variables["ELASTICSEARCH_URL"] == config["COLLECTOR_ES_URL"]
    (volume,) = spec["volumes"]
    script = one(rendered, "ConfigMap", volume["configMap"]["name"])["data"]["setup.sh"]
    assert script == SETUP_SCRIPT.read_text().strip()
    assert setup["securityContext"]["readOnlyRootFilesystem"] is True


def test_setup_script_is_valid_bash_without_heredocs() -> None:
    subprocess.run(["bash", "-n", str(SETUP_SCRIPT)], check=True, timeout=30)
    text = SETUP_SCRIPT.read_text()
    assert "<<" not in text, "here-docs need a writable /tmp; the job's root is read-only"


def test_an_existing_secret_replaces_the_generated_one(render: Render) -> None:
    objects = render("--set", "elasticsearch.security.existingSecret=my-es")
    assert not [o for o in objects if o["metadata"]["name"] == CREDENTIALS]
    es = env(container(objects, "StatefulSet", f"{FULLNAME}-elasticsearch", "elasticsearch"))
    assert es["ELASTIC_PASSWORD"] == ("secret", "my-es", "elastic-password")


def test_all_features_kibana_on_an_ingress_asks_for_a_login(all_objects: list[Manifest]) -> None:
    one(all_objects, "Ingress", f"{FULLNAME}-kibana")
    kibana = env(container(all_objects, "Deployment", f"{FULLNAME}-kibana", "kibana"))
    assert kibana["ELASTICSEARCH_PASSWORD"][0] == "secret"
    es = env(container(all_objects, "StatefulSet", f"{FULLNAME}-elasticsearch", "elasticsearch"))
    assert es["xpack.security.enabled"] == "true"


def test_ingress_to_a_kibana_without_login_is_refused(
    helm: Callable[..., subprocess.CompletedProcess[str]],
    template_cmd: Callable[..., list[str]],
    render: Render,
) -> None:
    external = (
        "--set", "elasticsearch.enabled=false",
        "--set", "store.elasticsearch.url=https://es.example.com:9200",
        "--set", "kibana.ingress.enabled=true",
    )  # fmt: skip
    done = helm(*template_cmd(*external))
    assert done.returncode != 0
    assert "Kibana without login" in done.stderr
    objects = render(*external, "--set", "kibana.elasticsearchCredentials.existingSecret=kb")
    kibana = env(container(objects, "Deployment", f"{FULLNAME}-kibana", "kibana"))
    assert kibana["ELASTICSEARCH_USERNAME"] == ("secret", "kb", "username")
    assert kibana["ELASTICSEARCH_PASSWORD"] == ("secret", "kb", "password")
    one(objects, "Ingress", f"{FULLNAME}-kibana")


def test_three_nodes_talk_over_transport_tls(render: Render) -> None:
    objects = render("--set", "elasticsearch.replicas=3")
    tls = one(objects, "Secret", f"{FULLNAME}-elasticsearch-transport-tls")
    assert set(tls["data"]) == {"ca.crt", "tls.crt", "tls.key"}
    assert tls["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    es = container(objects, "StatefulSet", f"{FULLNAME}-elasticsearch", "elasticsearch")
    variables = env(es)
    assert variables["xpack.security.transport.ssl.enabled"] == "true"
    mount = {m["name"]: m["mountPath"] for m in es["volumeMounts"]}["transport-tls"]
    for key in ("key", "certificate", "certificate_authorities"):
        assert variables[f"xpack.security.transport.ssl.{key}"].startswith(mount + "/")
    spec = one(objects, "StatefulSet", f"{FULLNAME}-elasticsearch")["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "transport-tls"]
    assert volume["secret"]["secretName"] == tls["metadata"]["name"]
    # A single node needs none of it.
    single = env(container(render(), "StatefulSet", f"{FULLNAME}-elasticsearch", "elasticsearch"))
    assert "xpack.security.transport.ssl.enabled" not in single


def test_retention_signs_in_as_its_own_user(render: Render) -> None:
    objects = render("--set", "cronJobs.retention.enabled=true")
    (cron,) = [
        o
        for o in objects
        if o["kind"] == "CronJob" and o["metadata"]["name"].endswith("-retention")
    ]
    (retention,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    variables = env(retention)
    assert variables["COLLECTOR_ES_USERNAME"] == "iot-collector-retention"
    assert variables["COLLECTOR_ES_PASSWORD"] == ("secret", CREDENTIALS, "retention-password")
    setup = env(job(objects, "elasticsearch-setup")["spec"]["template"]["spec"]["containers"][0])
    assert setup["RETENTION_USERNAME"] == variables["COLLECTOR_ES_USERNAME"]
    assert setup["RETENTION_PASSWORD"] == variables["COLLECTOR_ES_PASSWORD"]
    assert "delete_index" in SETUP_SCRIPT.read_text()


def test_notes_tell_where_the_elastic_password_is(
    helm: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    # NOTES.txt rendered through tpl in a copy of the chart (`helm template` skips it).
    import shutil

    chart = tmp_path / "iot-collector"
    shutil.copytree(ROOT / "charts" / "iot-collector", chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "files" / "notes.tpl")
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ tpl (.Files.Get "files/notes.tpl") . | toJson }}\n'
    )
    done = helm("template", "rel", str(chart), "--show-only", "templates/zz-notes.yaml")
    assert done.returncode == 0, done.stderr
    notes = yaml.safe_load(done.stdout)["data"]["notes"]
    assert f"get secret --namespace default {CREDENTIALS}" in notes
    assert "{.data.elastic-password}" in notes
