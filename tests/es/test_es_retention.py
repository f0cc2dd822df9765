"""`iot-collector indices`: the listing, the dry run and the deletion, on a real
Elasticsearch with indices made for days around the cut."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from elasticsearch import Elasticsearch

from collector.retention import index_day, parse_age
from tests.server.conftest import run_cli

pytestmark = [pytest.mark.es, pytest.mark.integration]


def day_name(prefix: str, days_ago: int) -> str:
    return f"{prefix}-{datetime.now(UTC) - timedelta(days=days_ago):%Y.%m.%d}"


@pytest.fixture
def indices(es: Elasticsearch, es_prefix: str) -> dict[int, str]:
    made = {}
    for days_ago in (0, 1, 29, 31, 45, 400):
        name = day_name(es_prefix, days_ago)
        es.index(index=name, document={"n": days_ago}, refresh=True)
        made[days_ago] = name
    # Not the collector's: a longer prefix and a hand-made name under the same prefix.
    for other in (f"{es_prefix}-x-{day_name('', 400)[1:]}", f"{es_prefix}-archive"):
        es.indices.create(index=other)
    return made


def indices_cli(es_url: str, prefix: str, *args: str):
    return run_cli(["indices", "--es-url", es_url, "--es-index-prefix", prefix, *args])


def test_listing_shows_every_daily_index_with_docs_and_size(
    es_url: str, es_prefix: str, indices: dict[int, str]
):
    done = indices_cli(es_url, es_prefix)
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert [r[0] for r in rows] == [indices[d] for d in (400, 45, 31, 29, 1, 0)]
    assert all(r[1] == "1" and r[2].endswith("B") for r in rows)


def test_dry_run_lists_exactly_the_indices_past_the_cut_and_deletes_nothing(
    es: Elasticsearch, es_url: str, es_prefix: str, indices: dict[int, str]
):
    done = indices_cli(es_url, es_prefix, "--delete-older-than", "30d", "--dry-run")
    assert done.returncode == 0, done.stderr
    marked = [line.split("\t")[0] for line in done.stdout.splitlines() if "would delete" in line]
    # Day 30 ago ended 29-30 days ago (kept); 31 ago ended more than 30 days ago.
    assert marked[:-1] == [indices[400], indices[45], indices[31]]
    assert marked[-1].startswith("would delete 3 of 6")
    assert len(es.indices.get(index=f"{es_prefix}-*")) == 8


def test_delete_removes_only_the_indices_past_the_cut(
    es: Elasticsearch, es_url: str, es_prefix: str, indices: dict[int, str]
):
    done = indices_cli(es_url, es_prefix, "--delete-older-than", "30d")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "deleted 3 of 6 indices older than 30d"
    left = set(es.indices.get(index=f"{es_prefix}-*"))
    assert left == {
        indices[0],
        indices[1],
        indices[29],
        f"{es_prefix}-x-{day_name('', 400)[1:]}",
        f"{es_prefix}-archive",
    }


def test_bad_age_and_unreachable_store_are_one_line_each(es_prefix: str):
    bad = indices_cli("http://127.0.0.1:9", es_prefix, "--delete-older-than", "a month")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    down = indices_cli("http://127.0.0.1:9", es_prefix)
    assert down.returncode == 3 and down.stderr.count("\n") == 1, down.stderr


@pytest.mark.parametrize(("text", "hours"), [("30d", 720), ("2w", 336), ("48h", 48), (" 7D ", 168)])
def test_parse_age(text: str, hours: int):
    assert parse_age(text) == timedelta(hours=hours)


@pytest.mark.parametrize("text", ["", "0d", "30", "1y", "-3d", "3.5d"])
def test_parse_age_refuses(text: str):
    with pytest.raises(ValueError):
        parse_age(text)


@pytest.mark.parametrize(
    ("name", "ok"),
    [("p-2026.01.31", True), ("p-2026.02.30", False), ("p-x-2026.01.31", False),
     ("pp-2026.01.31", False), ("p-2026.1.31", False)],
)  # fmt: skip
def test_index_day_takes_only_the_exact_shape(name: str, ok: bool):
    assert (index_day("p", name) is not None) is ok


def test_ilm_policy_goes_into_the_template_settings_only_when_named():
    from collector.estemplate import index_template

    assert "lifecycle" not in index_template("p")["template"]["settings"]["index"]
    named = index_template("p", ilm_policy="keep-30d")["template"]["settings"]["index"]
    assert named["lifecycle"] == {"name": "keep-30d"}
    assert named["number_of_shards"] == 1 and named["auto_expand_replicas"] == "0-1"
