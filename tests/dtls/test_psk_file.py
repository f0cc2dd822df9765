"""--psk-file parsing: one row a case; a bad file is refused whole, never naming a key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collector.psk import PskEntry, PskFileError, PskStore, load_psk_file, parse_psk_document

GOOD = {
    "identities": [
        {"identity": "dev-17", "key": "a text key", "namespace": "lab", "sender": "dev-17"},
        {
            "identity": "dev-18",
            "key_hex": "00112233445566778899aabbccddeeff",
            "namespace": "lab",
            "sender": "s18",
        },
    ]
}


def test_text_and_hex_keys() -> None:
    entries = parse_psk_document(json.dumps(GOOD))
    assert entries["dev-17"] == PskEntry("dev-17", b"a text key", "lab", "dev-17")
    assert entries["dev-18"].key.hex() == "00112233445566778899aabbccddeeff"
    assert entries["dev-18"].sender == "s18"


def test_namespace_and_sender_default() -> None:
    entries = parse_psk_document('{"identities": [{"identity": "d", "key": "12345678"}]}')
    assert (entries["d"].namespace, entries["d"].sender) == ("default", "d")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("not json", "not JSON"),
        ("[]", "identities"),
        ('{"identities": [1]}', "not an object"),
        ('{"identities": [{"key": "12345678"}]}', "identity must be"),
        ('{"identities": [{"identity": "a"}]}', "exactly one of key"),
        ('{"identities": [{"identity": "a", "key": "12345678", "key_hex": "00"}]}', "exactly one"),
        ('{"identities": [{"identity": "a", "key_hex": "zz"}]}', "not hexadecimal"),
        ('{"identities": [{"identity": "a", "key": "short"}]}', "8..64 bytes"),
        ('{"identities": [{"identity": "a", "key": "12345678", "sender": ""}]}', "sender"),
        (
            '{"identities": [{"identity": "a", "key": "12345678"}, {"identity": "a", "key": "12345678"}]}',
            "twice",
        ),
    ],
)
def test_bad_documents_are_refused(doc: str, message: str) -> None:
    with pytest.raises(PskFileError, match=message):
        parse_psk_document(doc)


def test_errors_and_repr_never_show_a_key(tmp_path: Path) -> None:
    secret = "super-secret-key-material"
    bad = {"identities": [{"identity": "x", "key": secret, "key_hex": "00"}]}
    path = tmp_path / "psk.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(PskFileError) as info:
        load_psk_file(str(path))
    assert secret not in str(info.value)
    entry = PskEntry("x", secret.encode(), "n", "s")
    assert secret not in repr(entry) and secret not in str(entry)


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(PskFileError, match="No such file"):
        load_psk_file(str(tmp_path / "nope.json"))


def test_store_replace_reports_removed_and_rekeyed() -> None:
    store = PskStore(parse_psk_document(json.dumps(GOOD)))
    assert store["dev-17"] == b"a text key" and store.asked == "dev-17"
    changed = {
        "dev-17": PskEntry("dev-17", b"a new text key", "lab", "dev-17"),
        "dev-19": PskEntry("dev-19", b"another key", "lab", "dev-19"),
    }
    assert store.replace(changed) == {"dev-17", "dev-18"}
    assert set(store) == {"dev-17", "dev-19"}
    with pytest.raises(KeyError):
        store["dev-18"]
