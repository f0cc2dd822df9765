"""The chart's device authentication (issue 15): coaps 5684/UDP and the PSK Secret."""

from __future__ import annotations

from typing import Any

import pytest

from .test_deploy_helm import FULLNAME, Render, collector_container, deployment, env_of, one

pytestmark = [pytest.mark.helm, pytest.mark.timeout(1800)]

AUTH = ("--set", "auth.required=true", "--set", "auth.existingSecret=device-keys")


def test_auth_required_without_a_secret_fails_to_render(helm: Any, template_cmd: Any) -> None:
    done = helm(*template_cmd("--set", "auth.required=true"))
    assert done.returncode != 0
    assert "auth.existingSecret" in done.stderr


def test_coaps_on_the_service_and_the_psk_file_from_the_secret(render: Render) -> None:
    objects = render(*AUTH, "--set", "auth.rateLimit=5:20")
    svc = one(objects, "Service", FULLNAME)
    assert svc["spec"]["ports"] == [
        {"name": "coaps", "port": 5684, "targetPort": "coaps", "protocol": "UDP"}
    ]  # plain CoAP is off with auth, as the collector's own default
    ports = {p["name"]: p for p in collector_container(objects)["ports"]}
    assert ports["coaps"] == {"name": "coaps", "containerPort": 5684, "protocol": "UDP"}
    assert "coap" not in ports
    env = env_of(objects)
    assert env["COLLECTOR_PSK_FILE"] == "/etc/iot-collector/psk/psk.json"
    assert env["COLLECTOR_PLAIN"] == "off"
    assert env["COLLECTOR_COAPS_PORT"] == "5684"
    assert env["COLLECTOR_RATE_LIMIT"] == "5:20"
    pod = deployment(objects)["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "psk"]
    assert volume["secret"]["secretName"] == "device-keys"
    [mount] = [m for m in collector_container(objects)["volumeMounts"] if m["name"] == "psk"]
    assert mount["readOnly"] is True and "subPath" not in mount  # updates reach the pod


def test_plain_next_to_coaps_when_asked(render: Render) -> None:
    objects = render(*AUTH, "--set", "auth.plain=true")
    names = [p["name"] for p in one(objects, "Service", FULLNAME)["spec"]["ports"]]
    assert names == ["coap", "coaps"]
    assert env_of(objects)["COLLECTOR_PLAIN"] == "on"


def test_no_auth_by_default(render: Render) -> None:
    objects = render()
    env = env_of(objects)
    assert "COLLECTOR_PSK_FILE" not in env and "COLLECTOR_RATE_LIMIT" not in env
