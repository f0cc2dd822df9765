"""What came back for each request, how it is printed, and the exit code it makes.

Exit codes (the CLI contract): 0 when every request was answered 2.xx; 1 when
some answer was 4.xx/5.xx or a RST; 3 when some request got no answer at all
(timeout, or the port refused it), which takes precedence because it means the server may not be there;
2 is for usage and configuration errors, decided before anything is sent.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

import cbor2
import orjson

from coap import Code, ContentFormat, OptionNumber
from coap.codes import code_class as coap_class
from coap.codes import is_success

from .endpoint import (
    BlockwiseError,
    ConnectionRefused,
    ExchangeReset,
    RequestError,
    RequestTimeout,
    Response,
)

__all__ = [
    "EXIT_ANSWER_ERROR",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "Tally",
    "describe_payload",
    "format_answer",
]

EXIT_OK: Final = 0
EXIT_ANSWER_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_TIMEOUT: Final = 3

_MAX_SHOWN: Final = 200  # bytes of a non-text payload shown as hex


def describe_payload(response: Response) -> str:
    """A response payload as one line of text: JSON as JSON, CBOR converted to
    JSON, text as text, anything else as (shortened) hex."""
    msg = response.message
    body = msg.payload
    if not body:
        return ""
    fmt = msg.content_format
    try:
        if fmt == ContentFormat.CBOR:
            return orjson.dumps(cbor2.loads(body), default=repr).decode()
        if fmt in (ContentFormat.JSON, ContentFormat.SENML_JSON):
            return orjson.dumps(orjson.loads(body)).decode()
        if fmt is None or fmt in (ContentFormat.TEXT_PLAIN, ContentFormat.LINK_FORMAT):
            return body.decode("utf-8").replace("\n", "\\n")
    except (ValueError, cbor2.CBORDecodeError, UnicodeDecodeError):
        pass
    shown = body[:_MAX_SHOWN].hex()
    return shown + ("..." if len(body) > _MAX_SHOWN else "")


def format_answer(
    method: str, path: str, outcome: Response | RequestError, sent: Any = None
) -> str:
    """``POST /events -> 2.01 {"namespace": ...}``: the answer, then what was sent.

    Error answers add the server's diagnostic after ``--``.
    """
    head = f"{method} {path} -> "
    tail = "" if sent is None else " " + orjson.dumps(sent).decode()
    if isinstance(outcome, RequestTimeout):
        return f"{head}timeout ({outcome}){tail}"
    if isinstance(outcome, ExchangeReset):
        return f"{head}RST{tail}"
    if isinstance(outcome, ConnectionRefused):
        return f"{head}{outcome}"
    if isinstance(outcome, RequestError):
        return f"{head}error ({outcome}){tail}"
    if outcome.code == Code.REQUEST_ENTITY_TOO_LARGE:
        # One short line: echoing a body the server found too large helps nobody.
        limit = outcome.message.uint_option(OptionNumber.SIZE1)
        line = f"{head}4.13 request too large"
        if limit is not None:
            line += f" (the server takes at most {limit} bytes)"
        return line + (f" [{len(sent)} events]" if isinstance(sent, list) else "")
    line = head + outcome.code_str + tail
    if not is_success(outcome.code):
        diagnostic = describe_payload(outcome)
        if diagnostic:
            line += f" -- {diagnostic}"
        max_age = outcome.message.uint_option(OptionNumber.MAX_AGE)
        if max_age is not None and coap_class(outcome.code) == 5:
            line += f" (retry after {max_age} s)"
    return line


@dataclass(slots=True)
class Tally:
    """Counts of outcomes; ``exit_code`` applies the CLI contract."""

    codes: Counter[str] = field(default_factory=Counter)
    timeouts: int = 0
    resets: int = 0
    protocol_errors: int = 0  # answers that could not be put together (block-wise)
    other_errors: int = 0
    events_acked: int = 0
    events_sent: int = 0
    requests_sent: int = 0

    def add(self, outcome: Response | RequestError, events: int = 0) -> None:
        if isinstance(outcome, RequestTimeout):
            self.timeouts += 1
        elif isinstance(outcome, ExchangeReset):
            self.resets += 1
        elif isinstance(outcome, BlockwiseError):
            self.protocol_errors += 1
        elif isinstance(outcome, RequestError):
            self.other_errors += 1
        else:
            self.codes[outcome.code_str] += 1
            if is_success(outcome.code):
                self.events_acked += events

    @property
    def answered(self) -> int:
        return sum(self.codes.values())

    @property
    def errors(self) -> int:
        """Answers that are not 2.xx, resets and unusable block-wise answers."""
        failed = sum(n for code, n in self.codes.items() if not code.startswith("2."))
        return failed + self.resets + self.protocol_errors

    @property
    def exit_code(self) -> int:
        if self.timeouts or self.other_errors:
            return EXIT_TIMEOUT
        if self.errors:
            return EXIT_ANSWER_ERROR
        return EXIT_OK

    def codes_text(self) -> str:
        parts = [f"{code}={n}" for code, n in sorted(self.codes.items())]
        if self.resets:
            parts.append(f"RST={self.resets}")
        if self.timeouts:
            parts.append(f"timeout={self.timeouts}")
        return " ".join(parts) or "none"


def emit(line: str, stream: TextIO) -> None:
    """Print one line and flush, so answers show up as they arrive."""
    stream.write(line + "\n")
    stream.flush()
