"""Printing connection URLs without their secrets."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
_SECRET_QUERY_KEYS = ("pass", "token", "secret", "key", "creds")
"""Query parameters whose value is masked when their name contains one of these."""
_TOKEN_SCHEMES = ("nats", "tls", "ws", "wss")
"""Schemes where a user part without a password is itself a secret (``nats://TOKEN@host``)."""


def mask_url(url: str) -> str:
    """The URL(s) with every secret replaced by ``***`` (safe for logs and errors).

    Masks a password, a NATS token (``nats://TOKEN@host``), secret-looking query
    parameters (``?password=``, ``?sslpassword=``, ``?token=``), and each URL of a
    comma-separated server list.
    """
    return ",".join(_mask_one(part) for part in url.split(","))


def _mask_one(url: str) -> str:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if parts.password is not None:
            user = f"{parts.username or ''}:{MASK}"
        elif parts.scheme in _TOKEN_SCHEMES:
            user = MASK
        else:
            user = parts.username or ""
        netloc = f"{user}@{host}" + (f":{port}" if port else "")
    query = urlencode(
        [
            (key, MASK if any(s in key.lower() for s in _SECRET_QUERY_KEYS) else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
