"""Applies the plain-SQL migrations under ``infra/postgres`` in order, once each.

The files ship inside the wheel (``service/_infra/postgres``); in a source
checkout they are read from ``infra/postgres`` directly.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import asyncpg
import structlog

from schemas.names import DB_SCHEMA
from service.infra.db import Conn

log = structlog.get_logger(__name__)

# Any constant shared by all instances: concurrent start-ups apply migrations one at a time.
_MIGRATION_LOCK_KEY = 0x466C6F774D696772  # "FlowMigr"


class MigrationError(RuntimeError):
    """A migration file failed or an applied one was changed afterwards."""


def migrations_dir() -> Path:
    """Where the SQL files are: inside the installed package, else the source tree."""
    service_dir = Path(__file__).resolve().parent.parent
    packaged = service_dir / "_infra" / "postgres"
    if packaged.is_dir():
        return packaged
    return service_dir.parent / "infra" / "postgres"


def migration_files() -> list[Path]:
    files = sorted(migrations_dir().glob("*.sql"))
    if not files:
        raise MigrationError(f"no migration files found in {migrations_dir()}")
    return files


async def apply_migrations(conn: Conn, schema: str = DB_SCHEMA, *, until: str | None = None) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied now.

    ``schema`` other than ``flowledger`` rewrites the schema name (tests use one
    schema per test). Each file runs in its own transaction with its record.
    ``until``: stop after the file of that name (a test of a later migration on an older log).
    """
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
            " name text PRIMARY KEY, sha256 text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        rows = await conn.fetch(f'SELECT name, sha256 FROM "{schema}".schema_migrations')
        done = {r["name"]: r["sha256"] for r in rows}
        files = migration_files()
        if until is not None:
            files = files[: [f.name for f in files].index(until) + 1]
        for path in files:
            sql = path.read_text()
            if schema != DB_SCHEMA:
                sql = sql.replace("flowledger.", f'"{schema}".').replace(
                    "SCHEMA IF NOT EXISTS flowledger", f'SCHEMA IF NOT EXISTS "{schema}"'
                )
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if path.name in done:
                if done[path.name] != digest:
                    raise MigrationError(
                        f"migration {path.name} was changed after it was applied; add a new migration instead"
                    )
                continue
            try:
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        f'INSERT INTO "{schema}".schema_migrations (name, sha256) VALUES ($1, $2)',
                        path.name,
                        digest,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {path.name} failed: {exc}") from exc
            log.info("migration_applied", name=path.name, schema=schema)
            applied_now.append(path.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)
    return applied_now
