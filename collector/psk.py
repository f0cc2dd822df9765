"""Pre-shared keys of the devices that may speak coaps, loaded from --psk-file.

The file is JSON (format in DESIGN.md): `{"identities": [{"identity", "key" | "key_hex",
"namespace", "sender"}]}`. A bad file is refused as a whole with one line naming the
entry at fault, never the key, so that a reload with a typo keeps the previous keys.

`PskStore` is the `Mapping[str, bytes]` the DTLS backend consults during a handshake
(identity -> key). Reload replaces its contents in place, so new handshakes see new
keys at once while open sessions keep the key they authenticated with; the caller
closes the sessions of identities the new file removed (`PskStore.replace` returns
them). The store also remembers the last identity a handshake asked for: mbedtls
reports no PSK identity on a finished session, and the handshake that asked is the
one being stepped (a worker steps one handshake at a time).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

# RFC 4279 §5.3: identities up to 2^16-1 bytes, keys up to 2^16-1 bytes; libcoap and
# mbedtls cap both far lower in practice. A key shorter than 8 bytes is a typo.
MAX_IDENTITY_BYTES = 128
MIN_KEY_BYTES = 8
MAX_KEY_BYTES = 64


class PskFileError(ValueError):
    """The PSK file cannot be used; str() names the entry, never a key."""


@dataclass(frozen=True, slots=True)
class PskEntry:
    """One device's credentials and what it may write as."""

    identity: str
    key: bytes
    namespace: str
    sender: str

    def __repr__(self) -> str:  # keys never reach a log line through repr()
        return (
            f"PskEntry(identity={self.identity!r}, namespace={self.namespace!r}, "
            f"sender={self.sender!r})"
        )


def parse_psk_document(text: str | bytes) -> dict[str, PskEntry]:
    """Parse a PSK file's text into identity -> entry. Raises PskFileError."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PskFileError(f"not JSON: {exc.__class__.__name__}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("identities"), list):
        raise PskFileError('expected {"identities": [...]}')
    entries: dict[str, PskEntry] = {}
    for index, item in enumerate(doc["identities"]):
        where = f"identities[{index}]"
        if not isinstance(item, dict):
            raise PskFileError(f"{where}: not an object")
        identity = item.get("identity")
        if not isinstance(identity, str) or not identity:
            raise PskFileError(f"{where}: identity must be a non-empty string")
        if len(identity.encode()) > MAX_IDENTITY_BYTES or not identity.isprintable():
            raise PskFileError(f"{where}: identity too long or not printable")
        where = f"identity {identity!r}"
        if identity in entries:
            raise PskFileError(f"{where}: listed twice")
        key = _key(item, where)
        namespace = item.get("namespace", "default")
        sender = item.get("sender", identity)
        for name, value in (("namespace", namespace), ("sender", sender)):
            if not isinstance(value, str) or not value or not value.isprintable():
                raise PskFileError(f"{where}: {name} must be a printable non-empty string")
        entries[identity] = PskEntry(identity, key, namespace, sender)
    return entries


def _key(item: dict[str, object], where: str) -> bytes:
    text, hexed = item.get("key"), item.get("key_hex")
    if (text is None) == (hexed is None):
        raise PskFileError(f"{where}: give exactly one of key, key_hex")
    if text is not None:
        if not isinstance(text, str):
            raise PskFileError(f"{where}: key must be a string")
        key = text.encode()
    else:
        if not isinstance(hexed, str):
            raise PskFileError(f"{where}: key_hex must be a string")
        try:
            key = bytes.fromhex(hexed)
        except ValueError:
            raise PskFileError(f"{where}: key_hex is not hexadecimal") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise PskFileError(f"{where}: key must be {MIN_KEY_BYTES}..{MAX_KEY_BYTES} bytes")
    return key


def load_psk_file(path: str) -> dict[str, PskEntry]:
    """Read and parse a PSK file. Raises PskFileError (OSError included, as one line)."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise PskFileError(f"{path}: {exc.strerror or exc}") from None
    try:
        return parse_psk_document(text)
    except PskFileError as exc:
        raise PskFileError(f"{path}: {exc}") from None


class PskStore(Mapping[str, bytes]):
    """identity -> key, as the DTLS backend's key callback reads it; reloadable."""

    def __init__(self, entries: Mapping[str, PskEntry] | None = None) -> None:
        self._entries: dict[str, PskEntry] = dict(entries or {})
        self.asked: str | None = None  # the last identity a handshake asked for

    def __getitem__(self, identity: str) -> bytes:
        self.asked = identity
        return self._entries[identity].key

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, identity: str) -> PskEntry | None:
        """The credentials of `identity`, or None (no side effect on `asked`)."""
        return self._entries.get(identity)

    def replace(self, entries: Mapping[str, PskEntry]) -> set[str]:
        """Swap in a new set of entries; returns identities removed or re-keyed.

        A re-keyed identity counts as removed: its open sessions were made with the
        old key, which the operator has just revoked.
        """
        gone = {
            name
            for name, old in self._entries.items()
            if name not in entries or entries[name] != old
        }
        self._entries = dict(entries)
        return gone
