"""Fork and re-run: reuse recorded results, execute from a node, override an output."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.workflow_spec import build_graph
from service.engine.fork import descendants, start_fork
from tests.helpers.api import assert_problem, wait_ended
from tests.helpers.engine_harness import engine_on
from tests.helpers.strategies import random_runs

CHAIN = {
    "nodes": [
        {"id": "a", "type": "transform", "config": {"expression": "inputs.x"}},
        {"id": "b", "type": "transform", "config": {"expression": "{doubled: [nodes.a, nodes.a]}"}},
        {"id": "c", "type": "transform", "config": {"expression": "{b: nodes.b, a: nodes.a}"}},
    ],
    "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}],
}


async def _run(
    api: httpx.AsyncClient, spec: dict[str, Any], inputs: dict[str, Any]
) -> tuple[str, list[dict[str, Any]]]:
    wid = f"fork-{uuid.uuid4().hex[:8]}"
    assert (await api.post("/v1/workflows", json={"id": wid, **spec})).status_code == 201
    run_id = (await api.post(f"/v1/workflows/{wid}/runs", json={"inputs": inputs})).json()["run_id"]
    return run_id, await wait_ended(api, run_id)


def _outputs(events: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        e["data"]["node_id"]: e["data"]["output"] for e in events if e["type"] == "node_execute_after_data"
    }


async def test_fork_from_a_node_reuses_everything_upstream(api: httpx.AsyncClient) -> None:
    parent, parent_events = await _run(api, CHAIN, {"x": 7})
    accepted = await api.post(f"/v1/runs/{parent}/replay", json={"from_node": "b"})
    assert accepted.status_code == 202
    body = accepted.json()
    assert body["parent_run_id"] == parent and body["reused_nodes"] == ["a"] and body["from_node"] == "b"
    events = await wait_ended(api, body["run_id"])
    assert events[-1]["data"]["status"] == "succeeded"
    assert _outputs(events) == _outputs(parent_events)
    reused = [e for e in events if e["data"].get("node_id") == "a" and e["type"].startswith("node_execute")]
    parent_a = [
        e for e in parent_events if e["data"].get("node_id") == "a" and e["type"].startswith("node_execute")
    ]
    assert [e["data"]["reused_from"]["event_id"] for e in reused] == [e["event_id"] for e in parent_a]
    executed = {
        e["data"]["node_id"]
        for e in events
        if e["type"] == "node_execute_before" and not e["data"]["reused_from"]
    }
    assert executed == {"b", "c"}
    assert events[0]["data"]["parent_run_id"] == parent
    summary = (await api.get(f"/v1/runs/{body['run_id']}")).json()
    assert summary["parent_run_id"] == parent
    lineage = (await api.get(f"/v1/runs/{body['run_id']}/lineage")).json()
    assert lineage["parent_run_id"] == parent


async def test_fork_with_an_override_and_from_failure(api: httpx.AsyncClient) -> None:
    spec = {
        "nodes": [*CHAIN["nodes"], {"id": "d", "type": "fail", "config": {"message": "nope"}}],
        "edges": [*CHAIN["edges"], {"from": "c", "to": "d"}],
    }
    parent, parent_events = await _run(api, spec, {"x": 1})
    assert parent_events[-1]["data"]["status"] == "failed"
    overridden = (
        await api.post(f"/v1/runs/{parent}/replay", json={"overrides": {"b": {"doubled": [5, 5]}}})
    ).json()
    assert overridden["reused_nodes"] == ["a"] and overridden["overridden_nodes"] == ["b"]
    events = await wait_ended(api, overridden["run_id"])
    assert _outputs(events)["c"] == {"b": {"doubled": [5, 5]}, "a": 1}
    b_data = next(e for e in events if e["type"] == "node_execute_after_data" and e["data"]["node_id"] == "b")
    assert b_data["data"]["reused_from"]["overridden"] is True

    from_failure = (await api.post(f"/v1/runs/{parent}/replay", json={"from_failure": True})).json()
    assert from_failure["from_node"] == "d" and from_failure["reused_nodes"] == ["a", "b", "c"]
    events = await wait_ended(api, from_failure["run_id"])
    executed = [
        e["data"]["node_id"]
        for e in events
        if e["type"] == "node_execute_before" and not e["data"]["reused_from"]
    ]
    assert executed == ["d"]


async def test_fork_errors(api: httpx.AsyncClient) -> None:
    assert_problem(await api.post(f"/v1/runs/{uuid.uuid4()}/replay", json={}), 404)
    parent, _ = await _run(api, CHAIN, {"x": 1})
    body = assert_problem(await api.post(f"/v1/runs/{parent}/replay", json={"from_node": "zz"}), 400)
    assert "'zz' is not in the workflow" in body["detail"]
    body = assert_problem(await api.post(f"/v1/runs/{parent}/replay", json={"from_node": ""}), 400)
    assert "'' is not in the workflow" in body["detail"]
    assert_problem(await api.post(f"/v1/runs/{parent}/replay", json={"workflow_version": ""}), 404)
    body = assert_problem(await api.post(f"/v1/runs/{parent}/replay", json={"from_failure": True}), 400)
    assert "no failed node" in body["detail"]
    assert_problem(await api.post(f"/v1/runs/{parent}/replay", json={"workflow_version": "nope"}), 404)
    slow = {"nodes": [{"id": "w", "type": "delay", "config": {"ms": 5000}}]}
    wid = f"fork-{uuid.uuid4().hex[:8]}"
    await api.post("/v1/workflows", json={"id": wid, **slow})
    running = (await api.post(f"/v1/workflows/{wid}/runs", json={})).json()["run_id"]
    body = assert_problem(await api.post(f"/v1/runs/{running}/replay", json={}), 409)
    assert "fork it once it has ended" in body["detail"]
    await api.post(f"/v1/runs/{running}/cancel")


@settings(max_examples=15)
@given(case=random_runs(), pick=st.integers(0, 100))
async def test_a_fork_of_a_deterministic_run_ends_with_the_same_outputs(
    pool: asyncpg.Pool, schema: str, case: tuple[dict[str, Any], dict[str, Any]], pick: int
) -> None:
    spec, inputs = case
    async with engine_on(pool, schema) as engine:
        await engine.register(spec)
        parent = await engine.start("random", inputs)
        await engine.wait_ended(parent)
        parent_state = await engine.state(parent)
        executed = [n for n, s in parent_state.nodes.items() if s.status in ("succeeded", "failed")]
        if not executed:
            return
        from_node = sorted(executed)[pick % len(executed)]
        enqueued, stored, origin = await start_fork(
            engine.queue, engine.workflows, parent, from_node=from_node
        )
        events = await engine.wait_ended(enqueued.run_id)
        fork_state = await engine.state(enqueued.run_id)
    graph = build_graph(stored.spec)
    rerun = descendants(graph, from_node) | {from_node}
    executed_in_fork = {
        e.data.node_id for e in events if e.type == "node_execute_before" and e.data.reused_from is None
    }
    succeeded = {n for n, st_ in parent_state.nodes.items() if st_.status == "succeeded"}
    assert set(origin.reuse) == succeeded - rerun
    # Only X and its descendants run again (plus nodes the parent never completed, e.g. after a stop).
    assert executed_in_fork <= rerun | (set(graph.topo_order) - succeeded)
    if parent_state.status == "succeeded":
        # Deterministic handlers: the fork ends exactly like its parent, executing only X and below.
        assert executed_in_fork <= rerun
        assert fork_state.status == "succeeded"
        for node_id, node in parent_state.nodes.items():
            assert fork_state.node(node_id).status == node.status, node_id
            assert fork_state.node(node_id).output == node.output, node_id
