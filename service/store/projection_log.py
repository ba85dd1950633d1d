"""The log as the projection runners read it, and the positions and lag of every projection.

Every statement on ``checkpoints`` that projections need lives here (beside
``checkpoints.py``, which owns the plain read/write of a named position).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from projections.runner import PROJECTIONS, LogPage
from schemas.codec import to_typed
from schemas.envelope import EventEnvelope
from service.infra.db import Conn
from service.store.checkpoints import write_checkpoint
from service.store.event_store import EventStore


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
        last, count, events = await self.store.read_folded(after_position, limit, types)
        return LogPage(last, count, events)

    async def lock_checkpoint(self, conn: Conn, name: str) -> int:
        await conn.execute(self._sql_lock, name)
        return int(await conn.fetchval(self._sql_select, name))

    async def write_checkpoint(self, conn: Conn, name: str, position: int) -> None:
        await write_checkpoint(conn, name, position, self.store.schema)


class ShareLog(StoreLog):
    """``StoreLog`` whose pages hold only one share of the runs, up to a fixed position (what
    one process of a parallel rebuild folds; see ``EventStore.read_folded_share``)."""

    def __init__(self, store: EventStore, *, upto: int, share: int, shares: int) -> None:
        if not 0 <= share < shares:
            raise ValueError(f"share {share} is not one of 0..{shares - 1}")
        super().__init__(store)
        self.upto, self.share, self.shares = upto, share, shares

    async def read_page(self, after_position: int, limit: int, types: frozenset[str]) -> LogPage:
        last, count, events = await self.store.read_folded_share(
            after_position, limit, types, upto=self.upto, share=self.share, shares=self.shares
        )
        return LogPage(last, count, events)


@dataclass
class ProjectorStatus:
    name: str
    position: int = 0
    head: int = 0
    lag_events: int = 0
    lag_seconds: float = 0.0
    last_error: str | None = None
    rebuilding: bool = False


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
