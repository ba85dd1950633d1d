"""What one caller or one request may cost: a rate limit per credential (Litestar's rate-limit
middleware; 429 with Retry-After), a request-body cap (413) and a time limit per request (503;
live streams are exempt, they are meant to last)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import msgspec
from litestar import Request
from litestar.enums import ScopeType
from litestar.middleware.rate_limit import RateLimitConfig, get_remote_address
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)

from service.api.session_cookie import SESSION_COOKIE
from service.config import AuthSettings, RequestLimits

UNLIMITED_PATHS = ("/health", "/ready")
STREAM_SUFFIXES = ("/stream", "/push")


def _caller(request: Request[Any, Any, Any]) -> str:
    """The credential (hashed: the token never sits in a store key), else the client address."""
    credential = request.headers.get("authorization") or request.cookies.get(SESSION_COOKIE)
    if credential:
        return "cred:" + hashlib.sha256(credential.encode()).hexdigest()[:32]
    return "addr:" + get_remote_address(request)


def rate_limit(auth: AuthSettings) -> RateLimitConfig | None:
    if auth.rate_limit_per_minute <= 0:
        return None
    return RateLimitConfig(
        rate_limit=("minute", auth.rate_limit_per_minute),
        exclude=[f"^{p}$" for p in UNLIMITED_PATHS],
        identifier_for_request=_caller,
    )


class RequestTimeout:
    """ASGI middleware: a request unanswered within ``limits.timeout_s`` gets a 503 problem (if
    nothing was sent yet) and its handler is cancelled. Streams and WebSockets are exempt."""

    def __init__(self, app: ASGIApp, limits: RequestLimits) -> None:
        self.app = app
        self.timeout_s = limits.timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != ScopeType.HTTP or path.endswith(STREAM_SUFFIXES) or path in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            async with asyncio.timeout(self.timeout_s):
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if started:
                raise
            body = msgspec.json.encode(
                {
                    "type": "about:blank",
                    "status": 503,
                    "title": "Service Unavailable",
                    "detail": f"the request took longer than {self.timeout_s:g} s and was stopped",
                }
            )
            start: HTTPResponseStartEvent = {
                "type": "http.response.start",
                "status": 503,
                "headers": [(b"content-type", b"application/problem+json"), (b"retry-after", b"1")],
            }
            end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
            await send(start)
            await send(end)
