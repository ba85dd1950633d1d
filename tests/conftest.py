"""Shared fixtures: real PostgreSQL and real NATS for every integration test.

With ``FLOWLEDGER_DATABASE_URL`` / ``FLOWLEDGER_NATS_URL`` set the tests use
those servers; otherwise they start the embedded default servers once per
session in a temporary ``FLOWLEDGER_HOME``. Each test gets its own Postgres
schema and its own JetStream stream, so tests never see each other's data.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from nats.aio.client import Client as NATS

from service.bench.scratch import scratch_schema
from service.infra.db import create_pool
from service.infra.nats import connect_nats, ensure_stream, stream_config
from service.store.event_store import EventStore
from tests.helpers.servers import Servers, StreamTarget

# One Hypothesis profile for the whole suite. Examples run against real PostgreSQL, NATS and
# HTTP servers whose timing follows the machine's load, so no per-example deadline; and the
# integration properties deliberately share one function-scoped fixture (a schema, a store, an
# app) across a test's examples, each example isolating itself (fresh run ids, its own
# workflow ids). Tests set only their own ``max_examples`` where it differs from the default.
settings.register_profile(
    "flowledger",
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
settings.load_profile("flowledger")


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    db_url = os.environ.get("FLOWLEDGER_DATABASE_URL")
    nats_url = os.environ.get("FLOWLEDGER_NATS_URL")
    home = Path(tempfile.mkdtemp(prefix="flowledger-test-"))
    started = []
    if not db_url or not nats_url:
        from service.infra.embedded import EmbeddedNats, EmbeddedPostgres

        if not db_url:
            pg = EmbeddedPostgres(home)
            db_url = pg.start()
            started.append(pg)
        if not nats_url:
            nats = EmbeddedNats(home)
            nats_url = nats.start()
            started.append(nats)
    try:
        yield Servers(db_url, nats_url, home)
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture(scope="session")
def database_url(servers: Servers) -> str:
    return servers.database_url


@pytest.fixture(scope="session")
def nats_url(servers: Servers) -> str:
    return servers.nats_url


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, min_size=2, max_size=40)
    yield p
    await p.close()


@pytest.fixture
async def schema(pool: asyncpg.Pool) -> AsyncIterator[str]:
    """A fresh, migrated schema for one test; dropped afterwards."""
    async with scratch_schema(pool, prefix="t") as name:
        yield name


@pytest.fixture
async def store(pool: asyncpg.Pool, schema: str) -> AsyncIterator[EventStore]:
    s = EventStore(pool, schema=schema)
    await s.start()
    yield s
    await s.close()


@pytest.fixture
async def nats_client(nats_url: str) -> AsyncIterator[NATS]:
    nc = await connect_nats(nats_url, name="flowledger-test")
    yield nc
    await nc.close()


@pytest.fixture
async def stream(nats_client: NATS) -> AsyncIterator[StreamTarget]:
    token = uuid.uuid4().hex[:10]
    target = StreamTarget(name=f"T_{token}", subject_prefix=f"t{token}.events")
    js = nats_client.jetstream()
    await ensure_stream(js, stream_config(target.name, target.subject_prefix))
    yield target
    await js.delete_stream(target.name)
