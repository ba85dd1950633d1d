"""Every error the API answers is an RFC 9457 problem document (``application/problem+json``)
with a ``detail`` a person can act on; errors are translated here, once, at the boundary."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Final
from uuid import UUID

import asyncpg
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.plugins.problem_details import ProblemDetailsException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_410_GONE,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from litestar.types import ExceptionHandlersMap

from schemas.api import ProblemDetails
from service.store.event_store import RunArchived

log = structlog.get_logger(__name__)

PROBLEM_JSON: Final = "application/problem+json"

PROBLEMS: Final[dict[int, str]] = {
    400: "The request is invalid: `detail` names the parameter or body field and what is wrong "
    "(`extra` lists each one when the request does not match this document)",
    401: "No credential, or one that is unknown, revoked, expired or malformed "
    "(send `Authorization: Bearer <API key or JWT>`)",
    403: "The credential lacks the scope this operation needs",
    404: "No such object for this tenant (another tenant's objects are answered the same way)",
    409: "The object's current state does not allow this request",
    413: "The request body is larger than the service accepts",
    415: "The request body's Content-Type is not one this operation reads",
    429: "Too many requests with this credential; retry after `Retry-After` seconds",
    500: "The service failed; the error was logged (retrying may help)",
    503: "The service is starting, a dependency is down, or the request took too long; retry later",
}
"""What each error status means, wherever it is declared (a route may say more)."""

AUTHENTICATED: Final = (401, 403, 429, 500, 503)
"""Every route behind a credential can answer these (the route guard, the rate limit, the
request time limit and a service still starting)."""


def problem_responses(*statuses: int | tuple[int, str], public: bool = False) -> dict[int, ResponseSpec]:
    """The ``responses`` of a route: each status it can answer besides its success, as a problem
    document (``application/problem+json``, schema ``ProblemDetails``).

    ``statuses``: the route's own (a ``(status, description)`` pair says what it means there);
    every route also declares 500 and 503, and one behind a credential (``public=False``) 401,
    403 and 429.
    """
    described = dict(s if isinstance(s, tuple) else (s, PROBLEMS[s]) for s in statuses)
    for status in (500,) if public else AUTHENTICATED:
        described.setdefault(status, PROBLEMS[status])
    return {
        status: ResponseSpec(
            data_container=ProblemDetails,
            media_type=PROBLEM_JSON,
            description=described[status],
            generate_examples=False,
        )
        for status in sorted(described)
    }


def problem(status_code: int, title: str, detail: str, **extra: Any) -> ProblemDetailsException:
    return ProblemDetailsException(status_code=status_code, title=title, detail=detail, extra=extra or None)


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Last resort: log the traceback, answer with a problem document (never a bare 500 page)."""
    log.exception("unhandled_error", path=request.url.path)
    return ProblemDetailsException(
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
        title="Internal error",
        detail="the service failed to handle this request; the error was logged",
    ).to_response(request)


UNREACHABLE: Final[tuple[type[Exception], ...]] = (
    ConnectionError,  # refused, reset, aborted: OSErrors, found along the exception's MRO
    TimeoutError,  # connecting took too long (the server or the network stalls)
    asyncpg.InterfaceError,  # a pooled connection whose session died
    asyncpg.InternalClientError,  # a session killed mid-operation
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # terminated, shutting down, cannot connect now
)
"""A connection to a dependency failed (PostgreSQL down or restarting, the network between)."""


def _dependency_unreachable(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Not this service's fault nor the caller's, and the same request can succeed in a moment
    (on this instance or another): a 503 with ``Retry-After``, and one log line, not a traceback."""
    log.warning("request_dependency_unreachable", path=request.url.path, error=repr(exc)[:300])
    return ProblemDetailsException(
        status_code=HTTP_503_SERVICE_UNAVAILABLE,
        title="Service unavailable",
        detail="a connection to the database (or another dependency) failed; retry later",
        headers={"Retry-After": "1"},
    ).to_response(request)


def _refused_value(request: Request[Any, Any, Any], exc: asyncpg.DataError) -> Response[dict[str, Any]]:
    """A value from the request that PostgreSQL cannot take (text with a NUL character, a number
    out of range): the caller's input, so a 400 naming it, not a 500."""
    message = str(exc)
    if "0x00" in message:
        message = "text values must not contain the NUL character (\\u0000)"
    log.warning("request_value_refused", path=request.url.path, error=str(exc))
    return ProblemDetailsException(
        status_code=HTTP_400_BAD_REQUEST, title="Value not accepted", detail=message
    ).to_response(request)


def _http_problem(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    if isinstance(exc, ProblemDetailsException):
        return exc.to_response(request)
    detail = exc.detail
    if exc.status_code == 404 and detail == "Not Found":
        malformed = _malformed_run_id(request.url.path)
        if malformed is not None:
            return ProblemDetailsException(
                status_code=HTTP_400_BAD_REQUEST,
                title="Bad run id",
                detail=f"{malformed!r} is not a valid run id (run ids are UUIDs)",
            ).to_response(request)
        detail = f"no route for {request.method} {request.url.path}; the API is described at /schema"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}; the API is described at /schema"
    elif isinstance(exc, ValidationException) and isinstance(exc.extra, list) and exc.extra:
        detail = "invalid request: " + "; ".join(_field_error(e) for e in exc.extra)
    elif exc.status_code == 429:
        reset = (exc.headers or {}).get("RateLimit-Reset", "60")
        exc.headers = {**(exc.headers or {}), "Retry-After": str(max(1, int(reset)))}
        detail = f"too many requests with this credential; retry after {exc.headers['Retry-After']} s"
    phrase = HTTPStatus(exc.status_code).phrase
    return ProblemDetailsException(
        status_code=exc.status_code, title=phrase, detail=detail, extra=exc.extra, headers=exc.headers
    ).to_response(request)


def _field_error(error: Any) -> str:
    """One entry of a validation error, naming the parameter or body field it concerns."""
    if not isinstance(error, dict):
        return str(error)
    message, key = error.get("message", "invalid"), error.get("key")
    source = getattr(error.get("source"), "value", error.get("source"))  # a ParamType, or a str
    if source == "body" or key in (None, "data"):
        return f"request body: {message}"
    return f"{source} parameter {key!r}: {message}"


def _malformed_run_id(path: str) -> str | None:
    """The path segment that stands where a run id belongs (after ``/v1/runs/`` or ``/diff/``)
    but is not a UUID: the route exists, only the id is wrong."""
    parts = path.strip("/").split("/")
    for index, part in enumerate(parts[:-1]):
        if (part == "diff" or parts[: index + 1] == ["v1", "runs"]) and parts[index + 1]:
            try:
                UUID(parts[index + 1])
            except ValueError:
                return parts[index + 1]
    return None


def _archived_run(request: Request[Any, Any, Any], exc: RunArchived) -> Response[dict[str, Any]]:
    """A run whose first events an archive took out of the log: gone from here, not an error."""
    return ProblemDetailsException(
        status_code=HTTP_410_GONE, title="Run archived", detail=str(exc)
    ).to_response(request)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    HTTPException: _http_problem,
    RunArchived: _archived_run,
    asyncpg.DataError: _refused_value,
    **dict.fromkeys(UNREACHABLE, _dependency_unreachable),
    Exception: _internal_error,
}
