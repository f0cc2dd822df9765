"""aiocoap-client over coaps (its tinydtls transport, DTLSSocket) against a real collector.

The venv's own `aiocoap-client` CLI, a real collector and its SQLite file. DTLSSocket has
no wheel; scripts/setup.sh builds it (tinydtls, with autoconf) outside the extras. When
that build failed, these tests fail and name the build log instead of skipping: the
interop is only proven where it runs.

Keys of 16 bytes at most. tinydtls, as DTLSSocket 0.2.3 compiles it, keeps a PSK in a
16-byte buffer (DTLS_PSK_MAX_KEY_LEN = DTLS_KEY_LENGTH, tinydtls/crypto.h), and
DTLSSocket's key callback (`_get_psk_info`, dtls.pyx) copies the key into it without
looking at the length it is given. With a longer key — the 21-byte keys of the other
coaps tests — the client sends its ClientKeyExchange and then a fatal internal_error
alert of its own (the pre-master secret no longer fits tinydtls' 40-byte key block), so
no server can finish that handshake. A device on tinydtls needs a key of 16 bytes or
less; the identity here has one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiocoap.defaults import dtls_missing_modules

from tests.server.conftest import Collector, row_count, rows

from .conftest import KEYS, event_body

pytestmark = pytest.mark.integration

AIOCOAP_CLIENT = Path(sys.executable).with_name("aiocoap-client")
TINY = "tiny-1"
TINY_KEY = "tinydtls 16 byte"  # 16 bytes: what tinydtls can hold
TINY_KEYS = {**KEYS, TINY: (TINY_KEY, "lab", TINY)}
BUILD_LOG = Path(sys.executable).parents[1] / "dtlssocket-build.log"


@pytest.fixture(autouse=True)
def _needs_tinydtls() -> None:
    missing = dtls_missing_modules()
    if missing:
        pytest.fail(
            f"aiocoap's DTLS transport lacks {', '.join(missing)}: scripts/setup.sh builds "
            f"it (apt autoconf automake libtool, pip DTLSSocket); its log: {BUILD_LOG}"
        )
    assert AIOCOAP_CLIENT.exists(), AIOCOAP_CLIENT


def _credentials(tmp_path: Path, port: int, identity: str, key: str) -> Path:
    """aiocoap's credentials file (aiocoap/credentials.py): a URI pattern -> a "dtls"
    item with the PSK and the identity. Only a .json suffix is read as JSON."""
    path = tmp_path / f"credentials-{identity}.json"
    creds = {
        f"coaps://127.0.0.1:{port}/*": {
            "dtls": {"psk": {"ascii": key}, "client-identity": {"ascii": identity}}
        }
    }
    path.write_text(json.dumps(creds))
    return path


def _post_argv(tmp_path: Path, port: int, identity: str, key: str) -> list[str]:
    body = tmp_path / "event.json"  # from a file: sent as is, not recoded from EDN
    body.write_bytes(event_body(TINY))
    return [
        str(AIOCOAP_CLIENT), "-v", "--credentials", str(_credentials(tmp_path, port, identity, key)),
        "-m", "POST", "--content-format", "application/json", "--payload", f"@{body}",
        f"coaps://127.0.0.1:{port}/events",
    ]  # fmt: skip


def _handshake_failures(server: Collector) -> list[tuple[str | None, str | None]]:
    return [
        (line.get("identity"), line.get("outcome"))
        for line in server.log_lines()
        if line.get("msg") == "dtls handshake failed"
    ]


def test_aiocoap_client_posts_over_coaps_and_is_stored_as_its_identity(
    coaps_collector, tmp_path: Path
) -> None:
    server, port = coaps_collector(keys=TINY_KEYS)
    done = subprocess.run(
        _post_argv(tmp_path, port, TINY, TINY_KEY),
        cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out + server.stderr_tail()
    assert "2.01 Created" in out, out  # -v logs the response's code
    # The ack comes after the commit (DESIGN.md, Storage): the row is there now.
    [row] = rows(server.db)
    assert (row["sender"], row["namespace"], row["identity"]) == (TINY, "lab", TINY)
    assert row["type"] == "temperature" and row["value"] == 21.5
    assert _handshake_failures(server) == []


@pytest.mark.parametrize(
    ("identity", "key", "outcome"),
    [(TINY, "not the key 16 b", "bad_key"), ("nobody", TINY_KEY, "unknown_identity")],
)
def test_aiocoap_client_with_wrong_credentials_gets_no_answer_and_stores_nothing(
    coaps_collector, tmp_path: Path, identity: str, key: str, outcome: str
) -> None:
    server, port = coaps_collector(keys=TINY_KEYS)
    # tinydtls keeps re-sending its flight into the silence and aiocoap its CON request
    # (about 45 s in all), so the client is stopped once the collector has refused it.
    proc = subprocess.Popen(
        _post_argv(tmp_path, port, identity, key),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not _handshake_failures(server) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert _handshake_failures(server) == [(identity, outcome)], out + server.stderr_tail()
    assert "2.01" not in out, out
    assert row_count(server.db) == 0
