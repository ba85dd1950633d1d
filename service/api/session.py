"""Console sign-in and sign-out (``/v1/session``): trade a credential for the HttpOnly,
SameSite=Strict session cookie of ``session_cookie``, ask who is signed in, clear it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, Router, delete, get, post
from litestar.datastructures import Cookie
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody

from service.api.auth import ANONYMOUS, PUBLIC_OPT, Authenticator, Principal, bearer_token
from service.api.bodies import json_body
from service.api.contract import PUBLIC
from service.api.errors import problem, problem_responses
from service.api.session_cookie import SESSION_COOKIE, SessionSealer


class SignIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
    """An API key (``flk_...``) or an accepted JWT: what ``Authorization: Bearer`` would carry."""


class Session(msgspec.Struct, frozen=True):
    tenant: str
    scopes: list[str]
    actor: str
    expires_at: datetime | None
    """When the session cookie stops working (None: the request carried no session cookie)."""
    csrf_token: str | None
    """Send it as ``X-CSRF-Token`` with every POST/PUT/PATCH/DELETE made with the cookie."""


def _cookie(value: str, max_age: int, request: Request[Any, Any, Any]) -> Cookie:
    return Cookie(
        key=SESSION_COOKIE,
        value=value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _session_body(principal: Principal, sealer: SessionSealer | None, cookie: str | None) -> Session:
    return Session(
        tenant=principal.tenant,
        scopes=sorted(principal.scopes),
        actor=principal.actor,
        expires_at=sealer.expires_at(cookie) if sealer and cookie else None,
        csrf_token=sealer.csrf_token(cookie) if sealer and cookie else None,
    )


@post(
    "/session",
    status_code=200,
    summary="Sign in (the console): trade a credential for an HttpOnly session cookie",
    opt={PUBLIC_OPT: True},
    security=PUBLIC,
    before_request=json_body(SignIn),
    responses=problem_responses(
        400,
        (401, "The credential is not valid (the detail says why)"),
        (409, "The service runs without auth (`serve --no-auth`): there is nothing to sign in to"),
        413,
        415,
        429,
        503,
        public=True,
    ),
)
async def sign_in(request: Request[Any, Any, Any], data: JSONBody[SignIn]) -> Response[Session]:
    state = request.app.state
    authenticator: Authenticator | None = state.get("authenticator")
    sealer: SessionSealer | None = state.get("sessions")
    if not state.get("auth_enabled", True):
        raise problem(409, "Authentication is off", "this service runs without auth: no sign-in is needed")
    if authenticator is None or sealer is None:
        raise problem(503, "Service starting", "the service is still starting; sign in again in a moment")
    principal = await authenticator.principal(data.token.strip())
    cookie = sealer.seal(data.token.strip())
    return Response(
        _session_body(principal, sealer, cookie), cookies=[_cookie(cookie, sealer.ttl_s, request)]
    )


@get(
    "/session",
    summary="Who is signed in: tenant, scopes, actor, when the session expires and its CSRF token "
    "(204 when the request carries no credential at all)",
    opt={PUBLIC_OPT: True},
    security=PUBLIC,
    responses={
        204: ResponseSpec(data_container=None, description="Nobody is signed in: no cookie, no header"),
        **problem_responses(
            (401, "The credential sent is not valid (an expired session: sign in again)"),
            (403, "The session cookie came from another origin"),
            503,
            public=True,
        ),
    },
)
async def get_session(request: Request[Any, Any, Any]) -> Response[Session | None]:
    """Public, so that a page can ask "am I signed in?" without an error when it is not; a
    credential that is sent is checked exactly as on any other route."""
    state = request.app.state
    if not state.get("auth_enabled", True):
        return Response(_session_body(ANONYMOUS, None, None))
    token = bearer_token(request)
    if token is None:
        return Response(None, status_code=204)
    authenticator: Authenticator | None = state.get("authenticator")
    if authenticator is None:
        raise problem(503, "Service starting", "the service is still starting; ask again in a moment")
    principal = await authenticator.principal(token)
    cookie = None if request.headers.get("authorization") else request.cookies.get(SESSION_COOKIE)
    return Response(_session_body(principal, state.get("sessions"), cookie))


@delete(
    "/session",
    summary="Sign out: the session cookie is cleared",
    opt={PUBLIC_OPT: True},
    security=PUBLIC,
    responses=problem_responses(public=True),
    response_cookies=[
        Cookie(key=SESSION_COOKIE, value="", max_age=0, path="/", httponly=True, samesite="strict")
    ],
)
async def sign_out() -> None:
    return None


def session_router() -> Router:
    return Router(path="/v1", route_handlers=[sign_in, get_session, sign_out])
