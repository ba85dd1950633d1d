"""Hypothesis over random DAG runs through the real executor and a real PostgreSQL log."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from hypothesis import given, settings

from projections.run_state import fold
from tests.helpers.engine_harness import engine_on
from tests.helpers.strategies import random_runs


@settings(max_examples=25)
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
