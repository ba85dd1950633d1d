"""The scheduler against real PostgreSQL, on a test's own schema: a pass that dies between
starting a run and its commit starts no second run when repeated; schedulers racing on the same
due schedules start each fire time once; an outage (a table gone, sessions killed) only delays it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from service.engine.scheduler import Scheduler
from service.store.schedules import ScheduleStore, StoredSchedule
from tests.helpers.engine_harness import Engine, engine_on
from tests.helpers.workflows import wf


@pytest.fixture
async def engine(pool: asyncpg.Pool, schema: str) -> AsyncIterator[Engine]:
    async with engine_on(pool, schema, worker=False) as e:
        await e.register(wf("tick", [{"id": "a", "type": "noop"}], []))
        yield e


def _scheduler(engine: Engine, schema: str, **kw: Any) -> Scheduler:
    return Scheduler(ScheduleStore(engine.store.pool, schema=schema), engine.queue, engine.workflows, **kw)


async def _every_second(engine: Engine, schema: str, *, due_s_ago: int) -> StoredSchedule:
    """A schedule every 1 s (overlap allow, catch-up all) that has been due for ``due_s_ago`` s."""
    now = datetime.now(UTC).replace(microsecond=0)
    return await ScheduleStore(engine.store.pool, schema=schema).create(
        tenant="default",
        workflow_id="tick",
        cron=None,
        every="1s",
        timezone="UTC",
        inputs={"n": 1},
        overlap="allow",
        catchup="all",
        next_fire_at=now - timedelta(seconds=due_s_ago),
        created_by="test",
    )


async def _keys(pool: asyncpg.Pool, schema: str) -> Counter[str]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(f'SELECT idempotency_key FROM "{schema}".run_queue')
    return Counter(r[0] for r in rows)


class Crash(Exception):
    pass


async def test_a_pass_that_dies_before_its_commit_starts_no_second_run(engine: Engine, schema: str) -> None:
    pool = engine.store.pool
    await _every_second(engine, schema, due_s_ago=3)
    dying = _scheduler(engine, schema)

    async def crash(*_args: Any, **_kw: Any) -> None:
        raise Crash  # the runs are queued (their own commits), the schedule is not advanced

    dying.schedules.advance_txn = crash  # type: ignore[method-assign]
    with pytest.raises(Crash):
        await dying.fire_due()
    first = await _keys(pool, schema)
    assert len(first) >= 4 and set(first.values()) == {1}  # 3 s late, every second: 4 fire times or more
    assert dying.started == len(first)

    survivor = _scheduler(engine, schema)
    assert await survivor.fire_due() == 1
    keys = await _keys(pool, schema)
    assert set(keys.values()) == {1}, keys  # the repeated fire times found their runs: no double
    assert set(first) <= set(keys)
    assert survivor.started == len(keys) - len(first)  # only fire times that came since


async def test_racing_schedulers_start_each_fire_time_once(engine: Engine, schema: str) -> None:
    await _every_second(engine, schema, due_s_ago=60)
    schedulers = [_scheduler(engine, schema) for _ in range(4)]
    for _ in range(5):
        await asyncio.gather(*(s.fire_due() for s in schedulers))
    keys = await _keys(engine.store.pool, schema)
    assert set(keys.values()) == {1}, keys.most_common(3)
    assert len(keys) >= 61 and sum(s.started for s in schedulers) == len(keys)


async def _wait_more(pool: asyncpg.Pool, schema: str, than: int, timeout: float = 15) -> int:
    deadline = time.monotonic() + timeout
    while True:
        n = len(await _keys(pool, schema))
        if n > than:
            return n
        assert time.monotonic() < deadline, f"no new run after {timeout} s ({n} runs)"
        await asyncio.sleep(0.1)


async def test_the_scheduler_outlives_an_outage(engine: Engine, schema: str) -> None:
    pool = engine.store.pool
    await _every_second(engine, schema, due_s_ago=0)
    scheduler = _scheduler(engine, schema, max_sleep_s=1.0)
    task = asyncio.create_task(scheduler.run())
    try:
        n = await _wait_more(pool, schema, 0)
        async with pool.acquire() as conn:
            await conn.execute(f'ALTER TABLE "{schema}".schedules RENAME TO schedules_away')
            await asyncio.sleep(1.5)  # every pass fails meanwhile
            assert not task.done()
            await conn.execute(f'ALTER TABLE "{schema}".schedules_away RENAME TO schedules')
        n = await _wait_more(pool, schema, n)
        async with pool.acquire() as conn:  # every session of the database killed
            await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        await _wait_more(pool, schema, n + 1)
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    keys = await _keys(pool, schema)
    assert set(keys.values()) == {1}


async def test_a_run_the_database_refuses_does_not_stop_the_other_schedules(
    engine: Engine, schema: str
) -> None:
    pool = engine.store.pool
    good = await _every_second(engine, schema, due_s_ago=2)
    bad = await _every_second(engine, schema, due_s_ago=5)  # due first: it comes first in the pass
    scheduler = _scheduler(engine, schema)
    enqueue = engine.queue.enqueue

    async def refusing(**kw: Any) -> Any:
        if kw["idempotency_key"].startswith(f"schedule:{bad.schedule_id}:"):
            raise asyncpg.exceptions.CharacterNotInRepertoireError("refused")  # not a connection failure
        return await enqueue(**kw)

    scheduler.queue.enqueue = refusing  # type: ignore[method-assign]
    assert await scheduler.fire_due() == 2
    keys = await _keys(pool, schema)
    assert keys and all(k.startswith(f"schedule:{good.schedule_id}:") for k in keys)
    store = ScheduleStore(pool, schema=schema)
    for schedule in (good, bad):  # both moved on
        after = await store.get(schedule.schedule_id, tenant="default")
        assert after is not None and after.next_fire_at > datetime.now(UTC) - timedelta(seconds=1)
