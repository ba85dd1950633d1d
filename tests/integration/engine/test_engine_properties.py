"""Hypothesis over random DAG runs through the real executor and a real PostgreSQL log."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.run_state import fold
from tests.helpers.engine_harness import engine_on


@st.composite
def random_runs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A random valid DAG with random failures and branch outcomes, and the run inputs."""
    n = draw(st.integers(1, 8))
    nodes: list[dict[str, Any]] = []
    inputs: dict[str, Any] = {}
    kinds = [draw(st.sampled_from(["noop", "noop", "fail", "branch", "transform"])) for _ in range(n)]
    for i, kind in enumerate(kinds):
        node: dict[str, Any] = {"id": f"n{i}", "type": kind}
        if kind == "fail":
            node["config"] = {"times": draw(st.integers(0, 3))}
            node["retry"] = {
                "max_attempts": draw(st.integers(1, 3)),
                "initial_backoff_ms": 1,
                "max_backoff_ms": 2,
            }
        elif kind == "branch":
            inputs[f"b{i}"] = draw(st.booleans())
            node["config"] = {"expression": f"inputs.b{i}"}
        elif kind == "transform":
            node["config"] = {"expression": "keys(nodes)"}
        nodes.append(node)
    edges = []
    for j in range(1, n):
        for i in range(j):
            if draw(st.integers(0, 9)) < 4:
                edge: dict[str, Any] = {"from": f"n{i}", "to": f"n{j}"}
                if kinds[i] == "branch":
                    edge["when"] = draw(st.sampled_from(["true", "false"]))
                edges.append(edge)
    spec = {
        "id": "random",
        "nodes": nodes,
        "edges": edges,
        "on_failure": draw(st.sampled_from(["stop", "continue"])),
    }
    return spec, inputs


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=random_runs())
async def test_random_dags_respect_dependencies_end_every_node_once_and_fold_to_the_live_state(
    pool: asyncpg.Pool, schema: str, case: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    spec_dict, inputs = case
    async with engine_on(pool, schema, worker=False) as engine:
        await engine.register(spec_dict)
        run_id = await engine.start("random", inputs)
        executor = await engine.claim_executor(run_id, spec_dict)
        graph = executor.graph
        await asyncio.wait_for(executor.execute(), 30)
        events = await engine.events(run_id)

    # Folding the recorded events gives exactly the state the engine acted on; the log is a legal history.
    assert fold(events) == executor.state
    assert fold(events, strict=True) == executor.state
    assert executor.state.ended

    ended_at: dict[str, int] = {}
    ends: dict[str, int] = {n["id"]: 0 for n in spec_dict["nodes"]}
    for i, e in enumerate(events):
        node_id = getattr(e.data, "node_id", None)
        if e.type == "node_skipped":
            ends[node_id] += 1
            ended_at[node_id] = e.seq
        elif e.type == "node_execute_after_data":
            retried = i + 1 < len(events) and events[i + 1].type == "node_retry_scheduled"
            if not retried:
                ends[node_id] += 1
                ended_at[node_id] = e.seq
    assert all(count == 1 for count in ends.values()), ends  # every node ends exactly once

    for e in events:  # no node starts before every upstream node has ended
        if e.type == "node_execute_before":
            for edge in graph.upstream[e.data.node_id]:
                assert ended_at[edge.from_] < e.seq, f"{e.data.node_id} started before {edge.from_} ended"
