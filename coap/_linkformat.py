"""RFC 6690 link-format serialisation (what ``/.well-known/core`` returns).

A link is ``<target>`` followed by ``;name=value`` attributes. Values are written
as RFC 6690 §2 allows: integers bare (``ct=40``), several integers as one quoted
space-separated list (``ct="50 60"``, RFC 7252 §7.2.1), strings quoted with ``"``
and ``\\`` escaped, and ``True`` as a bare flag (``;obs``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Link", "link_format"]

AttributeValue = str | int | bool | Sequence[int]


@dataclass(frozen=True, slots=True)
class Link:
    """One link: a target URI reference and ordered ``(name, value)`` attributes."""

    target: str
    attributes: tuple[tuple[str, AttributeValue], ...] = ()

    def serialize(self) -> str:
        """This link in link-format. Raises ValueError for a target with ``>``."""
        if ">" in self.target:
            raise ValueError(f"link target may not contain '>': {self.target!r}")
        parts = [f"<{self.target}>"]
        for name, value in self.attributes:
            parts.append(_attribute(name, value))
        return ";".join(parts)


def _attribute(name: str, value: AttributeValue) -> str:
    if not name or not all(c.isalnum() or c in "!#$&+-.^_`|~*" for c in name):
        raise ValueError(f"invalid link attribute name {name!r}")
    if value is True:
        return name
    if value is False:
        raise ValueError(f"attribute {name!r}: False is not a value (omit the attribute)")
    if isinstance(value, int):
        return f"{name}={value}"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{name}="{escaped}"'
    numbers = [int(v) for v in value]
    if len(numbers) == 1:
        return f"{name}={numbers[0]}"
    return f'{name}="{" ".join(str(v) for v in numbers)}"'


def link_format(links: Iterable[Link]) -> str:
    """Serialise links as an RFC 6690 document (comma-separated)."""
    return ",".join(link.serialize() for link in links)
