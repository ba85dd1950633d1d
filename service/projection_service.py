"""Runs every projection in the background and answers for their positions and lag."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from projections.runner import PROJECTIONS, LogPage, Projection, ProjectionRunner, rebuild_all
from schemas.codec import to_typed
from schemas.envelope import EventEnvelope
from service.checkpoints import write_checkpoint
from service.db import Conn
from service.event_store import EventStore
from service.listening import listen
from service.waiting import wait_set

log = structlog.get_logger(__name__)


class StoreLog:
    """``projections.runner.LogAccess`` over the event store and ``flowledger.checkpoints``."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        s = f'"{store.schema}"'
        self._sql_lock = (
            f"INSERT INTO {s}.checkpoints (name, position) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING"
        )
        self._sql_select = f"SELECT position FROM {s}.checkpoints WHERE name = $1 FOR UPDATE"

    async def read_events(self, conn: Conn, after_position: int, limit: int) -> list[EventEnvelope]:
        return [to_typed(e) for e in await self.store.read_all_conn(conn, after_position, limit)]

    async def read_page(self, after_position: int, limit: int, types: frozenset[str]) -> LogPage:
        last, count, events = await self.store.read_typed(after_position, limit, types)
        return LogPage(last, count, events)

    async def lock_checkpoint(self, conn: Conn, name: str) -> int:
        await conn.execute(self._sql_lock, name)
        return int(await conn.fetchval(self._sql_select, name))

    async def write_checkpoint(self, conn: Conn, name: str, position: int) -> None:
        await write_checkpoint(conn, name, position, self.store.schema)


@dataclass
class ProjectorStatus:
    name: str
    position: int = 0
    head: int = 0
    lag_events: int = 0
    lag_seconds: float = 0.0
    last_error: str | None = None
    rebuilding: bool = False


@dataclass
class ProjectionService:
    """Keeps each read model caught up with the log (woken by the append notifications)."""

    store: EventStore
    batch: int = 2000
    idle_poll_s: float = 0.5
    status: dict[str, ProjectorStatus] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def log(self) -> StoreLog:
        return StoreLog(self.store)

    async def run(self) -> None:
        listener = asyncio.create_task(
            listen(self.store.pool, {self.store.notify_channel: self._on_notify}, on_restored=self._wake.set),
            name="projections-listener",
        )
        tasks = [
            asyncio.create_task(self._run_one(p), name=f"projection:{p.name}") for p in PROJECTIONS.values()
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in [listener, *tasks]:
                t.cancel()
            for t in [listener, *tasks]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _run_one(self, projection: Projection) -> None:
        runner = ProjectionRunner(projection, schema=self.store.schema)
        status = self.status.setdefault(projection.name, ProjectorStatus(projection.name))
        access = self.log
        backoff = 0.1
        while True:
            try:
                async with self.store.pool.acquire() as conn:
                    applied = await runner.step(conn, access, self.batch)
                status.last_error = None
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                status.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("projection_error", projection=projection.name, error=status.last_error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if applied == 0:
                self._wake.clear()
                await wait_set(self._wake, self.idle_poll_s)


async def projection_status(conn: Conn, store: EventStore) -> list[ProjectorStatus]:
    """Position and lag (events, seconds) of every projection, read from the database."""
    s = f'"{store.schema}"'
    head_row = await conn.fetchrow(
        f"SELECT global_position, recorded_at FROM {s}.events ORDER BY global_position DESC LIMIT 1"
    )
    head = int(head_row["global_position"]) if head_row else 0
    head_at: datetime | None = head_row["recorded_at"] if head_row else None
    out = []
    for name in PROJECTIONS:
        position = int(
            await conn.fetchval(f"SELECT position FROM {s}.checkpoints WHERE name = $1", name) or 0
        )
        lag_seconds = 0.0
        if position < head and head_at is not None:
            first_pending = await conn.fetchval(
                f"SELECT recorded_at FROM {s}.events WHERE global_position > $1 ORDER BY global_position LIMIT 1",
                position,
            )
            if first_pending is not None:
                lag_seconds = max(0.0, (head_at - first_pending).total_seconds())
        out.append(ProjectorStatus(name, position, head, max(0, head - position), lag_seconds))
    return out


async def rebuild_projections(
    pool: asyncpg.Pool, store: EventStore, names: list[str], on_progress: Any = None, batch: int = 10000
) -> int:
    """Rebuild projections from position 0 (one read of the log) into shadow tables and swap them in."""
    async with pool.acquire() as conn:
        return await rebuild_all(
            conn,
            StoreLog(store),
            [PROJECTIONS[n] for n in names],
            schema=store.schema,
            batch=batch,
            on_progress=on_progress,
        )
