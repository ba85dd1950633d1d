"""Named positions of log readers in ``flowledger.checkpoints``."""

from __future__ import annotations

from schemas.names import DB_SCHEMA
from service.infra.db import Conn


async def read_checkpoint(conn: Conn, name: str, schema: str = DB_SCHEMA) -> int:
    """The stored position of reader ``name`` (0 when it never stored one)."""
    value = await conn.fetchval(f'SELECT position FROM "{schema}".checkpoints WHERE name = $1', name)
    return int(value or 0)


async def write_checkpoint(conn: Conn, name: str, position: int, schema: str = DB_SCHEMA) -> None:
    """Store ``position`` for reader ``name`` (runs in the caller's transaction, if any)."""
    await conn.execute(
        f'INSERT INTO "{schema}".checkpoints (name, position) VALUES ($1, $2) '
        "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
        name,
        position,
    )
