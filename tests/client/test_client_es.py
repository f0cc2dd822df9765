"""The thesis' demo end to end on the production store: iot-client -> collector ->
a real Elasticsearch (``$ES_URL``, which ``make test`` provides)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import run_cli, start_collector, stop_process

pytestmark = [pytest.mark.integration, pytest.mark.es]


@pytest.fixture
def es_url() -> str:
    url = os.environ.get("ES_URL")
    if not url:
        pytest.skip("ES_URL is not set (make test starts Elasticsearch and sets it)")
    return url.rstrip("/")


@pytest.fixture
def es_collector(es_url: str, tmp_path: Path) -> Iterator[tuple[int, str]]:
    from elasticsearch import Elasticsearch

    prefix = f"c{uuid.uuid4().hex[:12]}"
    args = ["--host", "127.0.0.1", "--workers", "1", "--metrics-port", "0"]
    args += ["--sink", "elasticsearch", "--es-url", es_url, "--es-index-prefix", prefix]
    es = Elasticsearch(es_url, request_timeout=30)
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc, port = start_collector(args, tmp_path / "collector.log", deadline=120)
        yield port, prefix
    finally:
        if proc is not None:
            stop_process(proc)
        es.options(ignore_status=404).indices.delete(index=f"{prefix}-*", expand_wildcards="all")
        es.options(ignore_status=404).indices.delete_index_template(name=f"{prefix}-template")
        es.close()


def test_thesis_demo_lands_in_elasticsearch(es_url: str, es_collector: tuple[int, str]) -> None:
    from elasticsearch import Elasticsearch

    port, prefix = es_collector
    result = run_cli(
        "-P", str(port), "-s", "demoMemoria", "-o", "probe1",
        "incremental", "-n", "10", "-f", "1.1", "temperature", "15", "--timeout", "30",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(result.stdout.splitlines()) == 10
    with Elasticsearch(es_url, request_timeout=30) as es:
        es.indices.refresh(index=f"{prefix}-*")
        hits = es.search(index=f"{prefix}-*", query={"term": {"origin": "probe1"}}, size=20)[
            "hits"
        ]["hits"]
    values = sorted(hit["_source"]["payload"]["value"] for hit in hits)
    assert values == pytest.approx([15 * 1.1**i for i in range(10)])
    assert {hit["_source"]["sender"] for hit in hits} == {"demoMemoria"}
