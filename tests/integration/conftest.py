"""Fixtures for integration tests that talk to the service over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import uvicorn

from service.api.app import create_app
from service.config import Settings
from service.infra.nats import connect_nats
from tests.conftest import Servers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serve_app(
    servers: Servers, *, own_database: bool = False, **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A real uvicorn server running the app on a free port, with its own JetStream stream.

    ``own_database``: a fresh database, so no other app's worker can take its runs.
    """
    port = _free_port()
    token = uuid.uuid4().hex[:8]
    database_url = servers.database_url
    if own_database:
        admin = await asyncpg.connect(servers.database_url)
        await admin.execute(f'CREATE DATABASE "app_{token}"')
        await admin.close()
        parts = urlsplit(servers.database_url)
        database_url = urlunsplit(parts._replace(path=f"/app_{token}"))
    settings = Settings(
        database_url=database_url,
        nats_url=servers.nats_url,
        http_port=port,
        nats_stream=f"API_{token}",  # its own stream: other logs on a shared NATS cannot interfere
        nats_subject_prefix=f"api{token}.events",
        **overrides,
    )
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(200):
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/ready")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            yield client
    finally:
        server.should_exit = True
        await task
        nc = await connect_nats(servers.nats_url)
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(settings.nats_stream)
        await nc.close()
        if own_database:
            admin = await asyncpg.connect(servers.database_url)
            await admin.execute(f'DROP DATABASE "app_{token}" WITH (FORCE)')
            await admin.close()


@pytest.fixture(scope="module")
async def api(servers: Servers) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_app(servers) as client:
        yield client
