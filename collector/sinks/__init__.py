"""Stores behind one interface (`base.Sink`): sqlite (embedded default), elasticsearch, null."""

from __future__ import annotations

from typing import TYPE_CHECKING

from collector.sinks.base import Outcome, Result, Sink, StoreUnavailable

if TYPE_CHECKING:
    from collector.config import Config

__all__ = ["Outcome", "Result", "Sink", "StoreUnavailable", "make_sink"]


def make_sink(config: Config, worker: int, *, spool: bool = True) -> Sink:
    """The sink named by `config.sink`; imports only what that sink needs.

    With `config.spool_path` (and `spool` True) it is wrapped in a SpoolingSink whose
    spool is this worker's file in that directory.
    """
    primary = _primary(config, worker)
    if not (spool and config.spool_path):
        return primary
    from collector.sinks.spooling import SpoolingSink
    from collector.spool import Spool, spool_file

    metrics = None
    if config.metrics_port:
        from collector.metrics import SpoolMetrics

        metrics = SpoolMetrics(worker)
    return SpoolingSink(
        primary,
        Spool(
            spool_file(config.spool_path, worker),
            max_bytes=config.spool_max_bytes,
            synchronous=config.sqlite_synchronous,
        ),
        ack_delay=config.ack_delay,
        forward_max=max(config.batch_max, 1000),
        drain_timeout=config.drain_timeout,
        metrics=metrics,
        worker=worker,
    )


def _primary(config: Config, worker: int) -> Sink:
    if config.sink == "null":
        from collector.sinks.null import NullSink

        return NullSink()
    if config.sink == "sqlite":
        from collector.sinks.sqlite import SqliteSink

        return SqliteSink(config.sqlite_path, synchronous=config.sqlite_synchronous, worker=worker)
    if config.sink == "elasticsearch":
        from collector.sinks.elasticsearch import ElasticsearchSink

        return ElasticsearchSink(config, worker)
    raise ValueError(f"unknown sink {config.sink!r}")
