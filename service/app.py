"""The HTTP API (Litestar): wiring in a lifespan, RFC 9457 problem details for every error."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
import structlog
from litestar import Litestar, Request, Response, get
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsException,
    ProblemDetailsPlugin,
)
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from service.api_history import history_router
from service.api_metrics import metrics_router
from service.api_push import push_router
from service.api_queries import queries_router
from service.api_runs import runs_router
from service.config import Settings
from service.runtime import STARTUP_ERRORS, Runtime

log = structlog.get_logger(__name__)


class Health(msgspec.Struct):
    status: str


class ReadyState(msgspec.Struct):
    status: str
    postgres: bool
    migrations: bool
    nats: bool
    relay_active: bool
    relay_position: int


@get("/health", summary="Liveness: the process answers", sync_to_thread=False)
def health() -> Health:
    return Health(status="ok")


@get(
    "/ready",
    summary="Readiness: Postgres, migrations and NATS are up and the background tasks alive (else 503)",
)
async def ready(request: Request[Any, Any, Any]) -> ReadyState:
    runtime: Runtime = request.app.state.runtime
    r = await runtime.live_readiness()
    relay = runtime.relay
    state = ReadyState(
        status="ready" if r.ready else ("unavailable" if runtime.readiness.ready else "starting"),
        postgres=r.postgres,
        migrations=r.migrations,
        nats=r.nats,
        relay_active=bool(relay and relay.status.active),
        relay_position=relay.status.published_position if relay else 0,
    )
    if not r.ready:
        missing = [name for name in ("postgres", "migrations", "nats") if not getattr(r, name)]
        detail = r.error or f"waiting for: {', '.join(missing)}"
        raise ProblemDetailsException(
            status_code=HTTP_503_SERVICE_UNAVAILABLE,
            title="Service not ready",
            detail=detail,
            extra=msgspec.to_builtins(state),
        )
    return state


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


def begin_shutdown(app: Litestar) -> None:
    """The HTTP server is stopping: end live streams now, since it waits for every open
    connection before it runs the lifespan shutdown. Safe to call from a signal handler."""
    runtime: Runtime | None = getattr(app.state, "runtime", None)
    if runtime is not None and runtime.push is not None:
        asyncio.get_running_loop().call_soon_threadsafe(runtime.push.close_streams)


def create_app(settings: Settings, on_fatal: Callable[[str], None] | None = None) -> Litestar:
    """The service app. Dependencies start in the background so ``/ready`` can say 503 meanwhile;
    a start-up failure is logged as one line and reported through ``on_fatal``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime = Runtime(settings)
        app.state.runtime = runtime

        async def bootstrap() -> None:
            try:
                await runtime.start()
                log.info("service_ready", http=f"http://{settings.http_host}:{settings.http_port}")
            except STARTUP_ERRORS as exc:
                runtime.readiness.error = str(exc)
                log.error("startup_failed", error=str(exc))
                if on_fatal is not None:
                    on_fatal(str(exc))

        task = asyncio.create_task(bootstrap(), name="bootstrap")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await runtime.stop()

    return Litestar(
        route_handlers=[
            health,
            ready,
            runs_router(),
            queries_router(),
            metrics_router(),
            push_router(),
            history_router(),
        ],
        lifespan=[lifespan],
        plugins=[ProblemDetailsPlugin(ProblemDetailsConfig())],
        exception_handlers={
            HTTPException: _http_problem,
            asyncpg.DataError: _refused_value,
            Exception: _internal_error,
        },
        openapi_config=OpenAPIConfig(title="Flowledger", version="0.1.0", path="/schema"),
        logging_config=None,
    )


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
    return ProblemDetailsException(
        status_code=exc.status_code, title=exc.detail, detail=detail, extra=exc.extra
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
