"""URL userinfo never reaches a log line or a message (issue 14)."""

from __future__ import annotations

import asyncio

import pytest

from collector.redact import redact_url
from collector.sinks.elasticsearch import ElasticsearchSink

CASES = [
    ("http://elastic:PW@127.0.0.1:9200", "http://***@127.0.0.1:9200"),
    ("https://user@es.example:9243/prefix", "https://***@es.example:9243/prefix"),
    ("http://127.0.0.1:9200", "http://127.0.0.1:9200"),
    ("http://a:x@h1:9200,http://b:y@h2:9200", "http://***@h1:9200,http://***@h2:9200"),
    ("http://u:p%40ss@[::1]:9200", "http://***@[::1]:9200"),
    ("not a url", "not a url"),
]


@pytest.mark.parametrize(("url", "shown"), CASES)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_store_error_names_the_url_without_its_password() -> None:
    from collector.config import Config
    from collector.sinks import StoreUnavailable

    config = Config(sink="elasticsearch", es_url="http://elastic:S3CRET@127.0.0.1:1", store_wait=0)

    async def start() -> None:
        sink = ElasticsearchSink(config, 0)
        try:
            await sink.start()
        finally:
            await sink.close()

    with pytest.raises(StoreUnavailable) as caught:
        asyncio.run(start())
    assert "S3CRET" not in str(caught.value) and "elastic:" not in str(caught.value)
    assert "http://***@127.0.0.1:1" in str(caught.value)
