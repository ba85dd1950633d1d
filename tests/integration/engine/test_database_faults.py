"""The database misbehaves under a running engine: sessions dropped, a table gone for a while.

Each fault is done for real against PostgreSQL; afterwards appends, claims and
cancels must work again without a restart, and nothing may be lost.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import asyncpg

from schemas.events import RunQueued, RunStarted
from service.config import WorkerSettings
from service.engine.control import request_cancel
from service.store.event_store import EventStore, StoreClosed
from tests.helpers.engine_harness import engine_on
from tests.helpers.workflows import wf


async def _terminate(pool: asyncpg.Pool, where: str = "true") -> int:
    """Kill this database's other sessions matching ``where`` (as pg_terminate_backend does)."""
    async with pool.acquire() as conn:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE datname = current_database() AND pid <> pg_backend_pid() AND ({where})"
        )
    return int(killed)


def _delay_chain(workflow_id: str, *delays_ms: int) -> dict[str, Any]:
    """A linear workflow n0 -> n1 -> ... of delay nodes waiting ``delays_ms`` each."""
    ids = [f"n{i}" for i in range(len(delays_ms))]
    nodes = [{"id": n, "type": "delay", "config": {"ms": ms}} for n, ms in zip(ids, delays_ms, strict=True)]
    return wf(workflow_id, nodes, list(itertools.pairwise(ids)))


async def test_appends_go_on_after_the_committers_session_is_killed(
    pool: asyncpg.Pool, store: EventStore
) -> None:
    run = uuid.uuid4()
    await store.append(run, [RunQueued(workflow_version="v")], 0, tenant="t", workflow_id="wf")
    assert await _terminate(pool) >= 1
    await asyncio.sleep(0.5)  # the idle committer's connection is found dead and detached by the pool
    # The batch that meets the dead session fails (its caller may retry); the store goes on.
    async with asyncio.timeout(10):
        while True:
            try:
                await store.append(run, [RunStarted()], 1, tenant="t", workflow_id="wf")
                break
            except StoreClosed:
                raise
            except Exception:  # whatever asyncpg says about the dead session: the caller may retry
                await asyncio.sleep(0.05)
    assert [e.seq for e in await store.read_run(run)] == [0, 1]


async def test_the_worker_outlives_failing_claims(pool: asyncpg.Pool, schema: str) -> None:
    settings = WorkerSettings(lease_s=5, poll_s=0.05)
    async with engine_on(pool, schema, settings=settings) as engine:
        await engine.register(wf("steady", [{"id": "a", "type": "noop"}], []))
        async with pool.acquire() as conn:
            # Every claim fails while the queue table is away (an outage, as far as the worker sees).
            await conn.execute(f'ALTER TABLE "{schema}".run_queue RENAME TO run_queue_away')
            await asyncio.sleep(0.5)
            await conn.execute(f'ALTER TABLE "{schema}".run_queue_away RENAME TO run_queue')
        run = await engine.start("steady")
        events = await engine.wait_ended(run, timeout=15)
    assert events[-1].type == "run_finished" and events[-1].data.status == "succeeded"


async def test_a_cancel_still_reaches_a_running_node_after_the_listen_session_is_killed(
    pool: asyncpg.Pool, schema: str
) -> None:
    settings = WorkerSettings(lease_s=5, poll_s=0.2)
    async with engine_on(pool, schema, settings=settings) as engine:
        await engine.register(_delay_chain("long", 60_000, 0))
        run = await engine.start("long")
        await engine.wait_for(run, lambda events: events[-1].type in ("node_execute_before", "run_waiting"))
        channel = engine.queue.notify_channel
        assert await _terminate(pool, f"query LIKE 'LISTEN %{channel}%'") == 1
        await asyncio.sleep(1.5)  # the worker notices and listens again
        await request_cancel(engine.queue, run, "stop it")
        events = await engine.wait_ended(run, timeout=10)  # not after the 60 s node
    assert events[-1].type == "run_cancelled"


async def test_runs_interrupted_by_killed_sessions_resume_without_waiting_for_their_lease(
    pool: asyncpg.Pool, schema: str
) -> None:
    # A 60 s lease: a run handed back only when its lease expires could not end in time below.
    settings = WorkerSettings(lease_s=60, poll_s=0.1)
    async with engine_on(pool, schema, settings=settings) as engine:
        await engine.register(_delay_chain("chain", *[50] * 6))
        runs = [await engine.start("chain") for _ in range(20)]
        for _ in range(15):  # kill every session, again and again, while the runs execute
            await _terminate(pool)
            await asyncio.sleep(0.1)
        ended = await asyncio.gather(*[engine.wait_ended(run, timeout=30) for run in runs])
    assert all(events[-1].data.status == "succeeded" for events in ended)
    for events in ended:  # no node ran again once its result was recorded
        finished = [e.data.node_id for e in events if e.type == "node_execute_after"]
        assert len(finished) == len(set(finished)) == 6
