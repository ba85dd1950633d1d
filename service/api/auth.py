"""Who is calling: every route but the public ones needs ``Authorization: Bearer <token>``.

A token is an API key (``flk_<key_id>_<secret>``, ``store.keys``) or a JWT from an identity
provider (HS256 with a shared secret, or RS256/ES256 with a PEM public key or a JWKS URL;
issuer, audience, ``exp`` and ``nbf`` checked; tenant and scopes from configurable claims).
The console's session cookie carries the same API key. The answer is a ``Principal``:
the tenant every query is confined to, the scopes the route guard checks, and the actor
recorded in the events the request causes.

Errors: no or bad credential 401; missing scope 403 (``require_scope``). Objects of another
tenant are 404s, decided where they are looked up, never here.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

import jwt
import msgspec
import structlog
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    NotAuthorizedException,
    PermissionDeniedException,
    ServiceUnavailableException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.authentication import AbstractAuthenticationMiddleware, AuthenticationResult

from schemas.events import Identifier
from service.api.errors import problem
from service.api.session_cookie import SESSION_COOKIE, CsrfRefused, SessionInvalid, SessionSealer
from service.config import ALL_SCOPES, AuthSettings
from service.store.keys import ApiKey, KeyStore, ParsedToken, parse_token

log = structlog.get_logger(__name__)

SCOPES: Final = ALL_SCOPES
KEY_CACHE_S: Final = 60.0
"""How long a verified API key is trusted without reading it again (revocations cut it short)."""
LAST_USED_EVERY_S: Final = 60.0
RUN_TENANTS_REMEMBERED: Final = 100_000
JWKS_CACHE_S: Final = 300.0
"""How long a fetched JWKS is used before it is fetched again (a removed key is refused after at most this)."""
JWKS_REFRESH_COOLDOWN_S: Final = 1.0
"""An unknown kid fetches the JWKS again, at most once per this many seconds (tokens with made-up
kids cannot make the service hammer the identity provider)."""
JWKS_TIMEOUT_S: Final = 5.0
"""A JWKS fetch gives up after this; the token is refused (401) meanwhile."""
PUBLIC_OPT: Final = "exclude_from_auth"
"""The route ``opt`` key of the few public routes (health, readiness, the OpenAPI document, the
console's static files): they return no tenant data."""


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    scopes: frozenset[str]
    actor: str
    """``key:<key_id>`` for an API key, ``jwt:<sub>`` for a JWT: recorded as the ``actor`` of events."""

    def may(self, scope: str) -> bool:
        return scope in self.scopes


class Unauthenticated(NotAuthorizedException):
    """401 with a ``WWW-Authenticate`` challenge and a detail a person can act on."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail=detail, headers={"WWW-Authenticate": 'Bearer realm="flowledger"'})


class Authenticator:
    """Turns a bearer token (or session cookie) into a ``Principal``."""

    def __init__(self, keys: KeyStore, settings: AuthSettings) -> None:
        self.keys = keys
        self.settings = settings
        # The key set is cached (``lifespan``) and fetched again on an unknown kid, at most once per
        # cooldown: a rotated key works within seconds. No per-kid cache: it would keep accepting a
        # key the provider removed from the set (lru_cache, no expiry) for as long as the process lives.
        self._jwks = (
            jwt.PyJWKClient(
                settings.jwt_jwks_url,
                cache_keys=False,
                lifespan=JWKS_CACHE_S,
                cooldown_duration=JWKS_REFRESH_COOLDOWN_S,
                timeout=JWKS_TIMEOUT_S,
            )
            if settings.jwt_jwks_url
            else None
        )
        self._public_key = _read_key(settings.jwt_public_key) if settings.jwt_public_key else None
        self._verified: dict[str, tuple[bytes, ApiKey, float]] = {}
        """key id -> (digest of the token, the key, when verified): a key is read from the
        database at most once per ``KEY_CACHE_S``; a revocation (NOTIFY) drops it at once."""
        self._used_at: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()

    def forget(self, key_id: str | None = None) -> None:
        """Drop a cached key (all of them with None): it was revoked, or revocations may have been
        missed while the LISTEN was down."""
        if key_id is None:
            self._verified.clear()
        else:
            self._verified.pop(key_id, None)

    async def principal(self, token: str) -> Principal:
        parsed = parse_token(token)
        if parsed is not None:
            return await self._from_key(parsed, token)
        if token.count(".") == 2 and self.jwt_enabled:
            return await self._from_jwt(token)
        raise Unauthenticated(
            "the bearer token is neither a Flowledger API key (flk_...) nor an accepted JWT"
        )

    def _note_use(self, key_id: str, now: float) -> None:
        """Record ``last_used_at`` at most once a minute per key, off the request's path."""
        if now - self._used_at.get(key_id, -LAST_USED_EVERY_S) < LAST_USED_EVERY_S:
            return
        self._used_at[key_id] = now
        task = asyncio.create_task(self._mark_used(key_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _mark_used(self, key_id: str) -> None:
        try:
            await self.keys.mark_used(key_id)
        except Exception as exc:  # a lost "last used" time is not worth failing anything for
            log.warning("key_last_used_not_recorded", key_id=key_id, error=str(exc))

    @property
    def jwt_enabled(self) -> bool:
        s = self.settings
        return bool(s.jwt_secret or s.jwt_public_key or s.jwt_jwks_url)

    async def _from_key(self, parsed: ParsedToken, token: str) -> Principal:
        key_id = parsed.key_id
        digest = hashlib.sha256(token.encode()).digest()
        now = time.monotonic()
        cached = self._verified.get(key_id)
        if cached is not None and now - cached[2] < KEY_CACHE_S and hmac.compare_digest(cached[0], digest):
            key: ApiKey | None = cached[1]
        else:
            key = await self.keys.verify(parsed)
            if key is not None and key.revoked_at is None:
                self._verified[key_id] = (digest, key, now)
        if key is None:
            raise Unauthenticated("unknown API key (or a wrong secret for it)")
        self._note_use(key_id, now)
        if key.revoked_at is not None:
            raise Unauthenticated(f"API key {key_id} was revoked")
        if key.expires_at is not None and key.expires_at <= datetime.now(UTC):
            raise Unauthenticated(f"API key {key_id} expired at {key.expires_at.isoformat()}")
        return Principal(key.tenant, frozenset(key.scopes), f"key:{key.key_id}")

    async def _from_jwt(self, token: str) -> Principal:
        s = self.settings
        try:
            key, algorithms = await self._verification_key(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=algorithms,
                audience=s.jwt_audience,
                issuer=s.jwt_issuer,
                leeway=s.jwt_leeway_s,
                options={"require": ["exp", "sub"], "verify_aud": s.jwt_audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"JWT refused: {exc}") from None
        tenant = claims.get(s.jwt_tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            raise Unauthenticated(f"JWT refused: no {s.jwt_tenant_claim!r} claim naming the tenant")
        try:
            # The tenant is a NATS subject token of its events: "acme.x" would publish where
            # subscribers allowed `<prefix>.acme.>` read (and a wildcard is no subject at all).
            msgspec.convert(tenant, Identifier)
        except msgspec.ValidationError:
            raise Unauthenticated(
                f"JWT refused: the {s.jwt_tenant_claim!r} claim is not a tenant id "
                "(1 to 64 letters, digits, '_' or '-')"
            ) from None
        raw = claims.get(s.jwt_scope_claim, "")
        scopes = (
            raw.split() if isinstance(raw, str) else [str(x) for x in raw] if isinstance(raw, list) else []
        )
        return Principal(tenant, frozenset(scopes), f"jwt:{claims['sub']}")

    async def _verification_key(self, token: str) -> tuple[Any, list[str]]:
        """The key and the only algorithms it may verify: HS256 with the shared secret, RS256 or
        ES256 with a public key (so an HS256 token "signed" with the public key never passes).
        With both a secret and a public key or JWKS configured, an HS256 token is checked with
        the secret (and only with it), any other with the public keys."""
        s = self.settings
        if s.jwt_secret and jwt.get_unverified_header(token).get("alg") == "HS256":
            return s.jwt_secret, ["HS256"]
        if self._jwks is not None:
            # PyJWKClient fetches over urllib (blocking) and refetches the set once on an unknown kid.
            jwk = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
            return jwk.key, [jwk.algorithm_name] if jwk.algorithm_name in ("RS256", "ES256") else [
                "RS256",
                "ES256",
            ]
        if self._public_key is not None:
            return self._public_key, ["RS256", "ES256"]
        return s.jwt_secret, ["HS256"]


def _read_key(value: str) -> str:
    """A PEM given inline, or the path of a PEM file."""
    if "-----BEGIN" in value:
        return value
    with open(value, encoding="utf-8") as pem:
        return pem.read()


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The credential of a request: the ``Authorization: Bearer`` header, else the one sealed in
    the console's session cookie (which must be valid, unexpired and, for a change, carry the
    CSRF token)."""
    header = connection.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
        return token.strip()
    cookie = connection.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    sealer: SessionSealer | None = connection.app.state.get("sessions")
    if sealer is None:
        raise ServiceUnavailableException(
            detail="the service is still starting; sessions cannot be checked yet"
        )
    try:
        token = sealer.open(cookie)
        sealer.check_csrf(
            connection.scope["type"], str(connection.scope.get("method", "GET")), connection.headers, cookie
        )
    except SessionInvalid as exc:
        raise Unauthenticated(str(exc)) from None
    except CsrfRefused as exc:
        raise PermissionDeniedException(detail=str(exc)) from None
    return token


class AuthMiddleware(AbstractAuthenticationMiddleware):
    """Authenticates every request to a route not marked public; the ``Principal`` becomes
    ``request.user``. With auth off (loopback only), everyone is the default tenant's admin."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        state = connection.app.state
        if not state.get("auth_enabled", True):  # `serve --no-auth`: refused off loopback
            return AuthenticationResult(user=ANONYMOUS, auth=None)
        authenticator: Authenticator | None = state.get("authenticator")
        if authenticator is None:
            raise ServiceUnavailableException(
                detail="the service is still starting; credentials cannot be checked yet"
            )
        token = bearer_token(connection)
        if token is None:
            raise Unauthenticated("this route needs a credential: send 'Authorization: Bearer <token>'")
        return AuthenticationResult(user=await authenticator.principal(token), auth=token)


ANONYMOUS = Principal("default", frozenset(SCOPES), "anonymous")
"""Who calls when authentication is off (``serve --no-auth``, allowed on loopback only)."""

ROUTE_SCOPES: Final[dict[str, str]] = {
    # handler name -> the scope it needs; a handler missing here is closed to everyone
    "list_workflows": "workflows:read",
    "get_workflow": "workflows:read",
    "register_workflow": "workflows:write",
    "list_schedules": "workflows:read",
    "list_workflow_schedules": "workflows:read",
    "get_schedule": "workflows:read",
    "create_schedule": "workflows:write",
    "delete_schedule": "workflows:write",
    "start_run": "runs:write",
    "cancel_run": "runs:write",
    "signal_run": "runs:write",
    "replay_run": "runs:write",
    "list_runs": "runs:read",
    "get_run": "runs:read",
    "run_events": "runs:read",
    "run_logs": "runs:read",
    "get_lineage": "runs:read",
    "node_history": "runs:read",
    "run_state_at": "runs:read",
    "diff_two_runs": "runs:read",
    "stream_run": "runs:read",
    "stream_all": "runs:read",
    "push_channel": "runs:read",
    "metrics_summary": "runs:read",
    "prometheus_metrics": "admin",
    "audit_run": "audit",
}
"""One table of who may do what, beside the guard that enforces it (the BOLA matrix test checks
every operation of the OpenAPI document against it)."""


def is_public(handler: BaseRouteHandler, path: str) -> bool:
    """Health, readiness and the OpenAPI document: they return no tenant data."""
    return bool(handler.opt.get(PUBLIC_OPT)) or path == "/schema" or path.startswith("/schema/")


def require_scope(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Guard: the caller's credential must carry the route's scope (``ROUTE_SCOPES``). A route
    that declares none is refused to everyone: forgetting to declare one fails closed."""
    if is_public(handler, connection.scope["path"]):
        return
    principal = connection.scope.get("user")
    if not isinstance(principal, Principal):
        raise Unauthenticated("no credential")
    needed = ROUTE_SCOPES.get(handler.handler_name)
    if needed is None:
        raise PermissionDeniedException(detail="this route declares no scope; it is closed")
    if not principal.may(needed):
        have = ", ".join(sorted(principal.scopes)) or "none"
        raise PermissionDeniedException(
            detail=f"this route needs the {needed!r} scope; the credential has: {have}"
        )


RUN_PATH_PARAMS: Final = ("run_id", "other_run_id")


async def require_own_runs(
    connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
) -> None:
    """Guard: a run named in the path must belong to the caller's tenant. Another tenant's run
    answers exactly as a run that does not exist (404 "no run <id>"): nothing is confirmed."""
    runs = [connection.path_params[name] for name in RUN_PATH_PARAMS if name in connection.path_params]
    principal = connection.scope.get("user")  # unset on public routes
    runtime = connection.app.state.get("runtime")  # unset until the lifespan starts
    if not runs or not isinstance(principal, Principal) or runtime is None or runtime.store is None:
        return  # no run named, a public route, or a starting service (its handler answers 503)
    known: dict[UUID, str] = connection.app.state.setdefault("run_tenants", {})
    for run_id in runs:
        tenant = known.get(run_id)
        if tenant is None:
            tenant = await runtime.store.run_tenant(run_id)
            if tenant is not None:  # a run's tenant never changes: remember it (bounded)
                if len(known) >= RUN_TENANTS_REMEMBERED:
                    known.clear()
                known[run_id] = tenant
        if tenant is not None and tenant != principal.tenant:
            raise problem(404, "Unknown run", f"no run {run_id}")  # as the handlers say it


def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    """The caller (``request.user``), for handlers that scope their queries to its tenant."""
    principal = request.user
    if not isinstance(principal, Principal):
        raise Unauthenticated("no credential")
    return principal
