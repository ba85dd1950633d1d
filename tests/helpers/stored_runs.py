"""Legal runs of workflow ``orders`` written into a real event log, and tampering with a stored row.

The audit tests write these runs through the event store; the CLI tests put them into a
database of their own (``write_orders``), because the CLI always works on schema ``flowledger``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg

from schemas.events import (
    Event,
    NodeExecuteAfter,
    NodeExecuteAfterData,
    NodeExecuteBefore,
    RunFinished,
    RunQueued,
    RunStarted,
)
from schemas.workflow import NodeSpec, WorkflowSpec, spec_version
from service.infra.db import create_pool
from service.infra.migrations import apply_migrations
from service.store.event_store import EventStore
from service.store.workflow_store import WorkflowStore

SPEC = WorkflowSpec(
    id="orders",
    nodes=[NodeSpec(id="fetch", type="noop"), NodeSpec(id="notify", type="noop")],
)
TENANT = "acme"
"""The tenant every stored run here belongs to."""

VERSION = spec_version(SPEC)


def orders_history(version: str = VERSION, *, finished: bool = True) -> list[list[Event]]:
    """A legal run in the batches a worker appends it in."""
    node: list[Event] = []
    for name in ("fetch", "notify"):
        node += [
            NodeExecuteBefore(node_id=name, node_type="noop"),
            NodeExecuteAfter(node_id=name, node_type="noop", status="succeeded", item_count=1),
            NodeExecuteAfterData(node_id=name, output={"node": name, "text": "naïve ✓"}),
        ]
    batches: list[list[Event]] = [
        [RunQueued(workflow_version=version, inputs={"order": 7}, node_count=2)],
        [RunStarted(worker_id="w1"), *node[:3]],
        node[3:],
    ]
    if finished:
        batches.append([RunFinished(status="succeeded", duration_ms=3.5)])
    return batches


async def append_run(
    store: EventStore, batches: list[list[Event]], *, workflow_id: str = "orders", run_id: UUID | None = None
) -> UUID:
    run_id = run_id or uuid.uuid4()
    seq = 0
    for batch in batches:
        await store.append(run_id, batch, seq, tenant=TENANT, workflow_id=workflow_id)
        seq += len(batch)
    return run_id


async def tamper_row(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, schema: str, run_id: UUID, seq: int
) -> None:
    """Change one stored body the way someone with table access would (trigger off, then on)."""
    table = f'"{schema}".events'
    async with conn.transaction():
        await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        status = await conn.execute(
            f"UPDATE {table} SET data = replace(data::text, 'w1', 'w2')::json WHERE run_id = $1 AND seq = $2",
            run_id,
            seq,
        )
        await conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
    assert status == "UPDATE 1"


@contextlib.asynccontextmanager
async def started_store(pool: asyncpg.Pool, schema: str) -> AsyncIterator[EventStore]:
    store = EventStore(pool, schema=schema)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def write_orders(url: str, runs: int = 0, tamper: tuple[UUID, int] | None = None) -> list[UUID]:
    """In the database at ``url`` (schema ``flowledger``, migrated here): write ``runs`` legal runs
    of ``orders`` (registered), or tamper with one stored event; returns the runs written, or
    (none written) every run of the log."""
    pool = await create_pool(url, min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
            if tamper is not None:
                await tamper_row(conn, "flowledger", *tamper)
        if runs:
            await WorkflowStore(pool).register(SPEC, tenant=TENANT)
        async with started_store(pool, "flowledger") as store:
            written = [await append_run(store, orders_history()) for _ in range(runs)]
            async with pool.acquire() as conn:
                ids = await conn.fetch("SELECT DISTINCT run_id FROM flowledger.events")
        return written or [r[0] for r in ids]
    finally:
        await pool.close()
