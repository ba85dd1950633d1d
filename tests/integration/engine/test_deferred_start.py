"""run_started and node_execute_before ride with the next append only under a lease that surely holds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from schemas.events import RunRecovered
from service.engine.executor import RunExecutor
from service.store.run_queue import LeaseLost
from tests.helpers.engine_harness import Engine, engine_on
from tests.helpers.workflows import wf


@pytest.fixture
async def engine(pool: asyncpg.Pool, schema: str) -> AsyncIterator[Engine]:
    async with engine_on(pool, schema, worker=False) as e:
        yield e


SPEC = wf(
    "chain",
    [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop"}, {"id": "c", "type": "noop"}],
    [("a", "b"), ("b", "c")],
)


async def _transactions(pool: asyncpg.Pool, schema: str, run_id: UUID) -> list[tuple[str, str | None, int]]:
    """(type, node_id, the transaction that wrote it) per event, in seq order."""
    rows = await pool.fetch(
        f"SELECT type, data->>'node_id' AS node_id, xmin::text::bigint AS txn FROM {schema}.events "
        "WHERE run_id = $1 ORDER BY seq",
        run_id,
    )
    return [(r["type"], r["node_id"], r["txn"]) for r in rows]


def _txn(rows: list[tuple[str, str | None, int]], type_: str, node_id: str | None = None) -> int:
    return next(t for ty, n, t in rows if ty == type_ and n == node_id)


async def _run(engine: Engine, executor_lease: Any) -> tuple[UUID, RunExecutor]:
    await engine.register(SPEC)
    run_id = await engine.start("chain")
    executor = await engine.claim_executor(run_id, SPEC)
    executor.lease_left = executor_lease
    await executor.execute()
    return run_id, executor


async def test_under_a_held_lease_a_quick_node_starts_and_ends_in_one_append(
    engine: Engine, pool: asyncpg.Pool, schema: str
) -> None:
    run_id, executor = await _run(engine, lambda: 30.0)
    assert executor.state.status == "succeeded"
    rows = await _transactions(pool, schema, run_id)
    assert [r[0] for r in rows][:5] == [
        "run_queued",
        "run_started",
        "node_execute_before",
        "node_execute_after",
        "node_execute_after_data",
    ]
    assert _txn(rows, "run_started") == _txn(rows, "node_execute_before", "a")
    for node in "abc":
        assert _txn(rows, "node_execute_before", node) == _txn(rows, "node_execute_after", node)
    assert _txn(rows, "node_execute_after", "a") != _txn(rows, "node_execute_before", "b")


async def test_without_a_lease_to_spare_every_start_is_written_first(
    engine: Engine, pool: asyncpg.Pool, schema: str
) -> None:
    run_id, executor = await _run(engine, lambda: 0.5)
    assert executor.state.status == "succeeded"
    rows = await _transactions(pool, schema, run_id)
    assert _txn(rows, "run_started") != _txn(rows, "node_execute_before", "a")
    for node in "abc":
        assert _txn(rows, "node_execute_before", node) != _txn(rows, "node_execute_after", node)


class _TakenOver(RunExecutor):
    """An executor whose run another worker takes over right after it read the log."""

    async def _loop(self) -> None:
        await self.store.append(
            self.run_id,
            [RunRecovered(worker_id="other", completed_nodes=[])],
            self.next_seq,
            tenant="default",
            workflow_id="chain",
        )
        await super()._loop()


@pytest.mark.parametrize(
    ("lease", "recorded"),
    [
        (0.0, ["run_queued", "run_started", "run_recovered"]),  # run_started was the fence
        (30.0, ["run_queued", "run_recovered"]),  # run_started waited for the first node's result
    ],
)
async def test_a_run_taken_over_records_no_node_of_the_old_worker(
    engine: Engine, lease: float, recorded: list[str]
) -> None:
    """Without a lease to spare, the start of the first node is the fence; with one, no other
    worker could have claimed the run, and if one wrote anyway its write still wins."""
    await engine.register(SPEC)
    run_id = await engine.start("chain")
    executor = await engine.claim_executor(run_id, SPEC, executor_class=_TakenOver)
    executor.lease_left = lambda: lease
    with pytest.raises(LeaseLost):
        await executor.execute()
    assert [e.type for e in await engine.events(run_id)] == recorded
