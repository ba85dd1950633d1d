"""Projection-backed query routes through real HTTP: summaries, lists, lineage, node history."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from tests.helpers.api import assert_problem


def _wid() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


BRANCHY = {
    "nodes": [
        {"id": "items", "type": "transform", "config": {"expression": "inputs.items"}},
        {"id": "check", "type": "branch", "config": {"expression": "inputs.big"}},
        {"id": "big", "type": "noop"},
        {"id": "small", "type": "transform", "config": {"expression": "nodes.items"}},
        {
            "id": "flaky",
            "type": "fail",
            "config": {"times": 1},
            "retry": {"max_attempts": 2, "initial_backoff_ms": 1},
        },
    ],
    "edges": [
        {"from": "items", "to": "check"},
        {"from": "check", "to": "big", "when": "true"},
        {"from": "check", "to": "small", "when": "false"},
        {"from": "small", "to": "flaky"},
    ],
}


async def _register(api: httpx.AsyncClient, spec: dict[str, Any]) -> None:
    assert (await api.post("/v1/workflows", json=spec)).status_code == 201


async def _start(api: httpx.AsyncClient, wid: str, inputs: dict[str, Any] | None = None) -> str:
    return str((await api.post(f"/v1/workflows/{wid}/runs", json={"inputs": inputs or {}})).json()["run_id"])


async def _summary_when(api: httpx.AsyncClient, run_id: str, predicate: Any) -> dict[str, Any]:
    for _ in range(400):
        body: dict[str, Any] = (await api.get(f"/v1/runs/{run_id}")).json()
        if predicate(body):
            return body
        await asyncio.sleep(0.025)
    raise AssertionError(f"summary never matched: {body}")


async def test_run_summary_from_queued_to_finished(api: httpx.AsyncClient) -> None:
    wid = _wid()
    await _register(api, {"id": wid, **BRANCHY})
    run_id = await _start(api, wid, {"items": [1, 2, 3], "big": False})
    first = await api.get(f"/v1/runs/{run_id}")  # at once: folded from the run's own events if need be
    assert first.status_code == 200 and first.json()["run_id"] == run_id
    body = await _summary_when(api, run_id, lambda b: b["status"] == "succeeded")
    assert body["workflow_id"] == wid and body["progress"] == 100 and body["node_count"] == 5
    assert body["executed_nodes"] == ["items", "check", "small", "flaky"]
    assert body["skipped_nodes"] == ["big"] and body["failed_nodes"] == [] and body["current_nodes"] == []
    assert body["retries"] == 1 and body["error"] is None
    assert body["started_at"] and body["finished_at"] and body["duration_ms"] >= 0
    assert body["workflow_version"] == (await api.get(f"/v1/workflows/{wid}")).json()["version"]


async def test_list_is_newest_first_and_pages_stay_stable_under_inserts(api: httpx.AsyncClient) -> None:
    wid = _wid()
    await _register(api, {"id": wid, "nodes": [{"id": "a", "type": "noop"}]})
    original = [await _start(api, wid) for _ in range(13)]
    for run_id in original:
        await _summary_when(api, run_id, lambda b: b["status"] == "succeeded")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"workflow_id": wid, "limit": 4, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/runs", params=params)).json()
        seen += [item["run_id"] for item in page["items"]]
        await _start(api, wid)  # a new run arrives between pages
        cursor = page["next_cursor"]
        if cursor is None:
            break
    fresh = [r for r in seen if r not in original]
    assert [r for r in seen if r in original] == list(reversed(original))  # no gap, no duplicate
    assert len(seen) == len(set(seen))
    assert all(r > original[-1] for r in fresh)  # only runs newer than the first page can show up
    failed = (await api.get("/v1/runs", params={"workflow_id": wid, "status": "failed"})).json()
    assert failed["items"] == [] and failed["next_cursor"] is None


async def test_list_and_history_errors_are_400_or_404(api: httpx.AsyncClient) -> None:
    assert_problem(await api.get("/v1/runs", params={"limit": 501}), 400)
    assert_problem(await api.get("/v1/runs", params={"cursor": "!!nope"}), 400)
    assert_problem(await api.get("/v1/runs", params={"status": "exploded"}), 400)
    assert_problem(await api.get(f"/v1/runs/{uuid.uuid4()}"), 404)
    assert_problem(await api.get(f"/v1/runs/{uuid.uuid4()}/lineage"), 404)
    assert_problem(await api.get("/v1/workflows/nope-nope/nodes/a/history"), 404)
    wid = _wid()
    await _register(api, {"id": wid, "nodes": [{"id": "a", "type": "noop"}]})
    body = assert_problem(await api.get(f"/v1/workflows/{wid}/nodes/zz/history"), 404)
    assert "has no node 'zz'" in body["detail"]
    assert (await api.get(f"/v1/workflows/{wid}/nodes/a/history")).json() == {
        "items": [],
        "next_cursor": None,
    }


async def test_lineage_shows_nodes_and_which_edges_carried_data(api: httpx.AsyncClient) -> None:
    wid = _wid()
    await _register(api, {"id": wid, **BRANCHY})
    run_id = await _start(api, wid, {"items": [1, 2, 3], "big": False})
    await _summary_when(api, run_id, lambda b: b["status"] == "succeeded")
    for _ in range(200):
        lineage = (await api.get(f"/v1/runs/{run_id}/lineage")).json()
        if all(n["status"] != "pending" for n in lineage["nodes"]):
            break
        await asyncio.sleep(0.025)
    nodes = {n["id"]: n for n in lineage["nodes"]}
    assert nodes["big"]["status"] == "skipped" and nodes["small"]["status"] == "succeeded"
    assert nodes["items"]["item_count"] == 3 and nodes["items"]["output_bytes"] == len("[1,2,3]")
    assert nodes["flaky"]["attempts"] == 2 and nodes["flaky"]["retries"] == 1
    edges = {(e["from"], e["to"]): e for e in lineage["edges"]}
    assert edges[("check", "small")]["taken"] is True and edges[("check", "big")]["taken"] is False
    assert edges[("items", "check")] == {
        "from": "items",
        "to": "check",
        "when": None,
        "taken": True,
        "items": 3,
    }


async def test_node_history_across_runs_newest_first(api: httpx.AsyncClient) -> None:
    wid = _wid()
    await _register(api, {"id": wid, **BRANCHY})
    runs = [await _start(api, wid, {"items": [i], "big": False}) for i in range(5)]
    for run_id in runs:
        await _summary_when(api, run_id, lambda b: b["status"] == "succeeded")
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(200):
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.get(f"/v1/workflows/{wid}/nodes/flaky/history", params=params)).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            if len(items) == 5 and all(i["status"] == "succeeded" for i in items):
                break
            items, cursor = [], None
            await asyncio.sleep(0.025)
    assert [i["run_id"] for i in items] == list(reversed(runs))
    assert all(i["status"] == "succeeded" and i["attempts"] == 2 and i["error_kind"] is None for i in items)


async def test_lineage_and_the_workflow_carry_the_same_layered_layout(api: httpx.AsyncClient) -> None:
    wid = _wid()
    await _register(api, {"id": wid, **BRANCHY})
    run_id = await _start(api, wid, {"items": [1], "big": True})
    await _summary_when(api, run_id, lambda b: b["status"] == "succeeded")
    layout = (await api.get(f"/v1/runs/{run_id}/lineage")).json()["layout"]
    assert (await api.get(f"/v1/workflows/{wid}")).json()["layout"] == layout
    layers = {node_id: placed["layer"] for node_id, placed in layout["nodes"].items()}
    assert layers == {"items": 0, "check": 1, "big": 2, "small": 2, "flaky": 3}
    assert [(e["from"], e["to"]) for e in layout["edges"]] == [(e["from"], e["to"]) for e in BRANCHY["edges"]]
    assert layout["width"] > 0 and layout["height"] > 0 and layout["node_width"] > 0


async def test_a_run_audit_verifies_its_chain(api: httpx.AsyncClient) -> None:
    wid = _wid()
    await _register(api, {"id": wid, **BRANCHY})
    run_id = await _start(api, wid, {"items": [1], "big": True})
    await _summary_when(api, run_id, lambda b: b["status"] == "succeeded")
    events = (await api.get(f"/v1/runs/{run_id}/events")).json()["items"]
    audit = (await api.get(f"/v1/runs/{run_id}/audit")).json()
    assert audit == {
        "run_id": run_id,
        "ok": True,
        "events": len(events),
        "head_hash": events[-1]["hash"],
        "problems": [],
    }
    assert_problem(await api.get(f"/v1/runs/{uuid.uuid4()}/audit"), 404)


async def test_a_run_page_says_which_log_position_it_reflects(api: httpx.AsyncClient) -> None:
    wid = _wid()
    await _register(api, {"id": wid, **BRANCHY})
    run_id = await _start(api, wid, {"items": [1], "big": True})
    await _summary_when(api, run_id, lambda b: b["status"] == "succeeded")
    page = (await api.get("/v1/runs", params={"workflow_id": wid})).json()
    (item,) = page["items"]
    events = (await api.get(f"/v1/runs/{run_id}/events")).json()["items"]
    # The summary shows the run's end, so the projection has passed the end's position.
    assert page["position"] >= events[-1]["global_position"]
    assert item["last_seq"] == events[-1]["seq"]
