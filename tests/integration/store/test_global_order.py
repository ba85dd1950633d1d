"""The global-order guarantee: a tailing reader sees every committed event exactly once, in order."""

from __future__ import annotations

import asyncio
import random
import uuid

import asyncpg

from schemas.events import NodeExecuteBefore, RunQueued
from service.store.event_store import EventStore


async def test_tailing_reader_sees_each_event_once_in_order_under_concurrent_writers(
    pool: asyncpg.Pool, schema: str
) -> None:
    writers = [EventStore(pool, schema=schema) for _ in range(6)]  # one committer connection each
    for w in writers:
        await w.start()
    per_task_runs, events_per_run = 8, 12
    stop = asyncio.Event()
    seen: list[tuple[int, uuid.UUID, int]] = []

    async def write(store: EventStore, rng: random.Random) -> None:
        for _ in range(per_task_runs):
            run = uuid.uuid4()
            seq = 0
            while seq < events_per_run:
                n = rng.randint(1, 3)
                body = [RunQueued(workflow_version="v")] if seq == 0 else []
                body += [
                    NodeExecuteBefore(node_id=f"n{seq + i}", node_type="noop") for i in range(n - len(body))
                ]
                body = body[: events_per_run - seq]
                await store.append(run, body, seq, tenant="t", workflow_id="wf")
                seq += len(body)
                if rng.random() < 0.3:
                    await asyncio.sleep(0)

    async def write_in_caller_txn(rng: random.Random) -> None:
        # Writers that append inside their own transactions on their own connections,
        # holding the transaction open a little while: the classic way to commit out of order.
        store = writers[0]
        for _ in range(per_task_runs):
            async with pool.acquire() as conn, conn.transaction():
                await store.append_txn(
                    conn, uuid.uuid4(), [RunQueued(workflow_version="v")], 0, tenant="t", workflow_id="wf"
                )
                await asyncio.sleep(rng.random() * 0.01)

    async def tail() -> None:
        position = 0
        async with pool.acquire() as conn:
            while True:
                batch = await writers[0].read_all_conn(conn, position, 97)
                for e in batch:
                    seen.append((e.global_position, e.run_id, e.seq))
                    position = e.global_position
                if not batch:
                    if stop.is_set():
                        return
                    await asyncio.sleep(0.001)

    reader = asyncio.create_task(tail())
    tasks = [write(writers[i % len(writers)], random.Random(i)) for i in range(24)]
    tasks += [write_in_caller_txn(random.Random(100 + i)) for i in range(6)]
    await asyncio.gather(*tasks)
    stop.set()
    await reader
    for w in writers:
        await w.close()

    async with pool.acquire() as conn:
        stored = await conn.fetch(
            f'SELECT global_position, run_id, seq FROM "{schema}".events ORDER BY global_position'
        )
    expected = [(r[0], r[1], r[2]) for r in stored]
    assert len(expected) == 24 * per_task_runs * events_per_run + 6 * per_task_runs
    assert seen == expected  # every committed event, exactly once, in log order
    last_seq: dict[uuid.UUID, int] = {}
    for _, run, seq in seen:
        assert seq == last_seq.get(run, -1) + 1
        last_seq[run] = seq
