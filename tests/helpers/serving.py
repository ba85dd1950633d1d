"""The app served for real: uvicorn on a free port of 127.0.0.1, and an httpx client for it.

``serve`` fails (with the last ``/ready`` answer or connection error) when the app never
becomes ready or its server stops; a test never runs against a service that is not up.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import httpx
import uvicorn
from litestar import Litestar

from service.api.app import create_app
from service.config import ALL_SCOPES, Settings
from service.infra.nats import connect_nats
from service.store.keys import KeyStore
from tests.helpers.databases import scratch_database
from tests.helpers.servers import Servers

READY_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _describe(response: httpx.Response) -> str:
    return f"{response.status_code} {response.text[:500]}"


async def wait_ready(
    client: httpx.AsyncClient, server: asyncio.Task[Any] | None = None, timeout: float = READY_TIMEOUT_S
) -> None:
    """Poll ``/ready`` until it answers 200; raise with the last answer (or error) if it never does.

    ``server``: the task serving the app; when it ends first, fail at once (it will never be ready).
    """
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        if server is not None and server.done():
            error = server.exception() if not server.cancelled() else None
            why = f"{error}; " if error else ""
            raise AssertionError(
                f"the server at {client.base_url} stopped before it was ready ({why}/ready said: {last})"
            )
        try:
            response = await client.get("/ready")
        except httpx.TransportError as exc:
            last = repr(exc)
        else:
            if response.status_code == 200:
                return
            last = _describe(response)
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{client.base_url}/ready did not answer 200 within {timeout:g} s; last: {last}"
            )
        await asyncio.sleep(0.05)


class ServerExited(Exception):
    """uvicorn gave up (it calls ``sys.exit``): the app's start-up failed, or the port was taken."""


async def _run(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit as exc:  # raised out of a task, it would end the test session's event loop
        raise ServerExited(f"uvicorn exited with status {exc.code} (its log says why)") from None


@contextlib.asynccontextmanager
async def serve(
    app: Litestar, port: int, *, ready_timeout: float = READY_TIMEOUT_S
) -> AsyncIterator[httpx.AsyncClient]:
    """Serve ``app`` with uvicorn (lifespan on) on ``127.0.0.1:port``; a client for it once ``/ready`` is 200."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="on", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(_run(server))
    ready = False
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            await wait_ready(client, task, ready_timeout)
            ready = True
            yield client
    finally:
        server.should_exit = True
        if ready:
            await task
        else:  # wait_ready has reported why
            with contextlib.suppress(ServerExited):
                await task


@contextlib.asynccontextmanager
async def serve_app(
    servers: Servers, *, own_database: bool = False, **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The service app (``create_app``) served on a free port, with a JetStream stream of its own.

    ``own_database``: a fresh database, so no other app's worker can take its runs.
    ``overrides``: further ``Settings`` fields, or other values for the stream name, subject prefix
    and ``home`` (the test session's by default).
    The client carries an admin key of the default tenant (``Authorization: Bearer``);
    ``api_key`` makes keys of other tenants or scopes for the same service.
    """
    async with contextlib.AsyncExitStack() as stack:
        database_url = servers.database_url
        if own_database:
            database_url = await stack.enter_async_context(scratch_database(database_url, prefix="app"))
        token = uuid.uuid4().hex[:8]
        port = free_port()
        defaults: dict[str, Any] = {
            "database_url": database_url,
            "nats_url": servers.nats_url,
            "http_port": port,
            "nats_stream": f"API_{token}",  # its own stream: other logs on a shared NATS cannot interfere
            "nats_subject_prefix": f"api{token}.events",
            "home": servers.home,
        }
        settings = Settings(**{**defaults, **overrides})
        stack.push_async_callback(delete_stream, servers.nats_url, settings.nats_stream)
        client = await stack.enter_async_context(serve(create_app(settings), port))
        assert settings.database_url is not None
        client.headers["Authorization"] = (
            f"Bearer {await api_key(settings.database_url, 'default', ALL_SCOPES)}"
        )
        client.database_url = settings.database_url  # type: ignore[attr-defined]  # for tests that make more keys
        yield client


async def api_key(database_url: str, tenant: str, scopes: Sequence[str]) -> str:
    """A new API key's token for ``tenant`` with ``scopes``, in the database at ``database_url``."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        _key, token = await KeyStore(pool).create(tenant=tenant, scopes=list(scopes), created_by="test")
    finally:
        await pool.close()
    return token


async def delete_stream(nats_url: str, name: str) -> None:
    """Delete JetStream stream ``name`` if it exists."""
    nc = await connect_nats(nats_url)
    try:
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(name)
    finally:
        await nc.close()


def auth_headers(client: httpx.AsyncClient) -> dict[str, str]:
    """The credential ``serve_app`` gave ``client``, for other clients of the same service
    (a WebSocket, a raw socket)."""
    return {"Authorization": client.headers["Authorization"]}


def cli_env(client: httpx.AsyncClient) -> dict[str, str]:
    """Environment for the ``flowledger`` client commands to reach ``client``'s service with its credential."""
    return {
        "FLOWLEDGER_API_URL": str(client.base_url),
        "FLOWLEDGER_TOKEN": client.headers["Authorization"].removeprefix("Bearer "),
    }


async def run_cli(client: httpx.AsyncClient, *args: str) -> tuple[int, str]:
    """Run the installed ``flowledger`` client command against ``client``'s service, with its
    credential and no other FLOWLEDGER_* setting; (exit code, stdout and stderr together)."""
    import os

    from tests.helpers.paths import FLOWLEDGER

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLEDGER_")}
    env.update(cli_env(client), FLOWLEDGER_LOG_LEVEL="warning")
    proc = await asyncio.create_subprocess_exec(
        FLOWLEDGER, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()
