"""A rebuild whose fold runs in worker processes (each a share of the runs) gives exactly the
views the live runners build, and a failing worker leaves the live views as they were."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import asyncpg
import pytest

from projections.runner import PROJECTIONS, ProjectionRunner
from projections.shadow_tables import indexes_of
from schemas.events import (
    Event,
    NodeError,
    NodeExecuteAfter,
    NodeExecuteAfterData,
    NodeExecuteBefore,
    NodeRetryScheduled,
    NodeSkipped,
    RunCancelled,
    RunFinished,
    RunQueued,
    RunResumed,
    RunStarted,
    RunWaiting,
)
from service.followers.parallel_rebuild import RebuildWorkerFailed
from service.followers.projection_service import rebuild_projections
from service.store.event_store import EventStore
from service.store.projection_log import StoreLog

ORDER = {"run_summaries": "run_id", "node_executions": "run_id, node_id"}


def _history(rng: random.Random) -> list[list[Event]]:
    """One run's events in appends: retries, failures, branches skipped, waits, cancels (one
    with a NUL PostgreSQL text cannot hold), runs left open, and events after the end."""
    parts: list[list[Event]] = [[RunQueued(workflow_version="v1", node_count=3)], [RunStarted(worker_id="t")]]
    for node in ("a", "b", "c"):
        shape = rng.choice(["ok", "retried", "failed", "skipped", "waits"])
        if shape == "skipped":
            parts.append([NodeSkipped(node_id=node, reason="not reached: no incoming edge was taken")])
            continue
        events: list[Event] = [NodeExecuteBefore(node_id=node, node_type="http")]
        if shape == "retried":
            error = NodeError(kind="http_status", message="503")
            events += [
                NodeExecuteAfter(node_id=node, node_type="http", status="failed", error=error),
                NodeRetryScheduled(node_id=node, attempt=1, next_attempt=2, delay_ms=10, error=error),
                NodeExecuteBefore(node_id=node, node_type="http", attempt=2),
            ]
        if shape == "waits":
            events += [
                RunWaiting(node_id=node, signal="go"),
                RunResumed(node_id=node, cause="signal", signal="go"),
            ]
        if shape == "failed":
            error = NodeError(kind="http", message="body: \x00 refused")
            events += [
                NodeExecuteAfter(node_id=node, node_type="http", status="failed", error=error),
                NodeExecuteAfterData(node_id=node),
            ]
            parts.append(events)
            parts.append([RunFinished(status="failed", error=f"node {node} failed")])
            break
        events += [
            NodeExecuteAfter(
                node_id=node, node_type="http", status="succeeded", duration_ms=rng.random() * 50
            ),
            NodeExecuteAfterData(
                node_id=node, output={"branch": rng.choice(["true", "false"])}, output_bytes=18
            ),
        ]
        parts.append(events)
    else:
        end = rng.random()
        if end < 0.1:
            return parts  # still running: written when the log ends
        if end < 0.2:
            parts.append([RunCancelled(reason="stop\x00now")])
        else:
            parts.append([RunFinished(status="succeeded")])
    if rng.random() < 0.1:
        # An event after the run's end (an illegal history): applied late, before the swap.
        parts.append([NodeSkipped(node_id="late", reason="after the end")])
    return parts


async def _fill(store: EventStore, runs: int) -> int:
    rng = random.Random(20261204)
    histories = [(uuid.uuid4(), rng.choice(["wf-a", "wf-b"]), _history(rng)) for _ in range(runs)]
    seqs = [0] * runs
    events = 0
    for step in range(max(len(h) for _, _, h in histories)):
        # Runs interleave in the log, as they do when many run at once.
        appends = []
        for i, (run, workflow, parts) in enumerate(histories):
            if step < len(parts):
                appends.append(store.append(run, parts[step], seqs[i], tenant="t", workflow_id=workflow))
                seqs[i] += len(parts[step])
                events += len(parts[step])
        await asyncio.gather(*appends)
    return events


async def _rows(conn: Any, schema: str) -> dict[str, list[dict[str, Any]]]:
    return {
        name: [dict(r) for r in await conn.fetch(f'SELECT * FROM "{schema}"."{name}" ORDER BY {order}')]
        for name, order in ORDER.items()
    }


async def _live(conn: Any, store: EventStore) -> dict[str, list[dict[str, Any]]]:
    log = StoreLog(store)
    for projection in PROJECTIONS.values():
        while await ProjectionRunner(projection, schema=store.schema).step(conn, log, limit=97):
            pass
    return await _rows(conn, store.schema)


@pytest.mark.parametrize("workers", [2, 3])
async def test_a_rebuild_in_worker_processes_equals_the_live_views(
    pool: asyncpg.Pool, store: EventStore, database_url: str, workers: int
) -> None:
    events = await _fill(store, 300)
    head = await store.head_position()
    async with pool.acquire() as conn:
        live = await _live(conn, store)
        assert len(live["run_summaries"]) == 300
        indexes = {name: await indexes_of(conn, store.schema, name) for name in ORDER}
    seen: list[int] = []
    position = await rebuild_projections(
        pool,
        store,
        sorted(PROJECTIONS),
        on_progress=seen.append,
        batch=50,
        database_url=database_url,
        workers=workers,
        parallel_from=0,
    )
    assert position == head
    assert sum(seen) >= events  # every event folded by some worker (plus the late ones applied)
    async with pool.acquire() as conn:
        assert await _rows(conn, store.schema) == live
        for name in ORDER:
            assert await indexes_of(conn, store.schema, name) == indexes[name]
            assert await StoreLog(store).lock_checkpoint(conn, name) == head
        # Text PostgreSQL cannot store is made storable by the workers too.
        assert await conn.fetchval(
            f'SELECT count(*) FROM "{store.schema}".run_summaries WHERE error = $1', "stop\ufffdnow"
        )


async def test_one_projection_in_worker_processes_and_events_appended_meanwhile(
    pool: asyncpg.Pool, store: EventStore, database_url: str
) -> None:
    await _fill(store, 120)
    rebuilding = asyncio.ensure_future(
        rebuild_projections(
            pool, store, ["node_executions"], batch=20, database_url=database_url, workers=2, parallel_from=0
        )
    )
    # Appended while the workers fold: applied under the checkpoint lock before the swap.
    late_run = uuid.uuid4()
    await store.append(
        late_run,
        [RunQueued(workflow_version="v1", node_count=1), NodeExecuteBefore(node_id="x", node_type="noop")],
        0,
        tenant="t",
        workflow_id="wf-late",
    )
    position = await rebuilding
    async with pool.acquire() as conn:
        rows = await conn.fetch(f'SELECT * FROM "{store.schema}".node_executions ORDER BY run_id, node_id')
        assert position == await store.head_position()
        log = StoreLog(store)
        fresh = f"node_executions_{uuid.uuid4().hex[:8]}"
        await conn.execute(
            f'CREATE TABLE "{store.schema}"."{fresh}" (LIKE "{store.schema}".node_executions INCLUDING ALL)'
        )
        runner = ProjectionRunner(PROJECTIONS["node_executions"], schema=store.schema, table=fresh)
        while await runner.step(conn, log, checkpoint=f"check-{fresh}"):
            pass
        expected = await conn.fetch(f'SELECT * FROM "{store.schema}"."{fresh}" ORDER BY run_id, node_id')
    assert [dict(r) for r in rows] == [dict(r) for r in expected]
    assert any(r["run_id"] == late_run for r in rows)


async def test_a_failing_worker_is_one_line_and_the_live_views_stay(
    pool: asyncpg.Pool, store: EventStore, database_url: str
) -> None:
    await _fill(store, 40)
    async with pool.acquire() as conn:
        live = await _live(conn, store)
    nowhere = database_url.rsplit("/", 1)[0] + f"/no_such_db_{uuid.uuid4().hex[:6]}"
    with pytest.raises(RebuildWorkerFailed) as failed:
        await rebuild_projections(
            pool, store, sorted(PROJECTIONS), database_url=nowhere, workers=2, parallel_from=0
        )
    message = str(failed.value)
    assert message.startswith("rebuild worker ") and "failed: " in message and "\n" not in message
    assert "no_such_db" in message
    async with pool.acquire() as conn:
        assert await _rows(conn, store.schema) == live
