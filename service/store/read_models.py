"""Queries over the read-model tables (run summaries, node executions): all their SQL in one place.

Nothing here scans the event log; a run whose summary the projector has not
written yet is folded from its own events (an indexed point read).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from projections import run_summaries
from projections.node_executions import NodeExecution
from projections.run_summaries import RunSummary
from schemas.codec import to_typed
from service.store.event_store import EventStore

RUN_STATUSES = ("queued", "running", "waiting", "succeeded", "failed", "cancelled")


class BadCursor(ValueError):
    """A pagination cursor that this service did not hand out."""


def encode_cursor(run_id: UUID | str) -> str:
    return base64.urlsafe_b64encode(UUID(str(run_id)).bytes).decode().rstrip("=")


def decode_cursor(cursor: str) -> UUID:
    try:
        return UUID(bytes=base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise BadCursor(
            f"cursor {cursor!r} is not one this API returned; start again without a cursor"
        ) from exc


def _summary(row: asyncpg.Record) -> RunSummary:
    data = dict(row)
    data["run_id"] = str(data["run_id"])
    return msgspec.convert(data, RunSummary)


def _execution(row: asyncpg.Record) -> NodeExecution:
    data = dict(row)
    data["run_id"] = str(data["run_id"])
    return msgspec.convert(data, NodeExecution)


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_cursor: str | None
    position: int | None = None
    """The log position the items reflect (the projection's checkpoint, read in the same snapshot)."""


class ReadModels:
    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.pool = store.pool
        s = f'"{store.schema}"'
        self._sql_summary = f"SELECT * FROM {s}.run_summaries WHERE run_id = $1"
        self._sql_list = (
            f"SELECT * FROM {s}.run_summaries WHERE tenant = $1 AND run_id < $2 "
            "AND ($3::text IS NULL OR workflow_id = $3) AND ($4::text IS NULL OR status = $4) "
            "ORDER BY run_id DESC LIMIT $5"
        )
        self._sql_checkpoint = f"SELECT position FROM {s}.checkpoints WHERE name = $1"
        self._sql_nodes = f"SELECT * FROM {s}.node_executions WHERE run_id = $1"
        self._sql_history = (
            f"SELECT * FROM {s}.node_executions WHERE tenant = $1 AND workflow_id = $2 AND node_id = $3 "
            "AND run_id < $4 ORDER BY run_id DESC LIMIT $5"
        )

    async def summary(self, run_id: UUID) -> RunSummary | None:
        """The run's summary; folded from its own events if the projector has not caught up."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(self._sql_summary, run_id)
        if row is not None:
            return _summary(row)
        events = await self.store.read_run(run_id)
        if not events:
            return None
        view: RunSummary | None = None
        for event in events:
            view = run_summaries.apply(view, to_typed(event))
        return view

    async def list_runs(
        self, *, tenant: str, workflow_id: str | None, status: str | None, limit: int, cursor: str | None
    ) -> Page:
        """Newest first. Run ids are UUIDv7 (time-ordered), so a page boundary never moves:
        new runs only ever appear before the first page."""
        before = decode_cursor(cursor) if cursor else UUID(int=(1 << 128) - 1)
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            position = await conn.fetchval(self._sql_checkpoint, run_summaries.NAME) or 0
            rows = await conn.fetch(self._sql_list, tenant, before, workflow_id, status, limit + 1)
        items = [_summary(r) for r in rows[:limit]]
        return Page(items, encode_cursor(items[-1].run_id) if len(rows) > limit else None, int(position))

    async def node_executions(self, run_id: UUID) -> list[NodeExecution]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self._sql_nodes, run_id)
        return [_execution(r) for r in rows]

    async def node_history(
        self, *, tenant: str, workflow_id: str, node_id: str, limit: int, cursor: str | None
    ) -> Page:
        before = decode_cursor(cursor) if cursor else UUID(int=(1 << 128) - 1)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self._sql_history, tenant, workflow_id, node_id, before, limit + 1)
        items = [_execution(r) for r in rows[:limit]]
        return Page(items, encode_cursor(items[-1].run_id) if len(rows) > limit else None)
