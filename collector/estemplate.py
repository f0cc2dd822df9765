"""The Elasticsearch index template the collector installs for `<prefix>-*`.

Explicit mappings, so that every daily index gets the same types whatever the first
document of the day looks like (DESIGN.md "Storage"). The shape mirrors
`collector.events.Event.document()`; a test checks that every field that method emits
is mapped here.

`dynamic: false` rather than `strict`: the collector alone writes these documents and
their shape is pinned by tests, so strictness would catch nothing at run time; what it
would do is turn a rolling upgrade that adds a field into rejected events on the day's
existing index (whose mapping the new template cannot change). With `false` such a
field stays in `_source`, unindexed, until the next daily index picks the new template.

Settings: one primary shard per daily index (one day of a fleet's readings is small),
`auto_expand_replicas: 0-1` so a single-node cluster stays green and a bigger one keeps a
replica. No ingest pipeline, ILM policy or data stream: the integ-test-zip distribution
used in tests has none of them.
"""

from __future__ import annotations

from typing import Any, Final

#: Bumped whenever the mappings change; stored in the template's `_meta`.
TEMPLATE_VERSION: Final = 2

_KEYWORD: Final = {"type": "keyword"}

MAPPINGS: Final[dict[str, Any]] = {
    "dynamic": False,
    "properties": {
        "@timestamp": {"type": "date", "format": "epoch_millis||strict_date_optional_time"},
        "received_at": {"type": "date", "format": "epoch_millis||strict_date_optional_time"},
        "namespace": _KEYWORD,
        "sender": _KEYWORD,
        "origin": _KEYWORD,
        "payload": {
            "properties": {
                "type": _KEYWORD,
                "value": {"type": "double"},
                "value_string": _KEYWORD,
                "value_bool": {"type": "boolean"},
                "unit": _KEYWORD,
            }
        },
        "source": _KEYWORD,
        "worker": {"type": "integer"},
        "event_id": _KEYWORD,
        # The device's own `id` (event_id is the key derived from it, scoped by
        # namespace and sender) and, for an authenticated (DTLS) device, its PSK identity.
        "client_id": _KEYWORD,
        "identity": _KEYWORD,
    },
}


def template_name(prefix: str) -> str:
    """The template's name: one per index prefix, so several collectors can share ES."""
    return f"{prefix}-template"


def index_template(prefix: str, ilm_policy: str | None = None) -> dict[str, Any]:
    """Keyword arguments for `indices.put_index_template` covering `<prefix>-*`.

    Composable templates whose patterns overlap must differ in priority, and
    `<a>-*` overlaps `<b>-*` only when one prefix extends the other; so the priority
    grows with the prefix's length and the more specific prefix wins.

    `ilm_policy` names an ILM policy in the settings (`index.lifecycle.name`): the
    collector rewrites its template at every start, so a lifecycle must be part of
    it rather than added by hand. Only for distributions with the ILM module.
    """
    index: dict[str, Any] = {"number_of_shards": 1, "auto_expand_replicas": "0-1"}
    if ilm_policy:
        index["lifecycle"] = {"name": ilm_policy}
    return {
        "name": template_name(prefix),
        "index_patterns": [f"{prefix}-*"],
        "priority": 100 + len(prefix),
        "template": {
            "settings": {"index": index},
            "mappings": MAPPINGS,
        },
        "meta": {"managed_by": "iot-collector", "version": TEMPLATE_VERSION},
    }
