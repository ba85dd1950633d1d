"""Throw-away Postgres schemas and JetStream streams for benchmarks (removed afterwards)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from nats.aio.client import Client as NATS

from service.config import ALL_SCOPES
from service.infra.migrations import apply_migrations
from service.infra.nats import ensure_stream, stream_config
from service.store.keys import KeyStore


@asynccontextmanager
async def scratch_schema(pool: asyncpg.Pool, prefix: str = "bench") -> AsyncIterator[str]:
    """A fresh, migrated schema (a log of its own), dropped on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    async with pool.acquire() as conn:
        await apply_migrations(conn, schema=name)
    try:
        yield name
    finally:
        async with pool.acquire() as conn:
            await conn.execute(f'DROP SCHEMA "{name}" CASCADE')


@asynccontextmanager
async def scratch_stream(nc: NATS, label: str, replicas: int = 1) -> AsyncIterator[tuple[str, str]]:
    """A fresh stream on ``replicas`` servers of the cluster: yields (stream name, subject prefix)."""
    token = uuid.uuid4().hex[:10]
    name, prefix = f"BENCH_{label}_{token}", f"bench{token}.{label.lower()}"
    js = nc.jetstream()
    await ensure_stream(js, stream_config(name, prefix, replicas=replicas))
    try:
        yield name, prefix
    finally:
        await js.delete_stream(name)


async def admin_token(database_url: str, tenant: str = "default") -> str:
    """A key of ``tenant`` with every scope, made for a benchmark's own service (auth stays on:
    what is measured is what users get)."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        _key, token = await KeyStore(pool).create(tenant=tenant, scopes=list(ALL_SCOPES), created_by="bench")
    finally:
        await pool.close()
    return token
