"""``bench load`` against a service of its own: the scratch schema, stream, worker(s) and relay
of ``bench runs`` (reused as they are), runs enqueued the way ``POST .../runs`` enqueues them,
and every figure read from the scratch log."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from service.bench.load_cpu import service_pids
from service.bench.runs import TENANT, OurSide, Stalled, check_ours, our_side, raise_if_died, wait_until
from service.config import Settings
from service.runtime import running

POLL_S = 0.05


@dataclass(frozen=True)
class Window:
    finished: int
    events: int
    latencies_ms: tuple[float, ...]


class LocalTarget:
    """The bench's own service: starts runs with ``RunQueue.enqueue`` and measures in SQL."""

    label = "in-process service"

    def __init__(self, side: OurSide, pool: asyncpg.Pool, monitor: asyncpg.Connection) -> None:
        self._side = side
        self._pool = pool
        self._monitor = monitor
        self._s = f'"{side.schema}"'

    async def start_run(self, i: int) -> None:
        side = self._side
        await side.queue.enqueue(
            tenant=TENANT,
            workflow_id=side.workflow.workflow_id,
            workflow_version=side.workflow.version,
            inputs={"i": i},
        )

    def check_alive(self) -> None:
        raise_if_died(self._side.background)

    async def window(self, since: datetime, until: datetime) -> Window:
        s = self._s
        latencies = await self._monitor.fetch(
            f"""SELECT extract(epoch FROM f.recorded_at - q.recorded_at) * 1000 AS ms
                  FROM {s}.events f JOIN {s}.events q ON q.run_id = f.run_id AND q.type = 'run_queued'
                 WHERE f.type = 'run_finished' AND f.recorded_at >= $1 AND f.recorded_at < $2""",
            since,
            until,
        )
        events = await self._monitor.fetchval(
            f"SELECT count(*) FROM {s}.events WHERE recorded_at >= $1 AND recorded_at < $2", since, until
        )
        ms = tuple(float(r["ms"]) for r in latencies)
        return Window(len(ms), int(events), ms)

    async def unfinished(self) -> int:
        return int(
            await self._monitor.fetchval(f"SELECT count(*) FROM {self._s}.run_queue WHERE status <> 'ended'")
        )

    async def postgres_pids(self) -> list[int]:
        """The server processes of this database and PostgreSQL's own (WAL writer, checkpointer,
        ...): not the backends of other databases on the same server."""
        rows = await self._monitor.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() OR datname IS NULL"
        )
        return [int(r["pid"]) for r in rows]

    def service_pids(self) -> list[int] | None:
        return service_pids()

    async def drain(self, issued: int, stall_s: float) -> None:
        """Wait for every started run to finish and the relay to reach the log head; then check
        that every run succeeded and every event was relayed."""
        side = self._side
        done, last, changed = -1, 0, time.monotonic()
        while done < issued:
            self.check_alive()
            done = issued - await self.unfinished()
            if done != last:
                last, changed = done, time.monotonic()
            elif time.monotonic() - changed > stall_s:
                raise Stalled(f"no run finished for {stall_s:.0f} s ({done} of {issued})")
            await asyncio.sleep(POLL_S)
        head = await side.store.head_position()
        await wait_until(
            lambda: side.relay.status.published_position >= head,
            side.background,
            lambda: "the relay did not reach the log head",
        )
        await check_ours(self._pool, side.schema, issued, side.relay.status.published)


@contextlib.asynccontextmanager
async def local_target(
    settings: Settings, concurrency: int, processes: int, replicas: int = 1
) -> AsyncIterator[LocalTarget]:
    """A service of the bench's own (``processes`` 0: the worker in this process), as ``bench runs``
    starts it, on the configured (or embedded) PostgreSQL and NATS; its stream on ``replicas`` servers."""
    async with running(settings, relay=False, worker=False) as runtime:
        assert runtime.pool is not None and runtime.nats is not None and runtime.database_url is not None
        async with our_side(
            runtime.pool, runtime.nats, concurrency, "noop", runtime.database_url, processes, replicas
        ) as side:
            monitor = await asyncpg.connect(runtime.database_url)
            try:
                yield LocalTarget(side, runtime.pool, monitor)
            finally:
                await monitor.close()
