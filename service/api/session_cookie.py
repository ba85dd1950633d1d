"""The console's session cookie: a credential sealed with Fernet (AES + HMAC) under a key derived
from the service's secret key, so it cannot be read or forged, and it expires (``session_ttl_s``,
checked from the time sealed inside it). Whoever holds the cookie is authenticated by the
credential inside, checked again on every request, so revoking the key ends its sessions too.

CSRF: SameSite=Strict keeps the cookie off cross-site requests; besides, a state-changing
request authenticated by the cookie must carry ``X-CSRF-Token`` (a MAC of the cookie, returned
at sign-in and by ``GET /v1/session``, held in the page's memory), and an ``Origin`` header, when
sent, must be the service's own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SESSION_COOKIE: Final = "flowledger_session"
CSRF_HEADER: Final = "x-csrf-token"
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_KEY_INFO: Final = b"flowledger console session v1"


class SessionInvalid(Exception):
    """The cookie is not one of ours, or it has expired."""


class CsrfRefused(Exception):
    """A cookie-authenticated request that could have been forged by another site."""


class SessionSealer:
    """Seals a credential into a cookie value and opens it again within ``ttl_s``."""

    def __init__(self, secret_key: bytes, ttl_s: int) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=SESSION_KEY_INFO).derive(
            base64.urlsafe_b64decode(secret_key)
        )
        self._fernet = Fernet(base64.urlsafe_b64encode(derived[:32]))
        self._mac_key = derived[32:]
        self.ttl_s = ttl_s

    def seal(self, token: str) -> str:
        return self._fernet.encrypt(token.encode()).decode()

    def open(self, cookie: str) -> str:
        try:
            return self._fernet.decrypt(cookie.encode(), ttl=self.ttl_s).decode()
        except (InvalidToken, ValueError, UnicodeDecodeError):
            raise SessionInvalid("the console session has expired or is not valid; sign in again") from None

    def expires_at(self, cookie: str) -> datetime:
        sealed_at = self._fernet.extract_timestamp(cookie.encode())
        return datetime.fromtimestamp(sealed_at, UTC) + timedelta(seconds=self.ttl_s)

    def csrf_token(self, cookie: str) -> str:
        mac = hmac.new(self._mac_key, cookie.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:24]).decode()

    def check_csrf(self, scope_type: str, method: str, headers: Mapping[str, str], cookie: str) -> None:
        """Refuse (``CsrfRefused``) a cookie-authenticated request that changes state without the
        CSRF token, or that comes from another origin (a WebSocket handshake included)."""
        origin = headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != headers.get("host", ""):
            raise CsrfRefused(
                f"a request with the console session must come from the console's origin, not {origin}"
            )
        if scope_type != "http" or method in SAFE_METHODS:
            return
        sent = headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), self.csrf_token(cookie).encode()):
            raise CsrfRefused(
                "a change made with the console session needs the X-CSRF-Token header "
                "(GET /v1/session returns it)"
            )
