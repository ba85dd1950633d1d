"""The installation row and the relay's session lock: the statements the relay and republish need
besides the event store's."""

from __future__ import annotations

from uuid import UUID

from service.infra.db import Conn


async def try_session_lock(conn: Conn, key: int) -> bool:
    """Take the session-level advisory lock ``key`` on ``conn`` if it is free (held until the
    session ends: one holder across every process sharing the database)."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))


async def installation_id(conn: Conn, schema: str) -> UUID | None:
    """The id this log's database was installed with (``flowledger.installation``)."""
    value = await conn.fetchval(f'SELECT id FROM "{schema}".installation')
    return value if value is None else UUID(str(value))


async def event_source(conn: Conn, schema: str) -> str | None:
    """``<installation id>/<schema>``: the ``Flowledger-Source`` that names this log on NATS."""
    installation = await installation_id(conn, schema)
    return None if installation is None else f"{installation}/{schema}"
