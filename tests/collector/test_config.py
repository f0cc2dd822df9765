"""Flags, their COLLECTOR_* twins, defaults and one-line errors."""

from __future__ import annotations

import argparse

import pytest

from collector.config import (
    Config,
    ConfigError,
    add_serve_arguments,
    build_config,
    env_name,
    usable_cpus,
)


def parse(argv: list[str], env: dict[str, str] | None = None) -> Config:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return build_config(parser.parse_args(argv), env or {})


def test_defaults_match_the_design() -> None:
    c = parse([])
    assert (c.host, c.port, c.sink, c.batch_max, c.batch_ms) == (
        "0.0.0.0",
        5683,
        "sqlite",
        500,
        5.0,
    )
    assert (c.max_pending, c.ack_delay, c.drain_timeout, c.metrics_port) == (20000, 0.5, 10.0, 9100)
    assert c.workers == usable_cpus() >= 1


def test_environment_twins_and_flag_precedence() -> None:
    env = {"COLLECTOR_BATCH_MAX": "7", "COLLECTOR_SINK": "null", "COLLECTOR_ES_COMPRESS": "true"}
    c = parse(["--sink", "sqlite"], env)
    assert (c.batch_max, c.sink, c.es_compress) == (7, "sqlite", True)


def test_every_flag_has_an_env_twin_named_by_the_rule() -> None:
    assert env_name("es-index-prefix") == "COLLECTOR_ES_INDEX_PREFIX"
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert env_name(action.dest.replace("_", "-")) in (action.help or "")


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (["--workers", "0"], {}, "--workers"),
        ([], {"COLLECTOR_BATCH_MAX": "abc"}, "COLLECTOR_BATCH_MAX"),
        (["--ack-delay", "5"], {}, "ACK_TIMEOUT"),
        ([], {"COLLECTOR_SINK": "mongodb"}, "COLLECTOR_SINK"),
        ([], {"COLLECTOR_BATCH_MS": "nan"}, "COLLECTOR_BATCH_MS"),
        (["--es-api-key", "k", "--es-username", "u"], {}, "exclude"),
    ],
)
def test_bad_values_are_one_line_naming_the_source(
    argv: list[str], env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse(argv, env)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_config_is_frozen() -> None:
    c = parse([])
    with pytest.raises(AttributeError):
        c.port = 1  # type: ignore[misc]
