"""Projections over event histories produced by random DAG runs through the real engine."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.runner import PROJECTIONS, ProjectionRunner, fold_batch, rebuild_all
from projections.shadow_tables import indexes_of
from schemas.envelope import EventEnvelope
from schemas.events import (
    NodeError,
    NodeExecuteAfter,
    NodeExecuteAfterData,
    NodeExecuteBefore,
    RunCancelled,
    RunQueued,
    RunStarted,
)
from service.config import WorkerSettings
from service.infra.migrations import apply_migrations
from service.store.event_store import EventStore
from service.store.projection_log import StoreLog
from tests.helpers.engine_harness import engine_on


def random_workflow(rng: random.Random, index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    n = rng.randint(1, 7)
    kinds = [rng.choice(["noop", "fail", "branch", "transform", "delay"]) for _ in range(n)]
    nodes, inputs = [], {}
    for i, kind in enumerate(kinds):
        node: dict[str, Any] = {"id": f"n{i}", "type": kind}
        if kind == "fail":
            node["config"] = {"times": rng.randint(0, 2)}
            node["retry"] = {"max_attempts": rng.randint(1, 3), "initial_backoff_ms": 1, "max_backoff_ms": 2}
        elif kind == "branch":
            inputs[f"b{i}"] = rng.random() < 0.5
            node["config"] = {"expression": f"inputs.b{i}"}
        elif kind == "transform":
            node["config"] = {"expression": "keys(nodes)"}
        elif kind == "delay":
            node["config"] = {"ms": rng.randint(0, 5)}
        nodes.append(node)
    edges = []
    for j in range(1, n):
        for i in range(j):
            if rng.random() < 0.4:
                edge: dict[str, Any] = {"from": f"n{i}", "to": f"n{j}"}
                if kinds[i] == "branch":
                    edge["when"] = rng.choice(["true", "false"])
                edges.append(edge)
    spec = {
        "id": f"rand-{index}",
        "nodes": nodes,
        "edges": edges,
        "on_failure": rng.choice(["stop", "continue"]),
    }
    return spec, inputs


@dataclass
class Corpus:
    schema: str
    store: EventStore
    events: list[EventEnvelope]


@pytest.fixture(scope="module")
async def corpus(pool: asyncpg.Pool) -> AsyncIterator[Corpus]:
    """A log of ~20 random runs (some cancelled mid-run), executed by the real worker."""
    schema = f"t_proj_{uuid.uuid4().hex[:8]}"
    async with pool.acquire() as conn:
        await apply_migrations(conn, schema=schema)
    rng = random.Random(20261122)
    async with engine_on(pool, schema, settings=WorkerSettings(lease_s=5, poll_s=0.1)) as engine:
        runs = []
        for i in range(20):
            spec, inputs = random_workflow(rng, i)
            await engine.register(spec)
            runs.append(await engine.start(spec["id"], inputs))
        from service.engine.control import RunAlreadyEnded, request_cancel

        # One run that is surely still going when it is cancelled (it waits for a signal that
        # never comes); the random ones may end before their cancel arrives.
        await engine.register(
            {
                "id": "corpus-waits",
                "nodes": [{"id": "w", "type": "wait", "config": {"signal": "never"}}],
                "edges": [],
            }
        )
        waiting = await engine.start("corpus-waits", {})
        await engine.wait_for(waiting, lambda es: es[-1].type == "run_waiting")
        runs.append(waiting)
        for run in [*runs[::7], waiting]:
            with contextlib.suppress(RunAlreadyEnded):
                await request_cancel(engine.queue, run, "corpus cancel")
        await asyncio.gather(*[engine.wait_ended(r, timeout=30) for r in runs])
        log = StoreLog(engine.store)
        async with pool.acquire() as conn:
            events = await log.read_events(conn, 0, 1_000_000)
    store = EventStore(pool, schema=schema)
    await store.start()
    yield Corpus(schema, store, events)
    await store.close()
    async with pool.acquire() as conn:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def _table_rows(conn: asyncpg.Connection, schema: str, table: str, order: str) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(f'SELECT * FROM "{schema}"."{table}" ORDER BY {order}')]


async def _fresh_table(conn: asyncpg.Connection, schema: str, base: str) -> str:
    name = f"{base}_{uuid.uuid4().hex[:8]}"
    await conn.execute(f'CREATE TABLE "{schema}"."{name}" (LIKE "{schema}"."{base}" INCLUDING ALL)')
    return name


ORDER = {"run_summaries": "run_id", "node_executions": "run_id, node_id"}


def test_corpus_is_varied(corpus: Corpus) -> None:
    kinds = {e.type for e in corpus.events}
    assert {"node_skipped", "node_retry_scheduled", "run_cancelled", "run_finished"} <= kinds
    assert len(corpus.events) > 150


@pytest.mark.parametrize("name", sorted(PROJECTIONS))
@settings(max_examples=15)
@given(data=st.data())
async def test_batches_and_restarts_give_the_same_view_and_rebuild_equals_incremental(
    corpus: Corpus, pool: asyncpg.Pool, name: str, data: st.DataObject
) -> None:
    projection = PROJECTIONS[name]
    log = StoreLog(corpus.store)
    async with pool.acquire() as conn:
        whole = await _fresh_table(conn, corpus.schema, projection.table)
        pieces = await _fresh_table(conn, corpus.schema, projection.table)
        try:
            # (a) all events in one batch ...
            one = ProjectionRunner(projection, schema=corpus.schema, table=whole)
            while await one.step(conn, log, limit=1_000_000, checkpoint=f"whole-{whole}"):
                pass
            # ... equals random batch sizes with a new runner (a restart) after every batch,
            # and (c) replaying already-applied events (checkpoint moved back) changes nothing.
            checkpoint = f"pieces-{pieces}"
            while True:
                runner = ProjectionRunner(projection, schema=corpus.schema, table=pieces)
                if data.draw(st.booleans(), label="replay"):
                    position = await log.lock_checkpoint(conn, checkpoint)
                    back = data.draw(st.integers(0, 40), label="back")
                    await log.write_checkpoint(conn, checkpoint, max(0, position - back))
                if not await runner.step(
                    conn, log, limit=data.draw(st.integers(1, 60), label="batch"), checkpoint=checkpoint
                ):
                    break
            expected = await _table_rows(conn, corpus.schema, whole, ORDER[name])
            assert await _table_rows(conn, corpus.schema, pieces, ORDER[name]) == expected
            assert expected, "the view should not be empty"
        finally:
            await conn.execute(f'DROP TABLE "{corpus.schema}"."{whole}"')
            await conn.execute(f'DROP TABLE "{corpus.schema}"."{pieces}"')


@pytest.mark.parametrize("name", sorted(PROJECTIONS))
async def test_full_rebuild_equals_the_incrementally_built_view(
    corpus: Corpus, pool: asyncpg.Pool, name: str
) -> None:
    projection = PROJECTIONS[name]
    log = StoreLog(corpus.store)
    async with pool.acquire() as conn:
        live = ProjectionRunner(projection, schema=corpus.schema)
        while await live.step(conn, log, limit=37):
            pass
        incremental = await _table_rows(conn, corpus.schema, projection.table, ORDER[name])
        indexes = await indexes_of(conn, corpus.schema, projection.table)
        for copy_rows in (20_000, 7):  # rows COPYed at once: all, or many COPYs while folding
            seen: list[int] = []
            position = await rebuild_all(
                conn,
                log,
                [projection],
                schema=corpus.schema,
                batch=50,
                on_progress=seen.append,
                copy_rows=copy_rows,
            )
            assert position == corpus.events[-1].global_position
            assert sum(seen) == len(corpus.events)
            assert await _table_rows(conn, corpus.schema, projection.table, ORDER[name]) == incremental
            assert await log.lock_checkpoint(conn, projection.name) == position
            # The rebuilt table has the migration's indexes, under their names.
            assert await indexes_of(conn, corpus.schema, projection.table) == indexes


@pytest.mark.parametrize("name", sorted(PROJECTIONS))
@settings(max_examples=50)
@given(data=st.data())
def test_applying_an_event_twice_changes_nothing(corpus: Corpus, name: str, data: st.DataObject) -> None:
    projection = PROJECTIONS[name]
    cut = data.draw(st.integers(0, len(corpus.events) - 1), label="cut")
    rows: dict[Any, Any] = {}
    fold_batch(projection, rows, corpus.events[: cut + 1])
    snapshot = dict(rows)
    again = data.draw(st.lists(st.integers(0, cut), max_size=10), label="again")
    fold_batch(projection, rows, [corpus.events[i] for i in again])
    assert rows == snapshot


def test_summaries_describe_the_runs(corpus: Corpus) -> None:
    rows: dict[Any, Any] = {}
    fold_batch(PROJECTIONS["run_summaries"], rows, corpus.events)
    assert len(rows) == 21  # 20 random runs and one that waits until it is cancelled
    for summary in rows.values():
        assert summary.status in ("succeeded", "failed", "cancelled")
        assert summary.current_nodes == ()
        if summary.status == "succeeded":
            assert summary.progress == 100 and summary.error is None
            assert len(summary.executed_nodes) + len(summary.skipped_nodes) == summary.node_count
        if summary.status == "failed":
            assert summary.failed_nodes and summary.error
        assert summary.duration_ms is None or summary.duration_ms >= 0


async def test_text_postgres_cannot_store_is_made_storable_not_a_stuck_projection(
    pool: asyncpg.Pool, schema: str, store: EventStore
) -> None:
    # A NUL in a node error or a cancel reason is valid JSON in the log, but PostgreSQL text
    # refuses it: the views show U+FFFD there instead of failing the projection forever.
    run = uuid.uuid4()
    error = NodeError(kind="http", message="body: \x00\x01")
    await store.append(
        run,
        [
            RunQueued(workflow_version="v", node_count=1),
            RunStarted(),
            NodeExecuteBefore(node_id="a", node_type="http"),
            NodeExecuteAfter(node_id="a", node_type="http", status="failed", error=error),
            NodeExecuteAfterData(node_id="a"),
            RunCancelled(reason="stop\x00now"),
        ],
        0,
        tenant="default",
        workflow_id="wf",
    )
    log = StoreLog(store)
    async with pool.acquire() as conn:
        for projection in PROJECTIONS.values():
            while await ProjectionRunner(projection, schema=schema).step(conn, log):
                pass
        incremental = [
            await _table_rows(conn, schema, p.table, ORDER[name]) for name, p in PROJECTIONS.items()
        ]
        await rebuild_all(conn, log, list(PROJECTIONS.values()), schema=schema)
        rebuilt = [await _table_rows(conn, schema, p.table, ORDER[name]) for name, p in PROJECTIONS.items()]
        summary = await conn.fetchrow(f'SELECT error FROM "{schema}".run_summaries')
        node = await conn.fetchrow(f'SELECT error_message FROM "{schema}".node_executions')
    assert rebuilt == incremental
    assert summary is not None and summary["error"] == "stop\ufffdnow"
    assert node is not None and node["error_message"] == "body: \ufffd\x01"
