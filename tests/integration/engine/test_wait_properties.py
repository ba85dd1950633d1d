"""Hypothesis: random DAGs with ``wait`` nodes, signals sent at random times (before a wait is
reached, twice, for nobody), short durable delays, and runs parked and woken again and again.
Every run ends exactly once, every wait node gets the payload of the one signal that resumed it,
and folding the log gives exactly the live state of the executor that ended the run."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.run_state import fold
from schemas.workflow import WorkflowSpec
from service.domain.workflow_spec import build_graph
from service.engine.control import NotWaitingForSignal, RunAlreadyEnded, send_signal
from service.engine.executor import ExecutionLimits, RunExecutor
from tests.helpers.engine_harness import Engine, engine_on

SIGNALS = ("s0", "s1", "s2")
_ids = itertools.count()


@st.composite
def waiting_dags(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(1, 6))
    nodes: list[dict[str, Any]] = []
    for i in range(count):
        kind = draw(st.sampled_from(["wait", "wait", "noop", "delay"]))
        node: dict[str, Any] = {"id": f"n{i}", "type": kind}
        if kind == "wait":
            node["config"] = {"signal": draw(st.sampled_from(SIGNALS))}
        elif kind == "delay":
            node["config"] = {"ms": draw(st.integers(0, 40))}
        nodes.append(node)
    edges = [
        {"from": f"n{i}", "to": f"n{j}"}
        for i in range(count)
        for j in range(i + 1, count)
        if draw(st.integers(0, 2)) == 0
    ]
    return {"id": f"waits-{next(_ids)}", "nodes": nodes, "edges": edges}


signal_schedules = st.lists(st.tuples(st.integers(0, 30), st.sampled_from(SIGNALS)), max_size=8)


async def _execute_until_ended(engine: Engine, run_id: UUID, spec: dict[str, Any]) -> list[RunExecutor]:
    """Claim and execute the run, again each time it parks and is woken, until it ends."""
    graph = build_graph(msgspec.convert(spec, WorkflowSpec))
    executors: list[RunExecutor] = []
    while True:
        claims = [c for c in await engine.queue.claim("prop-worker", 10, 30) if c.run_id == run_id]
        if not claims:
            await asyncio.sleep(0.005)
            continue
        executor = RunExecutor(
            store=engine.store,
            queue=engine.queue,
            registry=engine.registry,
            graph=graph,
            claim=claims[0],
            worker_id="prop-worker",
            node_slots=asyncio.Semaphore(64),
            limits=ExecutionLimits(park_after_s=0.0),  # park at every wait, however short
        )
        await asyncio.wait_for(executor.execute(), 30)
        executors.append(executor)
        if executor.state.ended:
            return executors


async def _send(engine: Engine, run_id: UUID, name: str, n: int, got: dict[str, Any]) -> None:
    payload = {"signal": name, "n": n}
    try:
        _state, resumed = await send_signal(engine.queue, run_id, name, payload, "key:prop")
    except (NotWaitingForSignal, RunAlreadyEnded):
        return
    for node_id in resumed:
        assert node_id not in got, f"{node_id} resumed twice"
        got[node_id] = payload


async def _signal(engine: Engine, run_id: UUID, schedule: list[tuple[int, str]], got: dict[str, Any]) -> None:
    """The random signals, then whatever the run still waits for until it ends."""
    n = 0
    for pause_ms, name in schedule:
        await asyncio.sleep(pause_ms / 1000)
        n += 1
        await _send(engine, run_id, name, n, got)
    while not (state := await engine.state(run_id)).ended:
        for name in sorted({s.signal for s in state.nodes.values() if s.status == "waiting" and s.signal}):
            n += 1
            await _send(engine, run_id, name, n, got)
        await asyncio.sleep(0.01)


@settings(max_examples=20)
@given(spec=waiting_dags(), schedule=signal_schedules)
async def test_random_waits_and_signals_end_every_run_once_and_fold_to_the_live_state(
    pool: asyncpg.Pool, schema: str, spec: dict[str, Any], schedule: list[tuple[int, str]]
) -> None:
    async with engine_on(pool, schema, worker=False) as engine:
        await engine.register(spec)
        run_id = await engine.start(spec["id"])
        got: dict[str, Any] = {}
        executors, _ = await asyncio.gather(
            _execute_until_ended(engine, run_id, spec), _signal(engine, run_id, schedule, got)
        )
        events = await engine.events(run_id)

    live = executors[-1].state
    assert fold(events) == live
    assert fold(events, strict=True) == live  # a legal history: the audit's fold accepts it
    assert [e.type for e in events].count("run_finished") + [e.type for e in events].count(
        "run_cancelled"
    ) == 1
    assert events[-1].type == "run_finished" and events[-1].data.status == "succeeded"
    waits = {n["id"] for n in spec["nodes"] if n["type"] == "wait"}
    assert set(got) == waits
    outputs = {e.data.node_id: e.data.output for e in events if e.type == "node_execute_after_data"}
    for node_id in waits:
        assert outputs[node_id] == got[node_id]
    finished = [e.data.node_id for e in events if e.type == "node_execute_after"]
    assert sorted(finished) == sorted(n["id"] for n in spec["nodes"])  # each node ended exactly once
    assert "run_recovered" not in {e.type for e in events}  # parked and woken, never "recovered"
