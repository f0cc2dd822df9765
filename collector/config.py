"""One frozen, validated configuration, built once from flags and environment.

Every flag has an environment twin, `COLLECTOR_` + the flag in upper snake case
(`--batch-max` ↔ `COLLECTOR_BATCH_MAX`); a flag given on the command line wins over
its variable. Bad values end the program with one line and exit code 2, before any
socket is bound.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from coap.transmission import ACK_TIMEOUT
from collector.events import Limits, duration_text
from collector.psk import PskFileError, load_psk_file
from collector.ratelimit import RateLimit

SINKS = ("sqlite", "elasticsearch", "null")
LOG_LEVELS = ("debug", "info", "warning", "error")
SQLITE_SYNCHRONOUS = ("full", "normal")
DTLS_BACKENDS = ("openssl", "mbedtls")  # collector.dtls.BACKENDS


class ConfigError(Exception):
    """A flag or environment variable has a value the collector cannot use."""


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "0.0.0.0"
    port: int = 5683
    workers: int = 1
    rcvbuf: int = 4 * 1024 * 1024
    share_port: bool = False
    sink: str = "sqlite"
    es_url: str = "http://127.0.0.1:9200"
    es_index_prefix: str = "iot-events"
    es_username: str | None = None
    es_password: str | None = None
    es_password_file: str | None = None
    es_api_key: str | None = None
    es_api_key_file: str | None = None
    es_ca_certs: str | None = None
    es_retry_deadline: float = 4.0
    es_compress: bool = False
    es_ilm_policy: str | None = None
    store_wait: float = 10.0
    sqlite_path: str = "./data/events.db"
    sqlite_synchronous: str = "full"
    spool_path: str | None = None
    spool_max_bytes: int = 1024**3
    batch_max: int = 500
    batch_ms: float = 5.0
    max_flushes: int = 4
    max_pending: int = 20000
    max_body: int = 16384
    max_event_age: float = 7 * 86400.0  # seconds; see event_limits
    max_event_future: float = 600.0
    dedup_capacity: int = 200_000
    ack_delay: float = 0.5
    drain_timeout: float = 10.0
    metrics_port: int = 9100
    metrics_host: str = "0.0.0.0"
    log_level: str = "info"
    access_log: bool = False
    coaps_port: int = 5684
    psk_file: str | None = None
    plain: bool | None = None  # None: on without a PSK file, off with one
    dtls_backend: str = "openssl"
    dtls_max_sessions: int = 10_000
    dtls_idle_timeout: float = 300.0
    rate_limit: RateLimit | None = None

    @property
    def plain_enabled(self) -> bool:
        """Whether plain CoAP is served on --port (off with a PSK file unless asked)."""
        return self.plain if self.plain is not None else self.psk_file is None

    @property
    def dtls_enabled(self) -> bool:
        """Whether coaps is served on --coaps-port (a PSK file turns it on)."""
        return self.psk_file is not None


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota.

    A container limited to 1.5 CPUs on a 16-core node must not start 16 workers that
    then fight over 1.5 CPUs of quota; the quota is rounded up.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _cgroup_cpu_quota() -> float | None:
    try:  # cgroup v2: "max 100000" or "150000 100000"
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            q = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            p = int(f.read())
        return None if q <= 0 else q / p
    except (OSError, ValueError):
        return None


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"not a whole number: {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _port(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be 0..65535")
    return value


def _positive_float(text: str) -> float:
    value = _float(text)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError("must be a finite number > 0")
    return value


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _size(text: str) -> int:
    """Bytes, with an optional binary suffix: 512M, 1G, 1.5GiB."""
    lowered = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = lowered[-1:] if lowered[-1:] in _SIZE_UNITS else ""
    try:
        value = float(lowered[: len(lowered) - len(unit)])
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 512M, 1G)") from None
    if not (math.isfinite(value) and value >= 1):
        raise ValueError("must be a size of at least 1 byte (e.g. 512M, 1G)")
    return int(value * _SIZE_UNITS[unit])


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """Seconds of `90s`, `10m`, `36h`, `30d`, or a plain number of seconds."""
    stripped = text.strip().lower()
    scale = _DURATION_UNITS.get(stripped[-1:], 0) if stripped else 0
    number = stripped[:-1] if scale else stripped
    try:
        value = float(number) * (scale or 1)
    except ValueError:
        value = math.nan
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 10m, 36h, 30d, or seconds)")
    return value


def _nonneg_float(text: str) -> float:
    value = _float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError("must be a finite number >= 0")
    return value


# flag name, converter, help; `choices` where the set is closed.
_FLAGS: list[tuple[str, Callable[[str], Any], str, Sequence[str] | None]] = [
    ("host", str, "address to bind; '::' is dual-stack IPv6+IPv4", None),
    ("port", _port, "UDP port (0: any free port)", None),
    (
        "workers",
        _positive_int,
        "worker processes (default: usable CPUs, cgroup quota included)",
        None,
    ),
    (
        "rcvbuf",
        _positive_int,
        "socket receive buffer bytes per worker (SO_RCVBUFFORCE when root)",
        None,
    ),
    (
        "share-port",
        _bool,
        "join the SO_REUSEPORT group of another process already serving the UDP port "
        "(default: refuse, exit 4)",
        None,
    ),
    ("sink", str, "where events go", SINKS),
    ("es-url", str, "Elasticsearch URL; several nodes separated by commas", None),
    ("es-index-prefix", str, "index name prefix; indices are <prefix>-YYYY.MM.DD", None),
    ("es-username", str, "Elasticsearch basic-auth user", None),
    (
        "es-password",
        str,
        "Elasticsearch basic-auth password (visible in ps: prefer the file or the variable)",
        None,
    ),
    ("es-password-file", str, "file holding the Elasticsearch password", None),
    (
        "es-api-key",
        str,
        "Elasticsearch API key (visible in ps: prefer the file or the variable)",
        None,
    ),
    ("es-api-key-file", str, "file holding the Elasticsearch API key", None),
    ("es-ca-certs", str, "CA bundle for Elasticsearch TLS", None),
    ("es-retry-deadline", _nonneg_float, "seconds to retry 429/5xx bulk items before 5.03", None),
    ("es-compress", _bool, "gzip bulk request bodies", None),
    (
        "es-ilm-policy",
        str,
        "ILM policy named in the index template (full distributions; retention by ILM)",
        None,
    ),
    ("store-wait", _nonneg_float, "seconds to wait for the store at start-up", None),
    ("sqlite-path", str, "database file of the sqlite sink", None),
    (
        "sqlite-synchronous",
        str,
        "full: an ack survives power loss; normal: an ack survives a crash of the collector",
        SQLITE_SYNCHRONOUS,
    ),
    (
        "spool-path",
        str,
        "directory of the durable spool for batches the store cannot take (off when unset)",
        None,
    ),
    ("spool-max-bytes", _size, "spool capacity (e.g. 512M, 1G); 5.03 when full", None),
    ("batch-max", _positive_int, "events per store write", None),
    ("batch-ms", _nonneg_float, "milliseconds a batch waits for more events", None),
    ("max-flushes", _positive_int, "store writes in flight per worker", None),
    ("max-pending", _positive_int, "events waiting per worker before 5.03", None),
    ("max-body", _positive_int, "largest request body in bytes (4.13 above)", None),
    (
        "max-event-age",
        _duration,
        "oldest accepted event time before the receive time (90s, 10m, 36h, 7d; 4.00 beyond)",
        None,
    ),
    (
        "max-event-future",
        _duration,
        "furthest accepted event time after the receive time (4.00 beyond)",
        None,
    ),
    (
        "dedup-capacity",
        _positive_int,
        "exchanges remembered per worker for duplicate detection",
        None,
    ),
    ("ack-delay", _nonneg_float, "seconds before an empty ACK and a separate response", None),
    ("drain-timeout", _nonneg_float, "seconds a worker may take to drain on SIGTERM", None),
    ("metrics-port", _port, "HTTP port for /metrics /healthz /readyz (0: off)", None),
    ("metrics-host", str, "address of the metrics HTTP endpoint", None),
    ("log-level", str, "log level", LOG_LEVELS),
    ("access-log", _bool, "log every request (slow: for debugging)", None),
    ("coaps-port", _port, "UDP port of CoAP over DTLS (served with --psk-file)", None),
    ("psk-file", str, "JSON file of device identities and keys; turns coaps on", None),
    ("plain", _bool, "serve plain CoAP on --port (default: on, off with --psk-file)", None),
    ("dtls-backend", str, "TLS library of coaps", DTLS_BACKENDS),
    ("dtls-max-sessions", _positive_int, "DTLS sessions per worker", None),
    ("dtls-idle-timeout", _positive_float, "seconds before a quiet DTLS session is dropped", None),
    (
        "rate-limit",
        RateLimit.parse,
        "events/s per identity (per address on plain CoAP), RATE[:BURST]; 0: off",
        None,
    ),
]
_BOOL_FLAGS = {"es-compress", "access-log", "share-port"}
_ON_OFF_FLAGS = {"plain"}


def env_name(flag: str) -> str:
    return "COLLECTOR_" + flag.upper().replace("-", "_")


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Config)}


_DURATION_FLAGS = {"max-event-age", "max-event-future"}


def _shown_default(flag: str) -> str | None:
    """The default as `--help` shows it (None: nothing to show)."""
    if flag == "workers":
        return None  # the help text says it: the usable CPUs
    default = _DEFAULTS[flag.replace("-", "_")]
    if default is None:
        return None
    if isinstance(default, bool):
        return "on" if default else "off"
    if flag in _DURATION_FLAGS:
        return duration_text(round(default * 1000))
    return str(default)


def add_serve_arguments(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """The flags of `serve` (or of them, those named in `only`) with their env twins."""
    for flag, _conv, help_text, choices in _FLAGS:
        if only is not None and flag not in only:
            continue
        shown = _shown_default(flag)
        text = help_text if shown is None else f"{help_text} (default: {shown})"
        kwargs: dict[str, Any] = {"help": f"{text} [env {env_name(flag)}]", "default": None}
        if flag in _BOOL_FLAGS:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif flag in _ON_OFF_FLAGS:
            kwargs["metavar"] = "on|off"
        else:
            kwargs["metavar"] = flag.split("-")[-1].upper()
            if choices:
                kwargs["choices"] = choices
                kwargs["metavar"] = "|".join(choices)
        parser.add_argument(f"--{flag}", **kwargs)


def _read_secret(where: str, path: str) -> str:
    """A secret from a file (a Kubernetes Secret volume, say): its text, less the
    trailing newline editors add."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().rstrip("\r\n")
    except FileNotFoundError:
        raise ConfigError(f"{where} {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{where} {path}: is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(f"{where} {path}: not readable by this user") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} {path}: cannot read it ({_os_reason(exc)})") from None
    if not text:
        raise ConfigError(f"{where} {path}: the file is empty")
    return text


def _os_reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or type(exc).__name__).lower()


def _check_sqlite_path(where: str, path: str) -> None:
    """Refuse a database path the sink could not create, in the flag's terms."""
    if path == ":memory:":
        return
    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise ConfigError(f"{where} {path}: is a directory; name the database file inside it")
    parent = os.path.dirname(full)
    while not os.path.exists(parent):
        up = os.path.dirname(parent)
        if up == parent:
            return
        parent = up
    if not os.path.isdir(parent):
        raise ConfigError(f"{where} {path}: {parent} is a file, not a directory")


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """Warnings for COLLECTOR_* variables that are no flag's twin (likely misspelt),
    each naming the nearest real one."""
    import difflib

    real = [env_name(flag) for flag, _c, _h, _ch in _FLAGS]
    warnings = []
    for name in sorted(environ):
        if not name.startswith("COLLECTOR_") or name in real:
            continue
        near = difflib.get_close_matches(name, real, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]}?" if near else " (see serve --help)"
        warnings.append(f"{name} is not a setting of the collector and is ignored{hint}")
    return warnings


def build_config(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    """Merge flags (first) and COLLECTOR_* variables (then) over the defaults.

    Raises ConfigError with one line naming the flag or variable at fault.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}  # flag -> where its value came from, for messages
    known = {f.name for f in fields(Config)}
    for flag, conv, _help, choices in _FLAGS:
        attr = flag.replace("-", "_")
        assert attr in known, attr
        given = getattr(args, attr, None)
        source = f"--{flag}"
        if given is None and env_name(flag) in environ:
            given = environ[env_name(flag)]
            source = env_name(flag)
        if given is None:
            continue
        try:
            value = given if isinstance(given, bool) else conv(str(given))
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if choices and value not in choices:
            raise ConfigError(f"{source}: {value!r} is not one of {', '.join(choices)}")
        values[attr] = value
        sources[flag] = source
    if "workers" not in values:
        values["workers"] = usable_cpus()
    for secret, path_flag in (
        ("es_password", "es-password-file"),
        ("es_api_key", "es-api-key-file"),
    ):
        path = values.get(path_flag.replace("-", "_"))
        if path is None:
            continue
        where = sources[path_flag]
        if secret in values:
            raise ConfigError(f"{where} and {sources[secret.replace('_', '-')]} exclude each other")
        values[secret] = _read_secret(where, path)
    if values.get("sink", _DEFAULTS["sink"]) == "sqlite":
        _check_sqlite_path(
            sources.get("sqlite-path", "--sqlite-path"),
            values.get("sqlite_path", _DEFAULTS["sqlite_path"]),
        )
    config = Config(**values)
    if config.ack_delay >= ACK_TIMEOUT:
        raise ConfigError(
            f"--ack-delay {config.ack_delay} must be well under ACK_TIMEOUT ({ACK_TIMEOUT} s), "
            "or clients retransmit before the empty ACK"
        )
    if config.es_api_key and config.es_username:
        raise ConfigError("--es-api-key and --es-username exclude each other")
    if config.psk_file is not None:
        try:  # refused before any socket is bound; the keys are read again by workers
            load_psk_file(config.psk_file)
        except PskFileError as exc:
            raise ConfigError(f"--psk-file: {exc}") from None
        if config.dtls_backend == "openssl":
            from collector.dtls import openssl_backend

            if not openssl_backend.available():
                raise ConfigError("--dtls-backend openssl: libssl.so.3 not found (try mbedtls)")
    if not config.plain_enabled and not config.dtls_enabled:
        raise ConfigError("--plain off without --psk-file leaves nothing to serve")
    return config


def event_limits(config: Config) -> Limits:
    """The bounds event decoding applies, from the configuration (decoding itself takes
    no config object: `collector.events.Limits` is all it needs)."""
    return Limits(
        max_body=config.max_body,
        max_event_age_ms=round(config.max_event_age * 1000),
        max_event_future_ms=round(config.max_event_future * 1000),
    )
