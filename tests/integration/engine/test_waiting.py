"""Waiting nodes with a real engine on a real database: ``wait`` + signals, durable ``delay``
and retry timers, parked runs (no lease, no slot), and ``workflow`` nodes (child runs)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from schemas.events import NodeExecuteAfter, NodeExecuteAfterData, NodeRetryScheduled, RunResumed, RunWaiting
from service.config import WorkerSettings
from service.engine.control import NotWaitingForSignal, RunAlreadyEnded, request_cancel, send_signal
from tests.helpers.engine_harness import Engine, engine_on

SETTINGS = WorkerSettings(lease_s=5, poll_s=0.1, park_after_s=0.5)


@pytest.fixture
async def engine(pool: asyncpg.Pool, schema: str) -> AsyncIterator[Engine]:
    async with engine_on(pool, schema, settings=SETTINGS) as e:
        yield e


async def queue_row(engine: Engine, run_id: UUID) -> asyncpg.Record:
    schema = engine.queue.store.schema
    async with engine.store.pool.acquire() as conn:
        row = await conn.fetchrow(
            f'SELECT status, lease_owner, lease_expires_at, wake_at FROM "{schema}".run_queue WHERE run_id = $1',
            run_id,
        )
    assert row is not None
    return row


async def wait_parked(engine: Engine, run_id: UUID, timeout: float = 10.0) -> asyncpg.Record:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = await queue_row(engine, run_id)
        if row["status"] == "waiting":
            return row
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} was not parked: {dict(await queue_row(engine, run_id))}")


def approval(timeout_ms: int | None = None) -> dict[str, Any]:
    wait: dict[str, Any] = {"signal": "approve"}
    if timeout_ms is not None:
        wait["timeout_ms"] = timeout_ms
    return {
        "id": "approval",
        "nodes": [
            {"id": "draft", "type": "transform", "config": {"expression": "inputs.amount"}},
            {"id": "approve", "type": "wait", "config": wait},
            {"id": "book", "type": "transform", "config": {"expression": "nodes.approve.by"}},
        ],
        "edges": [{"from": "draft", "to": "approve"}, {"from": "approve", "to": "book"}],
    }


def outputs(events: list[Any]) -> dict[str, Any]:
    return {e.data.node_id: e.data.output for e in events if isinstance(e.data, NodeExecuteAfterData)}


async def test_a_signal_resumes_a_parked_run_with_its_payload_as_the_output(engine: Engine) -> None:
    await engine.register(approval())
    run = await engine.start("approval", {"amount": 120})
    row = await wait_parked(engine, run)
    assert row["lease_owner"] is None and row["lease_expires_at"] is None and row["wake_at"] is None
    state = await engine.state(run)
    assert state.status == "waiting" and state.node("approve").signal == "approve"
    assert engine.worker is not None and run not in engine.worker.executors  # it holds no slot

    _before, resumed = await send_signal(engine.queue, run, "approve", {"by": "ada"}, "key:test")
    assert resumed == ["approve"]
    events = await engine.wait_ended(run)
    assert events[-1].data.status == "succeeded"
    assert outputs(events)["approve"] == {"by": "ada"}
    assert outputs(events)["book"] == "ada"
    (resume,) = [e.data for e in events if isinstance(e.data, RunResumed)]
    assert (resume.node_id, resume.cause, resume.signal, resume.actor) == (
        "approve",
        "signal",
        "approve",
        "key:test",
    )
    # No run_recovered: the run was parked and woken, not recovered from a crash.
    assert [e.type for e in events].count("run_recovered") == 0


async def test_a_signal_nobody_waits_for_is_refused_and_a_second_one_too(engine: Engine) -> None:
    await engine.register(approval())
    run = await engine.start("approval", {"amount": 1})
    await wait_parked(engine, run)
    with pytest.raises(NotWaitingForSignal, match=r"not waiting for signal 'reject'.*'approve'"):
        await send_signal(engine.queue, run, "reject", None, "key:test")
    await send_signal(engine.queue, run, "approve", {"by": "bob"}, "key:test")
    with pytest.raises((NotWaitingForSignal, RunAlreadyEnded)):
        await send_signal(engine.queue, run, "approve", {"by": "eve"}, "key:test")
    events = await engine.wait_ended(run)
    assert outputs(events)["approve"] == {"by": "bob"}
    with pytest.raises(RunAlreadyEnded):
        await send_signal(engine.queue, run, "approve", {"by": "eve"}, "key:test")


async def test_a_wait_times_out_and_fails_the_run(engine: Engine) -> None:
    await engine.register(approval(timeout_ms=600))
    run = await engine.start("approval", {"amount": 1})
    events = await engine.wait_ended(run)
    after = next(
        e.data for e in events if isinstance(e.data, NodeExecuteAfter) and e.data.node_id == "approve"
    )
    assert after.status == "failed" and after.error is not None and after.error.kind == "wait_timeout"
    assert events[-1].data.status == "failed"
    assert 550 <= after.duration_ms < 5000


async def test_a_long_delay_parks_the_run_until_it_is_due(engine: Engine) -> None:
    await engine.register(
        {
            "id": "sleepy",
            "nodes": [{"id": "nap", "type": "delay", "config": {"ms": 1500}}, {"id": "then", "type": "noop"}],
            "edges": [{"from": "nap", "to": "then"}],
        }
    )
    started = time.monotonic()
    run = await engine.start("sleepy")
    row = await wait_parked(engine, run)
    waiting = next(e.data for e in await engine.events(run) if isinstance(e.data, RunWaiting))
    assert row["wake_at"] == waiting.wake_at
    events = await engine.wait_ended(run)
    assert time.monotonic() - started >= 1.4
    assert outputs(events)["nap"] == {"delayed_ms": 1500}
    assert events[-1].data.status == "succeeded"


async def test_a_retry_backoff_is_a_durable_timer(engine: Engine) -> None:
    await engine.register(
        {
            "id": "flaky",
            "nodes": [
                {
                    "id": "f",
                    "type": "fail",
                    "config": {"message": "not yet", "times": 1},
                    "retry": {"max_attempts": 2, "initial_backoff_ms": 1200},
                }
            ],
            "edges": [],
        }
    )
    run = await engine.start("flaky")
    await wait_parked(engine, run)  # the backoff is long: the run gives its slot back
    events = await engine.wait_ended(run)
    retry = next(e for e in events if isinstance(e.data, NodeRetryScheduled))
    second = next(e for e in events if e.type == "node_execute_before" and e.data.attempt == 2)
    assert retry.data.due_at is not None
    assert second.recorded_at >= retry.data.due_at
    assert events[-1].data.status == "succeeded"


def parent_spec(child_inputs: dict[str, Any], retry: dict[str, Any] | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {
        "id": "sub",
        "type": "workflow",
        "config": {"workflow_id": "child", "inputs": child_inputs},
    }
    if retry:
        node["retry"] = retry
    return {
        "id": "parent",
        "nodes": [node, {"id": "use", "type": "transform", "config": {"expression": "nodes.sub.double"}}],
        "edges": [{"from": "sub", "to": "use"}],
    }


CHILD = {
    "id": "child",
    "nodes": [
        {"id": "double", "type": "transform", "config": {"expression": "inputs.n"}},
    ],
    "edges": [],
}


async def test_a_workflow_node_runs_a_child_and_outputs_its_outputs(engine: Engine) -> None:
    await engine.register(CHILD)
    await engine.register(parent_spec({"n": {"$expr": "inputs.value"}}))
    run = await engine.start("parent", {"value": 21})
    events = await engine.wait_ended(run)
    assert events[-1].data.status == "succeeded", [e.type for e in events]
    waiting = next(e.data for e in events if isinstance(e.data, RunWaiting))
    assert waiting.child_run_id is not None
    child = await engine.state(UUID(waiting.child_run_id))
    assert child.status == "succeeded"
    assert (child.parent_run_id, child.parent_node_id) == (str(run), "sub")
    assert child.inputs == {"n": 21}
    assert outputs(events)["sub"] == {"double": 21}
    assert outputs(events)["use"] == 21


async def test_a_failed_child_fails_the_node_per_its_retry_policy(engine: Engine) -> None:
    await engine.register(
        {
            "id": "child",
            "nodes": [{"id": "x", "type": "fail", "config": {"message": "child broke"}}],
            "edges": [],
        }
    )
    await engine.register(parent_spec({}, retry={"max_attempts": 2, "initial_backoff_ms": 10}))
    run = await engine.start("parent")
    events = await engine.wait_ended(run, timeout=30)
    afters = [e.data for e in events if isinstance(e.data, NodeExecuteAfter) and e.data.node_id == "sub"]
    assert [a.status for a in afters] == ["failed", "failed"]
    assert all(a.error is not None and a.error.kind == "child_failed" for a in afters)
    assert "child broke" in (afters[0].error.message if afters[0].error else "")
    children = {e.data.child_run_id for e in events if isinstance(e.data, RunWaiting)}
    assert len(children) == 2  # one child per try
    assert events[-1].data.status == "failed"


async def test_cancelling_the_parent_cancels_the_child(engine: Engine) -> None:
    await engine.register(
        {"id": "child", "nodes": [{"id": "w", "type": "wait", "config": {"signal": "never"}}], "edges": []}
    )
    await engine.register(parent_spec({}))
    run = await engine.start("parent")
    events = await engine.wait_for(run, lambda es: any(isinstance(e.data, RunWaiting) for e in es))
    child_id = UUID(next(e.data.child_run_id for e in events if isinstance(e.data, RunWaiting)))
    await wait_parked(engine, child_id)
    await request_cancel(engine.queue, run, "no longer needed")
    events = await engine.wait_ended(run)
    assert events[-1].type == "run_cancelled"
    sub = next(e.data for e in events if isinstance(e.data, NodeExecuteAfter) and e.data.node_id == "sub")
    assert sub.error is not None and sub.error.kind == "cancelled"
    child_events = await engine.wait_ended(child_id)
    assert child_events[-1].type == "run_cancelled"
    assert "parent run" in (child_events[-1].data.reason or "")


async def test_a_cancel_ends_a_parked_wait(engine: Engine) -> None:
    await engine.register(approval())
    run = await engine.start("approval", {"amount": 1})
    await wait_parked(engine, run)
    await request_cancel(engine.queue, run, "changed my mind")
    events = await engine.wait_ended(run)
    assert events[-1].type == "run_cancelled"
    resumed = next(e.data for e in events if isinstance(e.data, RunResumed))
    assert resumed.cause == "halt"
    assert [e.data.node_id for e in events if e.type == "node_skipped"] == ["book"]


async def test_a_parent_cancelled_while_its_child_starts_never_leaves_the_child_behind(
    engine: Engine,
) -> None:
    await engine.register(
        {"id": "child", "nodes": [{"id": "w", "type": "wait", "config": {"signal": "never"}}], "edges": []}
    )
    await engine.register(parent_spec({}))
    parents = []
    for _ in range(12):
        run = await engine.start("parent")
        await engine.wait_for(run, lambda es: any(e.type == "node_execute_before" for e in es))
        await request_cancel(engine.queue, run, "changed my mind")  # as the child is being queued
        parents.append(run)
    for run in parents:
        assert (await engine.wait_ended(run))[-1].type == "run_cancelled"
    schema = engine.queue.store.schema
    async with engine.store.pool.acquire() as conn:
        children = [
            r[0]
            for r in await conn.fetch(
                f'SELECT run_id FROM "{schema}".run_queue WHERE workflow_id = $1', "child"
            )
        ]
    for child in children:  # every child that was queued was cancelled with its parent
        assert (await engine.wait_ended(child))[-1].type == "run_cancelled"


async def test_a_workflow_that_starts_itself_stops_at_the_depth_limit(engine: Engine) -> None:
    from service.engine.executor import MAX_RUN_DEPTH

    await engine.register(
        {
            "id": "itself",
            "nodes": [{"id": "again", "type": "workflow", "config": {"workflow_id": "itself"}}],
            "edges": [],
        }
    )
    root = await engine.start("itself")
    events = await engine.wait_ended(root, timeout=60)
    assert events[-1].data.status == "failed"
    error = events[-1].data.error or ""
    assert "child_failed" in error and len(error) < 2000  # quoted, not nested without end
    schema = engine.queue.store.schema
    async with engine.store.pool.acquire() as conn:
        count = await conn.fetchval(
            f'SELECT count(*) FROM "{schema}".run_queue WHERE workflow_id = $1', "itself"
        )
    assert count == MAX_RUN_DEPTH + 1
    deepest = await engine.state(root)
    assert deepest.depth == 0


async def test_a_child_queued_by_a_parent_that_died_before_waiting_is_cancelled_with_it(
    pool: asyncpg.Pool, schema: str
) -> None:
    """The parent's executor died after queueing the child and before recording run_waiting;
    the parent is then cancelled: its recovery finds the child by its key and cancels it."""
    from schemas.events import NodeExecuteBefore, RunStarted

    child_spec = {
        "id": "child",
        "nodes": [{"id": "w", "type": "wait", "config": {"signal": "never"}}],
        "edges": [],
    }
    async with engine_on(pool, schema, worker=False) as engine:
        await engine.register(child_spec)
        await engine.register(parent_spec({}))
        run = await engine.start("parent")
        (claim,) = [c for c in await engine.queue.claim("dead-worker", 10, 0.5) if c.run_id == run]
        await engine.store.append(
            run,
            [RunStarted(worker_id="dead-worker"), NodeExecuteBefore(node_id="sub", node_type="workflow")],
            1,
            tenant=claim.tenant,
            workflow_id="parent",
        )
        child_version = (await engine.workflows.get("child")).version
        child = await engine.queue.enqueue(
            tenant="default",
            workflow_id="child",
            workflow_version=child_version,
            inputs={},
            idempotency_key=f"parent:{run}:sub:1",
            parent_run_id=str(run),
            parent_node_id="sub",
            depth=1,
            node_count=1,
        )
        await request_cancel(engine.queue, run, "stop it")
    async with engine_on(pool, schema, settings=SETTINGS) as engine:  # a live worker recovers both
        events = await engine.wait_ended(run)
        assert events[-1].type == "run_cancelled"
        assert [e.data.node_id for e in events if e.type == "node_skipped"] == ["sub", "use"]
        child_events = await engine.wait_ended(child.run_id)
        assert child_events[-1].type == "run_cancelled"
        assert "stopped before it recorded its child" in (child_events[-1].data.reason or "")
