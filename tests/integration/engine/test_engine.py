"""Event order per run, on real runs through the real worker (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from schemas.events import NodeExecuteAfter, NodeExecuteAfterData, RunFinished
from service.config import WorkerSettings
from service.engine.control import RunAlreadyEnded, request_cancel
from tests.helpers.engine_harness import Engine, engine_on, node_events
from tests.helpers.workflows import wf


@pytest.fixture
async def engine(pool: asyncpg.Pool, schema: str) -> AsyncIterator[Engine]:
    async with engine_on(pool, schema) as e:
        yield e


def types(events: list[Any]) -> list[str]:
    return [e.type for e in events]


def seq_of(events: list[Any], type_: str, node_id: str, attempt: int | None = None) -> int:
    for e in events:
        if e.type == type_ and getattr(e.data, "node_id", None) == node_id:
            if attempt is None or getattr(e.data, "attempt", None) == attempt:
                return int(e.seq)
    raise AssertionError(f"no {type_} for {node_id}")


async def test_linear_run_has_exactly_the_designed_event_order(engine: Engine) -> None:
    await engine.register(
        wf(
            "linear",
            [
                {"id": "a", "type": "noop"},
                {"id": "b", "type": "transform", "config": {"expression": "inputs.x"}},
            ],
            [("a", "b")],
        )
    )
    run = await engine.start("linear", {"x": [1, 2, 3]})
    events = await engine.wait_ended(run)
    assert types(events) == [
        "run_queued",
        "run_started",
        "node_execute_before",
        "node_execute_after",
        "node_execute_after_data",
        "node_execute_before",
        "node_execute_after",
        "node_execute_after_data",
        "run_finished",
    ]
    assert [e.seq for e in events] == list(range(9))
    after_b = events[6].data
    assert isinstance(after_b, NodeExecuteAfter) and after_b.status == "succeeded" and after_b.item_count == 3
    data_b = events[7].data
    assert isinstance(data_b, NodeExecuteAfterData) and data_b.output == [1, 2, 3]
    finished = events[-1].data
    assert isinstance(finished, RunFinished) and finished.status == "succeeded"
    state = await engine.state(run)
    assert state.workflow_version == (await engine.workflows.get("linear")).version


async def test_independent_branches_run_concurrently_and_the_join_waits(engine: Engine) -> None:
    await engine.register(
        wf(
            "diamond",
            [
                {"id": "a", "type": "noop"},
                {"id": "b", "type": "delay", "config": {"ms": 300}},
                {"id": "c", "type": "delay", "config": {"ms": 300}},
                {"id": "d", "type": "transform", "config": {"expression": "keys(nodes)"}},
            ],
            [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")],
        )
    )
    started = time.monotonic()
    run = await engine.start("diamond")
    events = await engine.wait_ended(run)
    assert time.monotonic() - started < 2.0  # b and c overlapped (sequential would be >= 600 ms + overhead)
    # both branches started before either finished
    assert max(seq_of(events, "node_execute_before", "b"), seq_of(events, "node_execute_before", "c")) < min(
        seq_of(events, "node_execute_after", "b"), seq_of(events, "node_execute_after", "c")
    )
    # the join started only after both upstream outputs were durable
    assert seq_of(events, "node_execute_before", "d") > max(
        seq_of(events, "node_execute_after_data", "b"), seq_of(events, "node_execute_after_data", "c")
    )
    state = await engine.state(run)
    assert sorted(state.nodes["d"].output) == ["a", "b", "c"]


async def test_retries_follow_the_policy_then_succeed(engine: Engine) -> None:
    await engine.register(
        wf(
            "retry",
            [
                {
                    "id": "flaky",
                    "type": "fail",
                    "config": {"times": 2},
                    "retry": {
                        "max_attempts": 3,
                        "initial_backoff_ms": 20,
                        "multiplier": 2.0,
                        "max_backoff_ms": 100,
                    },
                }
            ],
            [],
        )
    )
    run = await engine.start("retry")
    events = await engine.wait_ended(run)
    assert node_events(events, "flaky") == [
        "node_execute_before#1",
        "node_execute_after#1",
        "node_execute_after_data#1",
        "node_retry_scheduled#1",
        "node_execute_before#2",
        "node_execute_after#2",
        "node_execute_after_data#2",
        "node_retry_scheduled#2",
        "node_execute_before#3",
        "node_execute_after#3",
        "node_execute_after_data#3",
    ]
    delays = [e.data.delay_ms for e in events if e.type == "node_retry_scheduled"]
    assert delays == [20, 40]
    assert events[-1].data == RunFinished(status="succeeded", duration_ms=events[-1].data.duration_ms)


async def test_retries_exhausted_and_non_retryable_kinds_fail_the_run(engine: Engine) -> None:
    await engine.register(
        wf(
            "exhaust",
            [{"id": "f", "type": "fail", "retry": {"max_attempts": 2, "initial_backoff_ms": 1}}],
            [],
        )
    )
    await engine.register(
        wf(
            "nonretry",
            [
                {
                    "id": "f",
                    "type": "fail",
                    "retry": {"max_attempts": 5, "initial_backoff_ms": 1, "non_retryable": ["fail"]},
                }
            ],
            [],
        )
    )
    exhausted = await engine.wait_ended(await engine.start("exhaust"))
    assert [e.data.attempt for e in exhausted if e.type == "node_execute_before"] == [1, 2]
    assert exhausted[-1].data.status == "failed" and "node f failed" in (exhausted[-1].data.error or "")
    once = await engine.wait_ended(await engine.start("nonretry"))
    assert [e.type for e in once].count("node_execute_before") == 1
    assert "node_retry_scheduled" not in types(once)
    # The recorded error says it was not retryable under this node's policy.
    (after,) = [e.data for e in once if e.type == "node_execute_after"]
    assert after.error is not None and after.error.kind == "fail" and after.error.retryable is False


async def test_untaken_branch_is_skipped_with_its_descendants(engine: Engine) -> None:
    await engine.register(
        wf(
            "branchy",
            [
                {"id": "check", "type": "branch", "config": {"expression": "inputs.big"}},
                {"id": "big", "type": "noop"},
                {"id": "after_big", "type": "noop"},
                {"id": "small", "type": "transform", "config": {"expression": "nodes.check"}},
            ],
            [("check", "big", "true"), ("big", "after_big"), ("check", "small", "false")],
        )
    )
    events = await engine.wait_ended(await engine.start("branchy", {"big": False}))
    assert node_events(events, "big") == ["node_skipped"]
    assert node_events(events, "after_big") == ["node_skipped"]
    state = await engine.state(events[0].run_id)
    assert state.nodes["small"].output == {"branch": "false"}
    assert state.status == "succeeded"


async def test_stop_policy_cancels_in_flight_and_skips_the_rest(engine: Engine) -> None:
    await engine.register(
        wf(
            "stop",
            [
                {"id": "a", "type": "noop"},
                {"id": "bad", "type": "fail", "config": {"message": "boom"}},
                {"id": "slow", "type": "delay", "config": {"ms": 5000}},
                {"id": "after_slow", "type": "noop"},
            ],
            [("a", "bad"), ("a", "slow"), ("slow", "after_slow")],
        )
    )
    started = time.monotonic()
    events = await engine.wait_ended(await engine.start("stop"))
    assert time.monotonic() - started < 3.0, "the slow node should have been cancelled, not awaited"
    slow_after = next(e.data for e in events if e.type == "node_execute_after" and e.data.node_id == "slow")
    assert slow_after.status == "failed" and slow_after.error.kind == "cancelled"
    assert node_events(events, "after_slow") == ["node_skipped"]
    assert events[-1].data.status == "failed"
    assert "node bad failed (fail: boom)" in events[-1].data.error


async def test_continue_policy_lets_independent_branches_finish(engine: Engine) -> None:
    await engine.register(
        wf(
            "cont",
            [
                {"id": "bad", "type": "fail"},
                {"id": "after_bad", "type": "noop"},
                {"id": "slow", "type": "delay", "config": {"ms": 200}},
                {"id": "after_slow", "type": "noop"},
            ],
            [("bad", "after_bad"), ("slow", "after_slow")],
            on_failure="continue",
        )
    )
    events = await engine.wait_ended(await engine.start("cont"))
    state = await engine.state(events[0].run_id)
    assert state.nodes["after_slow"].status == "succeeded"
    assert state.nodes["after_bad"].status == "skipped"
    assert state.nodes["after_bad"].skip_reason == "upstream bad failed"
    assert events[-1].data.status == "failed"


async def test_cancel_during_a_node_stops_it_promptly(engine: Engine) -> None:
    await engine.register(
        wf(
            "cancel-me",
            [{"id": "wait", "type": "delay", "config": {"ms": 10000}}, {"id": "next", "type": "noop"}],
            [("wait", "next")],
        )
    )
    run = await engine.start("cancel-me")
    await engine.wait_for(run, lambda es: "node_execute_before" in types(es))
    requested = time.monotonic()
    await request_cancel(engine.queue, run, "tests say stop")
    events = await engine.wait_ended(run, timeout=5)
    assert time.monotonic() - requested < 2.0
    assert types(events)[-1] == "run_cancelled"
    wait_after = next(e.data for e in events if e.type == "node_execute_after")
    assert wait_after.error.kind == "cancelled"
    assert node_events(events, "next") == ["node_skipped"]
    skipped = next(e.data for e in events if e.type == "node_skipped")
    assert skipped.reason == "run cancelled: tests say stop"
    assert events[-1].data.reason == "tests say stop"  # the reason given, not "run cancelled: ..." again
    with pytest.raises(RunAlreadyEnded):
        await request_cancel(engine.queue, run, "again")


async def test_cancel_before_a_worker_claims_the_run(pool: asyncpg.Pool, schema: str) -> None:
    async with engine_on(pool, schema, worker=False) as e:
        await e.register(wf("queued-cancel", [{"id": "a", "type": "noop"}], []))
        run = await e.start("queued-cancel")
        await request_cancel(e.queue, run, "never mind")
    async with engine_on(pool, schema) as e:
        events = await e.wait_ended(run)
        assert types(events) == [
            "run_queued",
            "run_cancel_requested",
            "run_started",
            "node_skipped",
            "run_cancelled",
        ]


async def test_node_timeout_fails_the_attempt(engine: Engine) -> None:
    await engine.register(
        wf("timeout", [{"id": "slow", "type": "delay", "config": {"ms": 5000}, "timeout_ms": 100}], [])
    )
    started = time.monotonic()
    events = await engine.wait_ended(await engine.start("timeout"))
    assert time.monotonic() - started < 2.0
    after = next(e.data for e in events if e.type == "node_execute_after")
    assert after.status == "failed" and after.error.kind == "timeout"
    assert "100 ms" in after.error.message


async def test_output_over_the_cap_is_stored_as_a_blob_and_the_next_node_gets_it(
    pool: asyncpg.Pool, schema: str
) -> None:
    async with engine_on(
        pool, schema, settings=WorkerSettings(lease_s=5, poll_s=0.2, output_cap_bytes=1024)
    ) as e:
        await e.register(
            wf(
                "big",
                [
                    {"id": "make", "type": "transform", "config": {"expression": "inputs.blob"}},
                    {"id": "use", "type": "transform", "config": {"expression": "nodes.make"}},
                ],
                [("make", "use")],
            )
        )
        events = await e.wait_ended(await e.start("big", {"blob": "x" * 5000}))
        data = next(
            ev.data for ev in events if ev.type == "node_execute_after_data" and ev.data.node_id == "make"
        )
        import hashlib

        digest = hashlib.sha256(b'"' + b"x" * 5000 + b'"').hexdigest()
        assert data.marker is None and data.output_bytes == 5002  # the JSON string with its quotes
        assert data.output == {"$blob": {"sha256": digest, "size_bytes": 5002}}
        assert data.output_sha256 == digest
        state = await e.state(events[0].run_id)
        # use returned what it got: the same 5002 bytes (so the same blob), not the reference
        assert state.nodes["use"].output == data.output and state.nodes["use"].output_sha256 == digest
        assert state.status == "succeeded"


async def test_idempotency_key_returns_the_first_run(engine: Engine) -> None:
    await engine.register(wf("idem", [{"id": "a", "type": "noop"}], []))
    version = (await engine.workflows.get("idem")).version
    first = await engine.queue.enqueue(
        tenant="default", workflow_id="idem", workflow_version=version, inputs={}, idempotency_key="k1"
    )
    again = await engine.queue.enqueue(
        tenant="default", workflow_id="idem", workflow_version=version, inputs={"x": 1}, idempotency_key="k1"
    )
    assert first.created and not again.created and again.run_id == first.run_id
    events = await engine.wait_ended(first.run_id)
    assert types(events).count("run_queued") == 1


async def test_workflow_versions_are_content_addressed_and_runs_record_theirs(engine: Engine) -> None:
    spec = wf("versioned", [{"id": "a", "type": "noop"}], [])
    v1 = await engine.register(spec)
    assert await engine.register(spec) == v1
    run1 = await engine.start("versioned")
    v2 = await engine.register(
        wf("versioned", [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop"}], [("a", "b")])
    )
    assert v2 != v1
    run2 = await engine.start("versioned")
    await engine.wait_ended(run1)
    await engine.wait_ended(run2)
    assert (await engine.state(run1)).workflow_version == v1
    assert (await engine.state(run2)).workflow_version == v2
    assert len((await engine.state(run2)).nodes) == 2

    # Registering the first spec again makes v1 current again: what was registered last runs.
    assert await engine.register(spec) == v1
    assert (await engine.workflows.get("versioned")).version == v1
    run3 = await engine.start("versioned")
    await engine.wait_ended(run3)
    assert (await engine.state(run3)).workflow_version == v1
    assert [v for v, _ in await engine.workflows.versions("versioned")] == [v1, v2]


async def test_many_runs_complete_under_the_global_limit(pool: asyncpg.Pool, schema: str) -> None:
    settings = WorkerSettings(lease_s=5, poll_s=0.2, max_runs=5, max_node_tasks=3)
    async with engine_on(pool, schema, settings=settings) as e:
        await e.register(
            wf(
                "many",
                [{"id": "a", "type": "delay", "config": {"ms": 20}}, {"id": "b", "type": "noop"}],
                [("a", "b")],
            )
        )
        runs = [await e.start("many") for _ in range(30)]
        results = await asyncio.gather(*[e.wait_ended(r, timeout=30) for r in runs])
        assert all(r[-1].data.status == "succeeded" for r in results)


async def test_queue_row_and_run_queued_commit_in_one_transaction(pool: asyncpg.Pool, schema: str) -> None:
    async with engine_on(pool, schema, worker=False) as engine:  # no claim rewrites the rows meanwhile
        await engine.register(wf("same-txn", [{"id": "a", "type": "noop"}], []))
        runs = await asyncio.gather(
            *[engine.start("same-txn") for _ in range(20)]
        )  # group-committed together
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            f'SELECT q.run_id, q.xmin::text AS queue_txn, e.xmin::text AS event_txn FROM "{schema}".run_queue q '
            f'JOIN "{schema}".events e ON e.run_id = q.run_id AND e.seq = 0 WHERE q.run_id = ANY($1::uuid[])',
            runs,
        )
    assert len(rows) == 20
    assert all(r["queue_txn"] == r["event_txn"] for r in rows)
