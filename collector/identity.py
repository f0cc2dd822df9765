"""Who an authenticated device is, and what it may write as.

A DTLS session (issue 15) is opened with a pre-shared key's identity; the PSK file
binds each identity to one namespace and one sender. The request core hands the
session's `Identity` to event decoding, which fills a missing namespace or sender
from it and refuses (4.03) a body that names others. Plain CoAP has no identity
(None): anyone who can reach the port writes as whoever they claim to be.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Identity"]


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated device: its PSK identity `name`, and the only `namespace`
    and `sender` its events may carry. The stored event records `name`."""

    name: str
    namespace: str
    sender: str
