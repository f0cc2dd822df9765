"""Retention: the collector's daily indices, listed, and deleted past an age.

Daily indices (`<prefix>-YYYY.MM.DD`, collector/sinks/elasticsearch.py) grow until the
disk is full; `iot-collector indices` lists them with their document counts and sizes
and, with `--delete-older-than AGE`, deletes those whose whole UTC day ended more than
AGE ago (an index of day D holds events up to D 24:00). Only names that are exactly
the prefix, a dash and a valid date are considered: another prefix that merely starts
with this one (`iot-events-test-...`) or a hand-made index is never touched. Each
index is deleted by its own name (no wildcard), so `action.destructive_requires_name`
may stay on.

Full Elasticsearch distributions can do the same with an ILM policy or a data stream
lifecycle (README, "Retention"); the integ-test-zip used in tests has neither, so this
command is what the tests cover and what the chart's CronJob runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from collector.config import Config

__all__ = ["IndexInfo", "older_than", "parse_age", "run_indices"]

_AGE: re.Pattern[str] = re.compile(r"(\d{1,6})([hdw])")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
_DAY: re.Pattern[str] = re.compile(r"(\d{4})\.(\d{2})\.(\d{2})")


@dataclass(frozen=True, slots=True)
class IndexInfo:
    name: str
    day: date
    docs: int
    bytes: int


def parse_age(text: str) -> timedelta:
    """`30d`, `12w`, `48h` as a timedelta. Raises ValueError for anything else."""
    match = _AGE.fullmatch(text.strip().lower())
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"age {text!r}: use a whole number of hours, days or weeks (30d, 12w)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def index_day(prefix: str, name: str) -> date | None:
    """The UTC day of a collector index name, or None when `name` is not one."""
    if not name.startswith(prefix + "-"):
        return None
    match = _DAY.fullmatch(name[len(prefix) + 1 :])
    if not match:
        return None
    try:
        return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        return None


def older_than(indices: list[IndexInfo], age: timedelta, now: datetime) -> list[IndexInfo]:
    """The indices whose whole day ended more than `age` before `now`."""
    cut = now - age
    return [
        i
        for i in indices
        if datetime(i.day.year, i.day.month, i.day.day, tzinfo=UTC) + timedelta(days=1) <= cut
    ]


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def list_indices(client: object, prefix: str) -> list[IndexInfo]:
    """The collector's indices under `prefix`, oldest first."""
    rows = client.cat.indices(  # type: ignore[attr-defined]
        index=f"{prefix}-*", format="json", bytes="b", h="index,docs.count,store.size"
    ).body
    out = []
    for row in rows:
        day = index_day(prefix, str(row.get("index", "")))
        if day is None:
            continue
        out.append(
            IndexInfo(
                str(row["index"]),
                day,
                int(row.get("docs.count") or 0),
                int(row.get("store.size") or 0),
            )
        )
    return sorted(out, key=lambda i: i.day)


def run_indices(config: Config, delete_older_than: str | None, dry_run: bool, out: TextIO) -> int:
    """`iot-collector indices`: list, and optionally delete. Returns the exit code."""
    import sys

    from elastic_transport import TransportError
    from elasticsearch import ApiError, Elasticsearch

    from collector.exits import EXIT_CONFIG, EXIT_OK, EXIT_STORE_UNAVAILABLE
    from collector.redact import redact_url
    from collector.sinks.elasticsearch import es_nodes

    age = None
    if delete_older_than is not None:
        try:
            age = parse_age(delete_older_than)
        except ValueError as exc:
            print(f"iot-collector: error: --delete-older-than: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    elif dry_run:
        print("iot-collector: error: --dry-run goes with --delete-older-than", file=sys.stderr)
        return EXIT_CONFIG
    kwargs: dict[str, object] = {"request_timeout": 30}
    if config.es_username is not None:
        kwargs["basic_auth"] = (config.es_username, config.es_password or "")
    if config.es_api_key:
        kwargs["api_key"] = config.es_api_key
    if config.es_ca_certs:
        kwargs["ca_certs"] = config.es_ca_certs
    prefix = config.es_index_prefix
    with Elasticsearch(es_nodes(config.es_url), **kwargs) as client:  # type: ignore[arg-type]
        try:
            indices = list_indices(client, prefix)
            doomed = older_than(indices, age, datetime.now(UTC)) if age is not None else []
            names = {i.name for i in doomed}
            verb = "would delete" if dry_run else "delete"
            for info in indices:
                mark = f"  {verb}" if info.name in names else ""
                print(f"{info.name}\t{info.docs}\t{_human(info.bytes)}{mark}", file=out)
            if age is not None:
                if not dry_run:
                    for info in doomed:
                        client.indices.delete(index=info.name)
                done = "would delete" if dry_run else "deleted"
                print(
                    f"{done} {len(doomed)} of {len(indices)} indices older than "
                    f"{delete_older_than}",
                    file=out,
                )
        except (ApiError, TransportError) as exc:
            where = redact_url(config.es_url)  # userinfo never printed (issue 14)
            print(f"iot-collector: elasticsearch at {where}: {exc}", file=sys.stderr)
            return EXIT_STORE_UNAVAILABLE
    return EXIT_OK
