"""Secrets kept out of what the collector prints: URL userinfo, in one place."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"


def redact_url(url: str) -> str:
    """`url` with any password (and user) replaced by ***: `http://***@host:9200`.

    Several comma-separated URLs are redacted one by one; text that is not a URL is
    returned unchanged.
    """
    if "," in url:
        return ",".join(redact_url(part) for part in url.split(","))
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{REDACTED}@{host}"))
