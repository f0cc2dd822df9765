"""An index write block (403 cluster_block_exception) is reported as what it is, not
as the collector's user lacking rights (issue 14). Real Elasticsearch."""

from __future__ import annotations

import pytest
from elasticsearch import Elasticsearch

from collector.sinks.base import Outcome, Result
from collector.sinks.elasticsearch import ElasticsearchSink, index_name

from .helpers import sink_config
from .test_es_sink import NOW_MS, event, with_sink

pytestmark = [pytest.mark.es, pytest.mark.integration]


def test_a_write_blocked_index_is_reported_as_a_write_block(
    es: Elasticsearch, es_url: str, es_prefix: str
) -> None:
    index = index_name(es_prefix, NOW_MS)

    async def body(sink: ElasticsearchSink) -> tuple[list[Result], list[Result]]:
        first = await sink.write([event()])  # creates the day's index
        es.indices.put_settings(index=index, settings={"index.blocks.write": True})
        try:
            return first, await sink.write([event()])
        finally:
            es.indices.put_settings(index=index, settings={"index.blocks.write": False})

    first, blocked = with_sink(sink_config(es_url, es_prefix), body)
    assert [r.outcome for r in first] == [Outcome.STORED]
    assert [r.outcome for r in blocked] == [Outcome.FAILED]
    reason = blocked[0].reason
    assert reason == "elasticsearch blocks writes: FORBIDDEN/8/index write (api) (403)", reason
    assert "user" not in reason
