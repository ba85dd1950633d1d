"""Databases of a test's own on the test PostgreSQL server.

The service (as a process, or the CLI) always uses schema ``flowledger``, so a test
that must not share it with others isolates it by database instead of by schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg


def with_database(server_url: str, name: str) -> str:
    """``server_url`` pointing at database ``name`` (user, host, port and query kept)."""
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


async def _admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def scratch_database(server_url: str, prefix: str = "scratch") -> AsyncIterator[str]:
    """A new, empty database on the server of ``server_url`` (its URL); dropped, connections and all, on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    await _admin(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_url, name)
    finally:
        await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def scratch_database_sync(server_url: str, prefix: str = "scratch") -> Iterator[str]:
    """``scratch_database`` for a synchronous test (e.g. one driving the CLI through click's CliRunner,
    which runs its own event loop)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(server_url, name)
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
