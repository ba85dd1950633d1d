"""Runs every projection in the background, and rebuilds them on request."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from projections.runner import PROJECTIONS, Projection, ProjectionRunner, rebuild_all
from service.followers.gc_pause import collector_paused
from service.followers.parallel_rebuild import PARALLEL_FROM_EVENTS, default_workers, process_fold
from service.infra.listen import listen
from service.retry import Backoff
from service.store.event_store import EventStore
from service.store.projection_log import ProjectorStatus, StoreLog
from service.waiting import wait_set

log = structlog.get_logger(__name__)


@dataclass
class ProjectionService:
    """Keeps each read model caught up with the log (woken by the append notifications).

    A projection whose step fails records the error in its status and tries again
    with backoff (0.1 s doubling to 5 s, reset by a step that works).
    """

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
        backoff = Backoff(first_s=0.1, max_s=5.0)
        while True:
            try:
                async with self.store.pool.acquire() as conn:
                    applied = await runner.step(conn, access, self.batch)
                status.last_error = None
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                status.last_error = f"{type(exc).__name__}: {exc}"
                delay = backoff.next_delay()
                log.warning(
                    "projection_error",
                    projection=projection.name,
                    error=status.last_error,
                    retry_in_s=round(delay, 3),
                )
                await asyncio.sleep(delay)
                continue
            if applied == 0:
                self._wake.clear()
                await wait_set(self._wake, self.idle_poll_s)


async def rebuild_projections(
    pool: asyncpg.Pool,
    store: EventStore,
    names: list[str],
    on_progress: Any = None,
    batch: int = 10000,
    *,
    database_url: str | None = None,
    workers: int | None = None,
    parallel_from: int = PARALLEL_FROM_EVENTS,
) -> int:
    """Rebuild projections from position 0 (one read of the log) into shadow tables and swap them in.

    With ``database_url`` and a log of at least ``parallel_from`` events, the fold runs in
    ``workers`` processes (default: half the cores, at most 4), each folding a share of the runs.
    """
    workers = default_workers() if workers is None else workers
    fold = None
    if database_url is not None and workers > 1 and await store.head_position() >= parallel_from:
        fold = process_fold(store, database_url, workers)
    with collector_paused():
        async with pool.acquire() as conn:
            return await rebuild_all(
                conn,
                StoreLog(store),
                [PROJECTIONS[n] for n in names],
                schema=store.schema,
                batch=batch,
                on_progress=on_progress,
                fold=fold,
            )
