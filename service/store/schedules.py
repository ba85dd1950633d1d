"""Schedules in ``flowledger.schedules``: every SQL statement of creating, listing, deleting and
firing them.

Firing: ``due_txn`` takes the due rows with ``FOR UPDATE OF s SKIP LOCKED`` inside the caller's
transaction (another instance's scheduler skips them meanwhile), and ``advance_txn`` moves each
one's ``next_fire_at`` on in that same transaction. Times are the database's clock, so instances
whose clocks differ agree on what is due.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
import uuid_utils.compat as uuid_compat

from schemas.names import DB_SCHEMA
from service.infra.db import Conn

_COLUMNS = (
    "schedule_id, tenant, workflow_id, cron, every, timezone, inputs, overlap, catchup, "
    "next_fire_at, last_fire_at, last_run_id, created_by, created_at"
)


@dataclass(frozen=True)
class StoredSchedule:
    schedule_id: UUID
    tenant: str
    workflow_id: str
    cron: str | None
    every: str | None
    timezone: str
    inputs: dict[str, Any]
    overlap: str
    catchup: str
    next_fire_at: datetime
    last_fire_at: datetime | None
    last_run_id: UUID | None
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class DueSchedule:
    schedule: StoredSchedule
    last_run_active: bool
    """The run this schedule started last has not ended (queued or running)."""


def _row(r: asyncpg.Record) -> StoredSchedule:
    return StoredSchedule(
        schedule_id=r["schedule_id"],
        tenant=r["tenant"],
        workflow_id=r["workflow_id"],
        cron=r["cron"],
        every=r["every"],
        timezone=r["timezone"],
        inputs=msgspec.json.decode(r["inputs"]),
        overlap=r["overlap"],
        catchup=r["catchup"],
        next_fire_at=r["next_fire_at"],
        last_fire_at=r["last_fire_at"],
        last_run_id=r["last_run_id"],
        created_by=r["created_by"],
        created_at=r["created_at"],
    )


def parse_schedule_id(text: str) -> UUID | None:
    """A schedule id from a URL, None when it cannot be one (answered like an unknown id)."""
    try:
        return UUID(text)
    except ValueError:
        return None


class ScheduleStore:
    """Schedules per tenant; another tenant's schedule is never found (as if it did not exist).
    ``notify_channel`` wakes the schedulers when a schedule is added."""

    def __init__(self, pool: asyncpg.Pool, *, schema: str = DB_SCHEMA) -> None:
        self.pool = pool
        self.notify_channel = f"{schema}_schedules"
        s = f'"{schema}"'
        self._sql_insert = (
            f"INSERT INTO {s}.schedules (schedule_id, tenant, workflow_id, cron, every, timezone, inputs, "
            "overlap, catchup, next_fire_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
            f"RETURNING {_COLUMNS}"
        )
        self._sql_get = f"SELECT {_COLUMNS} FROM {s}.schedules WHERE tenant = $1 AND schedule_id = $2"
        self._sql_list = (
            f"SELECT {_COLUMNS} FROM {s}.schedules WHERE tenant = $1 "
            "AND ($2::text IS NULL OR workflow_id = $2) AND ($3::uuid IS NULL OR schedule_id > $3) "
            "ORDER BY schedule_id LIMIT $4"
        )
        self._sql_delete = f"DELETE FROM {s}.schedules WHERE tenant = $1 AND schedule_id = $2"
        self._sql_due = (
            f"SELECT {', '.join('s.' + c.strip() for c in _COLUMNS.split(','))}, "
            "coalesce(q.status <> 'ended', false) AS last_run_active, clock_timestamp() AS now "
            f"FROM {s}.schedules s LEFT JOIN {s}.run_queue q ON q.run_id = s.last_run_id "
            "WHERE s.next_fire_at <= clock_timestamp() ORDER BY s.next_fire_at LIMIT $1 "
            "FOR UPDATE OF s SKIP LOCKED"
        )
        self._sql_advance = (
            f"UPDATE {s}.schedules SET next_fire_at = $2, last_fire_at = $3, last_run_id = $4 "
            "WHERE schedule_id = $1"
        )
        self._sql_until_next = (
            f"SELECT extract(epoch FROM min(next_fire_at) - clock_timestamp()) FROM {s}.schedules"
        )

    async def create(
        self,
        *,
        tenant: str,
        workflow_id: str,
        cron: str | None,
        every: str | None,
        timezone: str,
        inputs: dict[str, Any],
        overlap: str,
        catchup: str,
        next_fire_at: datetime,
        created_by: str,
    ) -> StoredSchedule:
        """Store a schedule (already checked) and wake every scheduler."""
        schedule_id = uuid_compat.uuid7()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                self._sql_insert,
                schedule_id,
                tenant,
                workflow_id,
                cron,
                every,
                timezone,
                msgspec.json.encode(inputs),
                overlap,
                catchup,
                next_fire_at,
                created_by,
            )
            await conn.execute("SELECT pg_notify($1, $2)", self.notify_channel, str(schedule_id))
        assert row is not None
        return _row(row)

    async def get(self, schedule_id: UUID, *, tenant: str) -> StoredSchedule | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(self._sql_get, tenant, schedule_id)
        return None if row is None else _row(row)

    async def listing(
        self, *, tenant: str, workflow_id: str | None = None, after: UUID | None = None, limit: int = 100
    ) -> list[StoredSchedule]:
        """The tenant's schedules (of one workflow), oldest first, after the schedule id ``after``."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self._sql_list, tenant, workflow_id, after, limit)
        return [_row(r) for r in rows]

    async def delete(self, schedule_id: UUID, *, tenant: str) -> bool:
        """Delete a schedule (its runs stay); False when the tenant has no such schedule."""
        async with self.pool.acquire() as conn:
            return await conn.execute(self._sql_delete, tenant, schedule_id) == "DELETE 1"

    async def seconds_until_next(self) -> float | None:
        """Seconds until the earliest next fire time of any schedule (negative: overdue); None: none."""
        async with self.pool.acquire() as conn:
            value = await conn.fetchval(self._sql_until_next)
        return None if value is None else float(value)

    async def due_txn(self, conn: Conn, limit: int) -> tuple[datetime | None, list[DueSchedule]]:
        """The database's time now and up to ``limit`` due schedules, locked until the caller's
        transaction ends (rows another transaction holds are skipped)."""
        rows = await conn.fetch(self._sql_due, limit)
        if not rows:
            return None, []
        return max(r["now"] for r in rows), [DueSchedule(_row(r), bool(r["last_run_active"])) for r in rows]

    async def advance_txn(
        self,
        conn: Conn,
        schedule_id: UUID,
        *,
        next_fire_at: datetime,
        last_fire_at: datetime | None,
        last_run_id: UUID | None,
    ) -> None:
        """Move a locked due schedule on, in the caller's transaction."""
        await conn.execute(self._sql_advance, schedule_id, next_fire_at, last_fire_at, last_run_id)
