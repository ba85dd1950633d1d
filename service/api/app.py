"""The HTTP API (Litestar): wiring in a lifespan, RFC 9457 problem details for every error."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import structlog
from litestar import Litestar, Request, get
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsException,
    ProblemDetailsPlugin,
)
from litestar.status_codes import (
    HTTP_503_SERVICE_UNAVAILABLE,
)

from schemas.api import Health, ReadyState
from service.api.auth import (
    PUBLIC_OPT,
    Authenticator,
    AuthMiddleware,
    provide_principal,
    require_own_runs,
    require_scope,
)
from service.api.bodies import MAX_DEPTH_STATE
from service.api.console import console_router
from service.api.contract import (
    COMPONENTS,
    PUBLIC,
    SECURITY,
    ContractPlugin,
    StrictStructSchemaPlugin,
    operation_id,
)
from service.api.errors import EXCEPTION_HANDLERS, problem_responses
from service.api.history import history_router
from service.api.limits import RequestTimeout, rate_limit
from service.api.metrics import metrics_router
from service.api.push import push_router
from service.api.queries import queries_router
from service.api.runs import runs_router
from service.api.schedules import schedules_router
from service.api.session import session_router
from service.api.session_cookie import SessionSealer
from service.config import Settings
from service.infra.listen import listen
from service.runtime import STARTUP_ERRORS, Runtime

log = structlog.get_logger(__name__)


@get(
    "/health",
    summary="Liveness: the process answers",
    sync_to_thread=False,
    opt={PUBLIC_OPT: True},
    security=PUBLIC,
    responses=problem_responses(public=True),
)
def health() -> Health:
    return Health(status="ok")


@get(
    "/ready",
    opt={PUBLIC_OPT: True},
    summary="Readiness: Postgres, migrations and NATS are up and the background tasks alive (else 503)",
    security=PUBLIC,
    responses=problem_responses(
        (503, "Not ready: `readiness` says what is up and what is not, `detail` what it waits for"),
        public=True,
    ),
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
        relay_position=relay.status.published_position if relay and relay.status.active else None,
        stream=r.stream,
    )
    if not r.ready:
        missing = [name for name in ("postgres", "migrations", "nats") if not getattr(r, name)]
        detail = r.error or f"waiting for: {', '.join(missing)}"
        raise ProblemDetailsException(
            status_code=HTTP_503_SERVICE_UNAVAILABLE,
            title="Service not ready",
            detail=detail,
            extra={"readiness": msgspec.to_builtins(state)},  # beside, not over, the problem's status
        )
    return state


def cors(origins: tuple[str, ...]) -> CORSConfig | None:
    """Browser pages on ``origins`` may call the API and follow its streams; none by default
    (no ``Access-Control-*`` header at all). Credentials (the console cookie) go only to origins
    named one by one, never to ``*``."""
    if not origins:
        return None
    return CORSConfig(
        allow_origins=list(origins),
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key"],
        allow_credentials="*" not in origins,
        expose_headers=["Retry-After", "WWW-Authenticate", "Location"],
        max_age=600,
    )


def begin_shutdown(app: Litestar) -> None:
    """The HTTP server is stopping: end live streams now, since it waits for every open
    connection before it runs the lifespan shutdown. Safe to call from a signal handler."""
    runtime: Runtime | None = getattr(app.state, "runtime", None)
    if runtime is not None and runtime.push is not None:
        asyncio.get_running_loop().call_soon_threadsafe(runtime.push.close_streams)


async def forget_revoked(runtime: Runtime, authenticator: Authenticator) -> None:
    """Drop a cached API key the moment any instance revokes it (NOTIFY), and every cached key
    when the LISTEN had to be restored (a revocation may have been missed meanwhile)."""
    assert runtime.pool is not None

    def revoked(_conn: object, _pid: int, _channel: str, key_id: object) -> None:
        authenticator.forget(str(key_id))

    await listen(runtime.pool, {runtime.keys.notify_channel: revoked}, on_restored=authenticator.forget)


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
                if settings.auth.enabled:
                    app.state.sessions = SessionSealer(
                        await runtime.secret_key(), settings.auth.session_ttl_s
                    )
                    authenticator = app.state.authenticator = Authenticator(runtime.keys, settings.auth)
                    background.append(asyncio.create_task(forget_revoked(runtime, authenticator)))
                log.info("service_ready", http=f"http://{settings.http_host}:{settings.http_port}")
            except STARTUP_ERRORS as exc:
                runtime.readiness.error = str(exc)
                log.error("startup_failed", error=str(exc))
                if on_fatal is not None:
                    on_fatal(str(exc))

        background: list[asyncio.Task[None]] = []
        task = asyncio.create_task(bootstrap(), name="bootstrap")
        try:
            yield
        finally:
            for pending in [task, *background]:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending
            await runtime.stop()

    return Litestar(
        route_handlers=[
            health,
            ready,
            runs_router(),
            schedules_router(),
            queries_router(),
            metrics_router(),
            push_router(),
            history_router(),
            session_router(),
            console_router(),
        ],
        lifespan=[lifespan],
        state=State({"auth_enabled": settings.auth.enabled, MAX_DEPTH_STATE: settings.max_json_depth}),
        middleware=[
            DefineMiddleware(RequestTimeout, limits=settings.limits),
            *([limit.middleware] if (limit := rate_limit(settings.auth)) else []),
            DefineMiddleware(AuthMiddleware, exclude=["^/schema"]),
        ],
        request_max_body_size=settings.limits.max_body_bytes,
        guards=[require_scope, require_own_runs],
        dependencies={"principal": Provide(provide_principal, sync_to_thread=False)},
        plugins=[ProblemDetailsPlugin(ProblemDetailsConfig()), ContractPlugin(), StrictStructSchemaPlugin()],
        exception_handlers=EXCEPTION_HANDLERS,
        cors_config=cors(settings.cors_origins),
        openapi_config=OpenAPIConfig(
            title="Flowledger",
            version="0.1.0",
            path="/schema",
            components=COMPONENTS,
            security=SECURITY,
            operation_id_creator=operation_id,
        ),
        logging_config=None,
    )
