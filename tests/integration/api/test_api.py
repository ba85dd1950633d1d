"""The /v1 workflow and run routes through a real HTTP server (uvicorn) and client (httpx)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.api import assert_problem, wait_ended
from tests.helpers.paths import EXAMPLES
from tests.helpers.serving import run_cli


def _wid() -> str:
    return f"api-{uuid.uuid4().hex[:8]}"


def _spec(workflow_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "nodes": [
            {"id": "a", "type": "noop"},
            {"id": "b", "type": "transform", "config": {"expression": "inputs.n"}},
        ],
        "edges": [{"from": "a", "to": "b"}],
        **extra,
    }


async def test_register_run_and_read_events(api: httpx.AsyncClient) -> None:
    wid = _wid()
    created = await api.post("/v1/workflows", json=_spec(wid))
    assert created.status_code == 201
    body = created.json()
    assert body["id"] == wid and body["created"] is True
    again = await api.post("/v1/workflows", json=_spec(wid))
    assert again.status_code == 200 and again.json() == {**body, "created": False}
    without_body = await api.post(f"/v1/workflows/{wid}/runs")  # no inputs at all
    assert without_body.status_code == 202, without_body.text
    as_yaml = await api.post(
        "/v1/workflows", content=yaml.safe_dump(_spec(wid)), headers={"content-type": "application/yaml"}
    )
    assert as_yaml.json()["version"] == body["version"]

    accepted = await api.post(
        f"/v1/workflows/{wid}/runs", json={"inputs": {"n": 7}, "idempotency_key": "once"}
    )
    assert accepted.status_code == 202
    run = accepted.json()
    assert run["status"] == "queued" and run["workflow_version"] == body["version"]
    assert run["status_url"] == f"/v1/runs/{run['run_id']}"
    assert run["events_url"] == f"/v1/runs/{run['run_id']}/events"
    assert run["stream_url"] == f"/v1/runs/{run['run_id']}/stream"
    repeat = (
        await api.post(f"/v1/workflows/{wid}/runs", json={"inputs": {"n": 7}, "idempotency_key": "once"})
    ).json()
    assert repeat["run_id"] == run["run_id"] and repeat["created"] is False

    events = await wait_ended(api, run["run_id"])
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert events[-1]["data"] == {
        "type": "run_finished",
        "status": "succeeded",
        "error": None,
        "duration_ms": events[-1]["data"]["duration_ms"],
    }
    output = next(e for e in events if e["type"] == "node_execute_after_data" and e["data"]["node_id"] == "b")
    assert output["data"]["output"] == 7

    page = (await api.get(f"/v1/runs/{run['run_id']}/events", params={"limit": 3})).json()
    assert [e["seq"] for e in page["items"]] == [0, 1, 2] and page["next_cursor"] == "2"
    rest = (await api.get(f"/v1/runs/{run['run_id']}/events", params={"after_seq": 2, "limit": 1000})).json()
    assert [e["seq"] for e in rest["items"]] == list(range(3, len(events))) and rest["next_cursor"] is None

    listed = (await api.get("/v1/workflows", params={"limit": 500})).json()["items"]
    assert any(w["id"] == wid for w in listed)
    detail = (await api.get(f"/v1/workflows/{wid}")).json()
    assert detail["version"] == body["version"] and detail["spec"]["id"] == wid


async def test_cancel_answers_202_then_409_once_ended(api: httpx.AsyncClient) -> None:
    wid = _wid()
    spec = {"id": wid, "nodes": [{"id": "wait", "type": "delay", "config": {"ms": 10000}}], "edges": []}
    assert (await api.post("/v1/workflows", json=spec)).status_code == 201
    run_id = (await api.post(f"/v1/workflows/{wid}/runs", json={})).json()["run_id"]
    cancelled = await api.post(f"/v1/runs/{run_id}/cancel", json={"reason": "enough"})
    assert cancelled.status_code == 202 and cancelled.json() == {
        "run_id": run_id,
        "status": "cancel_requested",
    }
    events = await wait_ended(api, run_id)
    assert events[-1]["type"] == "run_cancelled"
    body = assert_problem(await api.post(f"/v1/runs/{run_id}/cancel"), 409)
    assert "already ended with status cancelled" in body["detail"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "says"),
    [
        ("GET", "/v1/workflows/nope-{u}", {}, 404, "is not registered"),
        ("POST", "/v1/workflows/nope-{u}/runs", {"json": {}}, 404, "register it with POST /v1/workflows"),
        ("GET", "/v1/runs/{uuid}/events", {}, 404, "no run"),
        ("POST", "/v1/runs/{uuid}/cancel", {}, 404, "no run"),
        ("GET", "/v1/runs/not-a-uuid/events", {}, 400, "'not-a-uuid' is not a valid run id"),
        ("GET", "/v1/runs/{uuid}/diff/xyz", {}, 400, "'xyz' is not a valid run id"),
        ("GET", "/v1/runs/{uuid}/nothing", {}, 404, "no route"),
        ("GET", "/v1/runs/{uuid}/events?limit=100000", {}, 400, "limit"),
        ("GET", "/v1/runs/{uuid}/events?after_seq=x", {}, 400, "after_seq"),
        ("GET", "/v1/runs/{uuid}/events?after_seq=2147483648", {}, 400, "after_seq"),
        ("GET", "/v1/runs/{uuid}/stream?after_seq=2147483648", {}, 400, "between -1 and"),
        ("GET", "/v1/stream?after_position=9223372036854775808", {}, 400, "between -1 and"),
        ("GET", "/v1/workflows/a%00b", {}, 400, "NUL"),
        ("POST", "/v1/workflows/a%00b/runs", {"json": {}}, 400, "NUL"),
        ("GET", "/v1/runs?workflow_id=a%00b", {}, 400, "NUL"),
        ("POST", "/v1/workflows", {"content": b"{not json"}, 400, "parse"),
        ("POST", "/v1/workflows", {"json": {"id": "x", "nodes": "no"}}, 400, "nodes"),
        ("POST", "/v1/workflows", {"content": b"x" * (1024 * 1024 + 1)}, 413, "at most"),
        ("DELETE", "/v1/workflows", {}, 405, "not allowed"),
    ],
)
async def test_error_paths_are_problem_details(
    api: httpx.AsyncClient, method: str, path: str, kwargs: dict[str, Any], status: int, says: str
) -> None:
    url = path.format(u=uuid.uuid4().hex[:6], uuid=uuid.uuid4())
    body = assert_problem(await api.request(method, url, **kwargs), status)
    assert says.lower() in str(body).lower(), body


async def test_bad_start_bodies_are_400(api: httpx.AsyncClient) -> None:
    wid = _wid()
    await api.post("/v1/workflows", json=_spec(wid))
    for bad in ({"inputs": "text"}, {"unexpected": 1}, {"idempotency_key": ""}, [1, 2]):
        assert_problem(await api.post(f"/v1/workflows/{wid}/runs", json=bad), 400)
    assert_problem(await api.post(f"/v1/workflows/{wid}/runs", json={"version": "nope"}), 404)


_defects = st.sampled_from(
    ["duplicate_node", "unknown_edge_node", "cycle", "unknown_node_type", "bad_node_config"]
)


@settings(max_examples=20)
@given(defect=_defects, size=st.integers(2, 6))
async def test_invalid_specs_are_rejected_and_write_nothing(
    api: httpx.AsyncClient, defect: str, size: int
) -> None:
    wid = _wid()
    nodes: list[dict[str, Any]] = [{"id": f"n{i}", "type": "noop"} for i in range(size)]
    edges = [{"from": f"n{i}", "to": f"n{i + 1}"} for i in range(size - 1)]
    if defect == "duplicate_node":
        nodes.append({"id": "n0", "type": "noop"})
    elif defect == "unknown_edge_node":
        edges.append({"from": "n0", "to": "ghost"})
    elif defect == "cycle":
        edges.append({"from": f"n{size - 1}", "to": "n1" if size > 2 else "n0"})
    elif defect == "unknown_node_type":
        nodes[-1]["type"] = "teleport"
    else:
        nodes[-1] = {"id": nodes[-1]["id"], "type": "delay", "config": {"ms": "soon"}}
    response = await api.post("/v1/workflows", json={"id": wid, "nodes": nodes, "edges": edges})
    body = assert_problem(response, 400)
    assert defect in [p["code"] for p in body["problems"]]
    assert_problem(await api.get(f"/v1/workflows/{wid}"), 404)


async def _cli(api: httpx.AsyncClient, *args: str) -> tuple[int, str]:
    return await run_cli(api, *args)


async def test_cli_adds_workflows_and_follows_runs_to_their_exit_code(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    code, out = await _cli(api, "workflows", "add", str(EXAMPLES / "retries.yaml"))
    assert code == 0 and "retries version" in out
    code, out = await _cli(api, "run", "retries", "--follow")
    assert code == 0, out
    assert "retry attempt 2" in out and "run succeeded" in out
    run_id = out.split()[1]
    code, out = await _cli(api, "runs", "show", run_id)
    assert code == 0 and "succeeded" in out and "flaky" in out and "fail" in out, out
    code, out = await _cli(api, "runs", "list", "--workflow", "retries", "--limit", "5")
    assert code == 0 and run_id[:8] in out, out

    failing = tmp_path / "fails.json"
    failing.write_text(
        json.dumps({"id": f"cli-{uuid.uuid4().hex[:6]}", "nodes": [{"id": "x", "type": "fail"}]})
    )
    code, out = await _cli(api, "workflows", "add", str(failing))
    assert code == 0
    code, out = await _cli(api, "run", json.loads(failing.read_text())["id"], "--input", "n=3", "--follow")
    assert code == 1 and "run failed" in out

    broken = tmp_path / "broken.yaml"
    broken.write_text("id: b\nnodes:\n  - {id: a, type: nope}\n")
    code, out = await _cli(api, "workflows", "add", str(broken))
    assert code != 0 and "unknown node type" in out.lower()
