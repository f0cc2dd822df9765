"""Stores behind one interface (`base.Sink`): sqlite (embedded default), elasticsearch, null."""

from __future__ import annotations

from typing import TYPE_CHECKING

from collector.sinks.base import Outcome, Result, Sink, StoreUnavailable

if TYPE_CHECKING:
    from collector.config import Config

__all__ = ["Outcome", "Result", "Sink", "StoreUnavailable", "make_sink"]


def make_sink(config: Config, worker: int) -> Sink:
    """The sink named by `config.sink`; imports only what that sink needs."""
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
