"""`iot-collector serve` at the terminal (issue 14): errors in the user's terms naming
the flag or variable, warnings for misspelt variables, --help with defaults and exit
codes that match the README, secrets by file, the "waiting for the store" line."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from collector.exits import DESCRIPTIONS

from .conftest import REPO, run_cli

pytestmark = pytest.mark.integration

QUICK = ["serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"]


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("env", "args", "line"),
    [
        (
            {"COLLECTOR_BATCH_MAX": "abc"},
            [],
            "iot-collector: error: COLLECTOR_BATCH_MAX: not a whole number: 'abc'",
        ),
        ({}, ["--batch-ms", "soon"], "iot-collector: error: --batch-ms: not a number: 'soon'"),
        (
            {"COLLECTOR_SPOOL_MAX_BYTES": "lots"},
            [],
            "iot-collector: error: COLLECTOR_SPOOL_MAX_BYTES: not a size: 'lots' (e.g. 512M, 1G)",
        ),
    ],
)
def test_bad_values_are_named_in_user_terms(
    env: dict[str, str], args: list[str], line: str
) -> None:
    done = run_cli(QUICK + args, env=env)
    assert done.returncode == 2
    assert last_line(done.stderr) == line
    assert "invalid literal" not in done.stderr and "Traceback" not in done.stderr


def test_an_sqlite_path_under_a_file_is_refused_naming_the_flag(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("x")
    db = tmp_path / "plain-file" / "events.db"
    done = run_cli([*QUICK, "--sqlite-path", str(db)])
    assert done.returncode == 2
    assert last_line(done.stderr) == (
        f"iot-collector: error: --sqlite-path {db}: {tmp_path / 'plain-file'} is a file, "
        "not a directory"
    )
    assert "Errno" not in done.stderr


def test_a_misspelt_variable_is_reported_with_the_nearest_one() -> None:
    done = run_cli([*QUICK, "--port", "x"], env={"COLLECTOR_BATCH_MAXX": "5"})
    assert done.returncode == 2
    assert (
        "iot-collector: warning: COLLECTOR_BATCH_MAXX is not a setting of the collector and "
        "is ignored; did you mean COLLECTOR_BATCH_MAX?"
    ) in done.stderr.splitlines()


def test_secret_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    done = run_cli([*QUICK, "--es-password-file", str(missing)])
    assert done.returncode == 2
    assert (
        last_line(done.stderr)
        == f"iot-collector: error: --es-password-file {missing}: no such file"
    )
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    done = run_cli([*QUICK, "--es-password-file", str(secret), "--es-password", "x"])
    assert done.returncode == 2
    assert "--es-password-file and --es-password exclude each other" in done.stderr


def test_the_secret_from_a_file_is_the_one_used(tmp_path: Path) -> None:
    import argparse

    from collector.config import add_serve_arguments, build_config

    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "key").write_text("a2V5\n")
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(["--es-username", "elastic", "--sink", "null"])
    config = build_config(args, {"COLLECTOR_ES_PASSWORD_FILE": str(tmp_path / "pw")})
    assert config.es_password == "s3cret"
    args = parser.parse_args(["--es-api-key-file", str(tmp_path / "key"), "--sink", "null"])
    assert build_config(args, {}).es_api_key == "a2V5"


def _help() -> str:
    done = run_cli(["serve", "--help"])
    assert done.returncode == 0
    return done.stdout


def test_help_shows_defaults_and_exit_codes() -> None:
    text = " ".join(_help().split())
    assert "--batch-max MAX events per store write (default: 500)" in text
    assert "(default: ./data/events.db)" in text
    assert "exit codes:" in text
    for code, meaning in DESCRIPTIONS:
        assert f"{code} {meaning}" in text


def test_readme_flag_table_matches_help() -> None:
    """Every flag of `serve --help` has a row in README's configuration table, and the
    table names no flag that does not exist."""
    helped = set(re.findall(r"^\s+(--[a-z0-9-]+)", _help(), re.M)) - {"--help"}
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `--")]
    tabled = {flag for row in rows for flag in re.findall(r"`(--[a-z0-9-]+)", row.split("|")[1])}
    assert helped - tabled == set(), "flags missing from README's table"
    assert tabled - helped == set(), "README's table names flags that do not exist"


def test_a_store_that_does_not_answer_is_announced_once_without_secrets() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connection refused
    url = f"http://elastic:S3CRET@127.0.0.1:{port}"
    done = run_cli(
        [*QUICK, "--sink", "elasticsearch", "--es-url", url, "--store-wait", "3"], timeout=60
    )
    assert done.returncode == 3
    lines = done.stderr.splitlines()
    assert f"iot-collector: waiting for the store at http://***@127.0.0.1:{port} (3 s)" in lines
    assert "S3CRET" not in done.stderr
