"""Signals over HTTP and the CLI, against a running service: ``POST /v1/runs/{id}/signals/{name}``
and ``flowledger signal``; a ``workflow`` node's child run seen through the read models."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx

from tests.helpers.api import assert_problem, wait_ended
from tests.helpers.paths import REPO_ROOT
from tests.helpers.serving import run_cli


def _wid() -> str:
    return f"sig-{uuid.uuid4().hex[:8]}"


def _approval(wid: str) -> dict[str, Any]:
    return {
        "id": wid,
        "nodes": [
            {"id": "ask", "type": "wait", "config": {"signal": "approve"}},
            {"id": "say", "type": "transform", "config": {"expression": "nodes.ask.note"}},
        ],
        "edges": [{"from": "ask", "to": "say"}],
    }


async def _waiting_run(api: httpx.AsyncClient, wid: str) -> str:
    assert (await api.post("/v1/workflows", json=_approval(wid))).status_code == 201
    run_id: str = (await api.post(f"/v1/workflows/{wid}/runs", json={})).json()["run_id"]
    # Both read models (summaries, node executions) have caught up with the wait: they are
    # projections of the log, each a moment behind it.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        summary = (await api.get(f"/v1/runs/{run_id}")).json()
        lineage = (await api.get(f"/v1/runs/{run_id}/lineage")).json()
        statuses = {n["id"]: n["status"] for n in lineage.get("nodes", [])}
        if summary.get("waiting_nodes") == ["ask"] and statuses.get("ask") == "waiting":
            return run_id
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not wait")


async def _cli(api: httpx.AsyncClient, *args: str) -> tuple[int, str]:
    return await run_cli(api, *args)


async def test_a_signal_over_http_resumes_the_run_and_records_who_sent_it(api: httpx.AsyncClient) -> None:
    run_id = await _waiting_run(api, _wid())
    summary = (await api.get(f"/v1/runs/{run_id}")).json()
    assert summary["waiting_nodes"] == ["ask"]
    lineage = (await api.get(f"/v1/runs/{run_id}/lineage")).json()
    ask = next(n for n in lineage["nodes"] if n["id"] == "ask")
    assert (ask["status"], ask["signal"]) == ("waiting", "approve")

    wrong = assert_problem(await api.post(f"/v1/runs/{run_id}/signals/reject", json={}), 409)
    assert "not waiting for signal 'reject'" in wrong["detail"] and wrong["waiting_for"] == ["approve"]

    sent = await api.post(f"/v1/runs/{run_id}/signals/approve", json={"payload": {"note": "ok by me"}})
    assert sent.status_code == 202, sent.text
    assert sent.json() == {"run_id": run_id, "signal": "approve", "resumed_nodes": ["ask"]}
    events = await wait_ended(api, run_id)
    assert events[-1]["data"]["status"] == "succeeded"
    resumed = next(e for e in events if e["type"] == "run_resumed")
    assert resumed["data"]["actor"].startswith("key:") and resumed["data"]["signal"] == "approve"
    outputs = {
        e["data"]["node_id"]: e["data"]["output"] for e in events if e["type"] == "node_execute_after_data"
    }
    assert outputs == {"ask": {"note": "ok by me"}, "say": "ok by me"}

    again = assert_problem(await api.post(f"/v1/runs/{run_id}/signals/approve", json={}), 409)
    assert "already ended" in again["detail"]


async def test_bad_signal_requests_get_clear_errors(api: httpx.AsyncClient) -> None:
    run_id = await _waiting_run(api, _wid())
    assert (
        "signal names"
        in assert_problem(await api.post(f"/v1/runs/{run_id}/signals/a%20b", json={}), 400)["detail"]
    )
    assert_problem(await api.post(f"/v1/runs/{run_id}/signals/approve", json={"payloadd": 1}), 400)
    assert_problem(await api.post(f"/v1/runs/{run_id}/signals/approve", content=b"{nope"), 400)
    assert_problem(await api.post(f"/v1/runs/{uuid.uuid4()}/signals/approve", json={}), 404)
    assert_problem(await api.post("/v1/runs/not-a-run/signals/approve", json={}), 400)
    # Still waiting after all of that.
    assert (await api.get(f"/v1/runs/{run_id}")).json()["status"] == "waiting"


async def test_the_cli_sends_a_signal_with_a_payload(api: httpx.AsyncClient) -> None:
    run_id = await _waiting_run(api, _wid())
    code, out = await _cli(api, "signal", run_id, "approve", "--payload", "not json")
    assert code != 0 and "not JSON" in out
    code, out = await _cli(api, "signal", run_id, "nope")
    assert code != 0 and "not waiting for signal 'nope'" in out, out
    code, out = await _cli(api, "signal", run_id, "approve", "--payload", '{"note": "from the cli"}')
    assert code == 0, out
    assert "resumed ask" in out
    events = await wait_ended(api, run_id)
    assert events[-1]["data"]["status"] == "succeeded"


async def test_a_child_run_is_linked_to_its_parent(api: httpx.AsyncClient) -> None:
    child, parent = _wid(), _wid()
    child_spec = {
        "id": child,
        "nodes": [{"id": "out", "type": "transform", "config": {"expression": "inputs"}}],
        "edges": [],
    }
    parent_spec = {
        "id": parent,
        "nodes": [
            {
                "id": "sub",
                "type": "workflow",
                "config": {"workflow_id": child, "inputs": {"x": {"$expr": "inputs.x"}}},
            }
        ],
        "edges": [],
    }
    assert (await api.post("/v1/workflows", json=child_spec)).status_code == 201
    assert (await api.post("/v1/workflows", json=parent_spec)).status_code == 201
    run_id = (await api.post(f"/v1/workflows/{parent}/runs", json={"inputs": {"x": 5}})).json()["run_id"]
    events = await wait_ended(api, run_id)
    assert events[-1]["data"]["status"] == "succeeded", events
    outputs = {
        e["data"]["node_id"]: e["data"]["output"] for e in events if e["type"] == "node_execute_after_data"
    }
    assert outputs["sub"] == {"out": {"x": 5}}
    lineage = (await api.get(f"/v1/runs/{run_id}/lineage")).json()
    child_run = next(n for n in lineage["nodes"] if n["id"] == "sub")["child_run_id"]
    deadline = time.monotonic() + 10
    while (
        summary := await api.get(f"/v1/runs/{child_run}")
    ).status_code != 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert summary.json()["parent_run_id"] == run_id


async def test_an_unknown_child_workflow_is_refused_or_fails_clearly(api: httpx.AsyncClient) -> None:
    wid = _wid()
    spec = {
        "id": wid,
        "nodes": [{"id": "sub", "type": "workflow", "config": {"workflow_id": "no-such-flow"}}],
        "edges": [],
    }
    assert (await api.post("/v1/workflows", json=spec)).status_code == 201
    run_id = (await api.post(f"/v1/workflows/{wid}/runs", json={})).json()["run_id"]
    events = await wait_ended(api, run_id)
    after = next(e for e in events if e["type"] == "node_execute_after")
    assert after["data"]["error"]["kind"] == "unknown_workflow"
    assert "no-such-flow" in after["data"]["error"]["message"]


async def test_the_documented_approval_and_invoice_examples_run_as_written(api: httpx.AsyncClient) -> None:
    """docs/workflows.md: the wait and workflow node examples, with the commands it gives."""
    examples = REPO_ROOT / "docs" / "examples"
    code, out = await _cli(api, "workflows", "add", str(examples / "approval.yaml"))
    assert code == 0, out
    code, out = await _cli(api, "run", "approval-demo", "--input", "amount=120", "--input", "to=acme")
    assert code == 0, out
    run_id = next(word for word in out.split() if len(word) == 36 and word.count("-") == 4)
    deadline = time.monotonic() + 20
    while (await api.get(f"/v1/runs/{run_id}")).json().get("status") != "waiting":
        assert time.monotonic() < deadline, "the approval run never waited"
        await asyncio.sleep(0.05)
    code, out = await _cli(api, "signal", run_id, "approve", "--payload", '{"by": "ada"}')
    assert code == 0, out
    events = await wait_ended(api, run_id)
    outputs = {
        e["data"]["node_id"]: e["data"]["output"] for e in events if e["type"] == "node_execute_after_data"
    }
    assert outputs["book"] == {"amount": 120, "approved_by": "ada"}

    for name in ("invoice_child.yaml", "invoice_parent.yaml"):
        code, out = await _cli(api, "workflows", "add", str(examples / name))
        assert code == 0, out
    code, out = await _cli(
        api, "run", "invoice-parent", "--inputs-json", '{"lines": [{"price": 3}, {"price": 4}]}', "--follow"
    )
    assert code == 0, out
    assert "run succeeded" in out
    run_id = next(word for word in out.split() if len(word) == 36 and word.count("-") == 4)
    events = await wait_ended(api, run_id)
    outputs = {
        e["data"]["node_id"]: e["data"]["output"] for e in events if e["type"] == "node_execute_after_data"
    }
    assert outputs == {"invoice": {"total": 7}, "report": "total: 7"}


async def test_runs_show_tells_a_child_run_from_a_fork(api: httpx.AsyncClient) -> None:
    child, parent = _wid(), _wid()
    assert (
        await api.post(
            "/v1/workflows",
            json={
                "id": child,
                "nodes": [{"id": "w", "type": "wait", "config": {"signal": "go"}}],
                "edges": [],
            },
        )
    ).status_code == 201
    spec = {
        "id": parent,
        "nodes": [{"id": "sub", "type": "workflow", "config": {"workflow_id": child}}],
        "edges": [],
    }
    assert (await api.post("/v1/workflows", json=spec)).status_code == 201
    run_id = (await api.post(f"/v1/workflows/{parent}/runs", json={})).json()["run_id"]
    deadline = time.monotonic() + 20
    while True:
        lineage = (await api.get(f"/v1/runs/{run_id}/lineage")).json()
        child_run = lineage.get("nodes", [{}])[0].get("child_run_id") if "nodes" in lineage else None
        if child_run and (await api.get(f"/v1/runs/{child_run}")).status_code == 200:
            break
        assert time.monotonic() < deadline, lineage
        await asyncio.sleep(0.05)
    code, out = await _cli(api, "runs", "show", child_run)
    assert code == 0 and f"child of run {run_id} (its node sub)" in out and "forked" not in out, out
    code, out = await _cli(api, "runs", "show", run_id)
    assert code == 0 and f"child run {child_run}" in out, out
    assert (await api.post(f"/v1/runs/{run_id}/cancel", json={})).status_code == 202
    assert (await wait_ended(api, child_run))[-1]["type"] == "run_cancelled"


async def test_a_run_just_started_is_found_before_its_summary_is_projected(api: httpx.AsyncClient) -> None:
    """GET /v1/runs/{id} and its lineage right after the 202: never a 404 for a run that exists
    (the projection may be a moment behind the log)."""
    wid = _wid()
    assert (await api.post("/v1/workflows", json=_approval(wid))).status_code == 201
    for _ in range(10):
        run_id = (await api.post(f"/v1/workflows/{wid}/runs", json={})).json()["run_id"]
        summary = await api.get(f"/v1/runs/{run_id}")
        assert summary.status_code == 200, summary.text
        assert summary.json()["run_id"] == run_id
        lineage = await api.get(f"/v1/runs/{run_id}/lineage")
        assert lineage.status_code == 200 and lineage.json()["run_id"] == run_id
