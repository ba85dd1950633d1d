"""Every error the API answers is an RFC 9457 problem document (``application/problem+json``)
with a ``detail`` a person can act on; errors are translated here, once, at the boundary."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any
from uuid import UUID

import asyncpg
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.plugins.problem_details import ProblemDetailsException
from litestar.status_codes import HTTP_400_BAD_REQUEST, HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

log = structlog.get_logger(__name__)


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
    elif exc.status_code == 429:
        reset = (exc.headers or {}).get("RateLimit-Reset", "60")
        exc.headers = {**(exc.headers or {}), "Retry-After": str(max(1, int(reset)))}
        detail = f"too many requests with this credential; retry after {exc.headers['Retry-After']} s"
    phrase = HTTPStatus(exc.status_code).phrase
    return ProblemDetailsException(
        status_code=exc.status_code, title=phrase, detail=detail, extra=exc.extra, headers=exc.headers
    ).to_response(request)


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


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    HTTPException: _http_problem,
    asyncpg.DataError: _refused_value,
    Exception: _internal_error,
}
