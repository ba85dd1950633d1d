"""``flowledger bench append``: the event store's append rate vs raw asyncpg on the same server.

Baseline table: the same columns and indexes as ``flowledger.events`` but no
trigger, hash chain, concurrency check or group commit: what asyncpg alone does.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from datetime import UTC, datetime

import asyncpg
from rich.progress import Progress

from schemas.events import Event, NodeExecuteBefore, RunQueued
from service.bench.report import Comparison, print_comparisons
from service.bench.scratch import scratch_schema
from service.config import Settings
from service.infra.db import create_pool
from service.runtime import running
from service.store.event_store import EventStore

BATCH = 100
BATCH_WRITERS = 8

_PLAIN_TABLE = """
CREATE TABLE "{s}".plain_events (
    global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE, run_id uuid NOT NULL, seq integer NOT NULL, type text NOT NULL,
    tenant text NOT NULL, workflow_id text NOT NULL, recorded_at timestamptz NOT NULL,
    schema_version smallint NOT NULL, prev_hash bytea, hash bytea NOT NULL, data json NOT NULL,
    UNIQUE (run_id, seq)
);
CREATE INDEX ON "{s}".plain_events (tenant, workflow_id, global_position);
"""
_PLAIN_INSERT = (
    'INSERT INTO "{s}".plain_events (event_id, run_id, seq, type, tenant, workflow_id, recorded_at, '
    "schema_version, prev_hash, hash, data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
)
_BODY = NodeExecuteBefore(node_id="step", node_type="noop")
_DATA = b'{"type":"node_execute_before","node_id":"step","node_type":"noop","attempt":1}'


def _plain_row(run_id: uuid.UUID, seq: int) -> tuple[object, ...]:
    digest = hashlib.sha256(os.urandom(8)).digest()
    return (
        uuid.uuid4(),
        run_id,
        seq,
        "node_execute_before",
        "bench",
        "bench-wf",
        datetime.now(UTC),
        1,
        None if seq == 0 else digest,
        digest,
        _DATA,
    )


async def _ours_batched(store: EventStore, total: int, progress: Progress) -> float:
    task = progress.add_task("flowledger: 100-event batches", total=total)
    per_writer = total // BATCH_WRITERS // BATCH

    async def writer() -> None:
        for _ in range(per_writer):
            events: list[Event] = [RunQueued(workflow_version="bench"), *([_BODY] * (BATCH - 1))]
            await store.append(uuid.uuid4(), events, 0, tenant="bench", workflow_id="bench-wf")
            progress.advance(task, BATCH)

    start = time.perf_counter()
    await asyncio.gather(*[writer() for _ in range(BATCH_WRITERS)])
    return per_writer * BATCH_WRITERS * BATCH / (time.perf_counter() - start)


async def _raw_batched(pool: asyncpg.Pool, schema: str, total: int, progress: Progress) -> float:
    task = progress.add_task("raw asyncpg: executemany of 100", total=total)
    per_writer = total // BATCH_WRITERS // BATCH
    sql = _PLAIN_INSERT.format(s=schema)

    async def writer() -> None:
        async with pool.acquire() as conn:
            for _ in range(per_writer):
                run = uuid.uuid4()
                await conn.executemany(sql, [_plain_row(run, seq) for seq in range(BATCH)])
                progress.advance(task, BATCH)

    start = time.perf_counter()
    await asyncio.gather(*[writer() for _ in range(BATCH_WRITERS)])
    return per_writer * BATCH_WRITERS * BATCH / (time.perf_counter() - start)


async def _ours_single(store: EventStore, total: int, tasks: int, progress: Progress) -> float:
    task = progress.add_task(f"flowledger: single events, {tasks} tasks", total=total)
    per_task = total // tasks

    async def writer() -> None:
        run = uuid.uuid4()
        await store.append(
            run, [RunQueued(workflow_version="bench")], 0, tenant="bench", workflow_id="bench-wf"
        )
        for seq in range(1, per_task):
            await store.append(run, [_BODY], seq, tenant="bench", workflow_id="bench-wf")
            progress.advance(task)

    start = time.perf_counter()
    await asyncio.gather(*[writer() for _ in range(tasks)])
    return per_task * tasks / (time.perf_counter() - start)


async def _raw_single(pool: asyncpg.Pool, schema: str, total: int, tasks: int, progress: Progress) -> float:
    task = progress.add_task(f"raw asyncpg: 1 INSERT per txn, {tasks} tasks", total=total)
    per_task = total // tasks
    sql = _PLAIN_INSERT.format(s=schema)

    async def writer() -> None:
        run = uuid.uuid4()
        for seq in range(per_task):
            async with pool.acquire() as conn:
                await conn.execute(sql, *_plain_row(run, seq))
            progress.advance(task)

    start = time.perf_counter()
    await asyncio.gather(*[writer() for _ in range(tasks)])
    return per_task * tasks / (time.perf_counter() - start)


async def bench_append(settings: Settings, events: int, tasks: int) -> None:
    single_events = max(tasks * 10, events // 5)
    async with running(settings, relay=False) as runtime:
        assert runtime.database_url is not None and runtime.pool is not None
        raw_pool = await create_pool(runtime.database_url, min_size=tasks, max_size=tasks)
        try:
            async with scratch_schema(runtime.pool) as schema:
                async with runtime.pool.acquire() as conn:
                    await conn.execute(_PLAIN_TABLE.format(s=schema))
                store = EventStore(runtime.pool, schema=schema)
                await store.start()
                try:
                    with Progress(transient=True) as progress:
                        # Alternate ours and raw so that drift on a shared machine hits both alike.
                        raw_b = await _raw_batched(raw_pool, schema, events, progress)
                        ours_b = await _ours_batched(store, events, progress)
                        raw_s = await _raw_single(raw_pool, schema, single_events, tasks, progress)
                        ours_s = await _ours_single(store, single_events, tasks, progress)
                finally:
                    await store.close()
        finally:
            await raw_pool.close()
    print_comparisons(
        "flowledger bench append",
        [
            Comparison("100-event batches, 8 writers", ours_b, raw_b, "asyncpg executemany", "ev/s", 0.85),
            Comparison(
                f"single-event appends, {tasks} tasks",
                ours_s,
                raw_s,
                f"asyncpg, {tasks}-conn pool, 1 INSERT/txn",
                "ev/s",
                4.0,
            ),
        ],
        [
            f"{events:,} events batched, {single_events:,} single; baseline table has the same columns "
            "and indexes as flowledger.events, no trigger/hash/concurrency check.",
        ],
    )
