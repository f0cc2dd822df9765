"""Structured logs: one JSON object per line on stderr, for lifecycle and errors.

The per-datagram path never logs (it would cost more than the request); requests are
logged only with `--access-log`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import orjson

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # elasticsearch-py's transport logs every request at INFO and every failed
    # connection at WARNING; the sink reports store state itself, once per change.
    logging.getLogger("elastic_transport").setLevel(logging.CRITICAL)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
