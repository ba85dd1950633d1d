"""Push sends the same message live and after the fact (issue 10, defect 7): an output over the
NATS payload cap is trimmed for a client that subscribes after the run ended too; and one
WebSocket follows several runs under one pushRef, as n8n's push does."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import websockets

from service.config import WorkerSettings
from tests.helpers.api import sse, wait_ended
from tests.helpers.servers import Servers
from tests.helpers.serving import auth_headers, serve_app
from tests.helpers.workflows import steps

SIX_MIB = 6 * 1024 * 1024


def _ws_url(api: httpx.AsyncClient, ref: str) -> str:
    return str(api.base_url).replace("http://", "ws://") + f"/v1/push?pushRef={ref}"


async def _start(api: httpx.AsyncClient, spec: dict[str, Any], inputs: dict[str, Any] | None = None) -> str:
    wid = f"cap-{uuid.uuid4().hex[:8]}"
    assert (await api.post("/v1/workflows", json={"id": wid, **spec})).status_code == 201
    return str((await api.post(f"/v1/workflows/{wid}/runs", json={"inputs": inputs or {}})).json()["run_id"])


async def _messages_until_finished(ws: Any, runs: set[str], timeout: float = 30) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    finished: set[str] = set()
    async with asyncio.timeout(timeout):
        while finished != runs:
            message = json.loads(await ws.recv())
            out.append(message)
            if message["type"] == "executionFinished":
                finished.add(message["data"]["executionId"])
    return out


async def test_a_big_output_is_trimmed_for_a_client_that_subscribes_after_the_run_ended(
    servers: Servers,
) -> None:
    worker = WorkerSettings(lease_s=5, poll_s=0.2, output_cap_bytes=10 * 1024 * 1024)
    async with serve_app(servers, own_database=True, worker=worker) as api:
        spec = {"nodes": [{"id": "big", "type": "transform", "config": {"expression": "inputs.blob"}}]}
        run_id = await _start(api, spec, {"blob": "z" * SIX_MIB})
        await wait_ended(api, run_id, timeout=30)

        async with websockets.connect(
            _ws_url(api, "late"), max_size=None, additional_headers=auth_headers(api)
        ) as ws:
            await ws.send(json.dumps({"type": "subscribe", "data": {"executionId": run_id}}))
            messages = await _messages_until_finished(ws, {run_id})
        data_message = next(m for m in messages if m["type"] == "nodeExecuteAfterData")
        assert data_message["data"]["trimmed"] is True
        assert all(len(json.dumps(m)) < 5 * 1024 * 1024 for m in messages)

        frames = [f async for f in sse(api, f"/v1/runs/{run_id}/stream")]
        after_data = next(f for f in frames if f["event"] == "node_execute_after_data")
        assert json.loads(after_data["data"])["data"]["trimmed"] is True, "the catch-up sent the whole output"
        assert max(len(f["data"]) for f in frames) < 5 * 1024 * 1024


async def test_one_websocket_follows_several_runs_under_one_push_ref(api: httpx.AsyncClient) -> None:
    runs = {await _start(api, steps(2, 50)) for _ in range(3)}
    async with websockets.connect(_ws_url(api, "one-tab"), additional_headers=auth_headers(api)) as ws:
        for run_id in runs:
            await ws.send(json.dumps({"type": "subscribe", "data": {"executionId": run_id}}))
        messages = await _messages_until_finished(ws, runs)
    by_run: dict[str, list[str]] = {}
    for m in messages:
        by_run.setdefault(m["data"]["executionId"], []).append(m["type"])
    assert set(by_run) == runs
    for types in by_run.values():
        assert types[0] == "executionStarted" and types[-1] == "executionFinished"
        assert types.count("nodeExecuteBefore") == 2
