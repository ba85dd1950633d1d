"""Live push over real HTTP: SSE (httpx streaming) and the n8n-style WebSocket (websockets client)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
import uuid
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st

from service.config import WorkerSettings
from tests.helpers.api import sse, wait_ended
from tests.helpers.servers import Servers
from tests.helpers.serving import auth_headers, serve_app
from tests.helpers.workflows import steps


def _wid() -> str:
    return f"push-{uuid.uuid4().hex[:8]}"


async def _start(api: httpx.AsyncClient, spec: dict[str, Any], inputs: dict[str, Any] | None = None) -> str:
    wid = _wid()
    assert (await api.post("/v1/workflows", json={"id": wid, **spec})).status_code == 201
    return str((await api.post(f"/v1/workflows/{wid}/runs", json={"inputs": inputs or {}})).json()["run_id"])


async def collect(api: httpx.AsyncClient, path: str, **kw: Any) -> list[dict[str, Any]]:
    return [m async for m in sse(api, path, **kw)]


async def test_sse_streams_a_live_run_to_its_end(api: httpx.AsyncClient) -> None:
    run_id = await _start(api, steps(3, 150))
    messages = await asyncio.wait_for(collect(api, f"/v1/runs/{run_id}/stream"), 20)
    stored = await wait_ended(api, run_id)
    assert [int(m["id"]) for m in messages] == [e["seq"] for e in stored]
    assert [m["event"] for m in messages] == [e["type"] for e in stored]
    assert [json.loads(m["data"]) for m in messages] == stored
    assert messages[-1]["event"] == "run_finished"


@settings(max_examples=12)
@given(cut=st.integers(0, 14), pause_ms=st.integers(0, 300))
async def test_resuming_with_last_event_id_gives_each_event_exactly_once(
    api: httpx.AsyncClient, cut: int, pause_ms: int
) -> None:
    """Disconnect after ``cut`` events (while the run is still live, or exactly where the stored
    events end), wait, reconnect with Last-Event-ID: before + after == the run's events."""
    run_id = await _start(api, steps(4, 60))
    before = await asyncio.wait_for(collect(api, f"/v1/runs/{run_id}/stream", take=cut), 20) if cut else []
    await asyncio.sleep(pause_ms / 1000)
    resume = before[-1]["id"] if before else None
    after = await asyncio.wait_for(collect(api, f"/v1/runs/{run_id}/stream", last_event_id=resume), 20)
    stored = await wait_ended(api, run_id)
    assert [int(m["id"]) for m in before + after] == [e["seq"] for e in stored]
    assert [json.loads(m["data"])["event_id"] for m in before + after] == [e["event_id"] for e in stored]


async def test_tenant_stream_filters_and_resumes_by_global_position(api: httpx.AsyncClient) -> None:
    wid = _wid()
    assert (await api.post("/v1/workflows", json={"id": wid, **steps(2, 10)})).status_code == 201

    async def read(last: str | None, take: int) -> list[dict[str, Any]]:
        path = f"/v1/stream?workflow_id={wid}&type=run_started,run_finished"
        return await asyncio.wait_for(collect(api, path, last_event_id=last, take=take), 20)

    reader = asyncio.create_task(read(None, 4))
    await asyncio.sleep(0.2)
    runs = [str((await api.post(f"/v1/workflows/{wid}/runs", json={})).json()["run_id"]) for _ in range(3)]
    first = await reader
    assert [m["event"] for m in first].count("run_started") >= 2
    rest = await read(first[-1]["id"], 6 - len(first))
    everything = first + rest
    positions = [int(m["id"]) for m in everything]
    assert positions == sorted(set(positions))  # in log order, no repeats across the reconnect
    assert sorted(m["event"] for m in everything) == ["run_finished"] * 3 + ["run_started"] * 3
    assert {json.loads(m["data"])["run_id"] for m in everything} == set(runs)
    bad = await api.get("/v1/stream?type=run_exploded")
    assert bad.status_code == 400 and "run_exploded" in bad.json()["detail"]


async def test_after_position_now_sends_only_what_happens_next(api: httpx.AsyncClient) -> None:
    earlier = await _start(api, steps(1, 1))
    await wait_ended(api, earlier)
    reader = asyncio.create_task(
        asyncio.wait_for(collect(api, "/v1/stream?after_position=now&type=run_queued", take=1), 20)
    )
    await asyncio.sleep(0.3)  # the stream is open (its start is fixed when it opens)
    later = await _start(api, steps(1, 1))
    (only,) = await reader
    assert json.loads(only["data"])["run_id"] == later


async def test_resuming_after_the_last_event_ends_the_stream_at_once(api: httpx.AsyncClient) -> None:
    run_id = await _start(api, steps(1, 1))
    stored = await wait_ended(api, run_id)
    last = str(stored[-1]["seq"])
    assert await asyncio.wait_for(collect(api, f"/v1/runs/{run_id}/stream", last_event_id=last), 5) == []


async def test_sse_errors(api: httpx.AsyncClient) -> None:
    assert (await api.get(f"/v1/runs/{uuid.uuid4()}/stream")).status_code == 404
    run_id = await _start(api, steps(1, 1))
    bad = await api.get(f"/v1/runs/{run_id}/stream", headers={"Last-Event-ID": "abc"})
    assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["detail"]
    await wait_ended(api, run_id)
    # A resume point past the run's last event names an event nobody was sent: refused at once.
    past = await api.get(f"/v1/runs/{run_id}/stream", headers={"Last-Event-ID": "50"})
    assert past.status_code == 400 and "past the run's last event" in past.json()["detail"]


def _ws_url(api: httpx.AsyncClient, ref: str = "tab-1") -> str:
    return str(api.base_url).replace("http://", "ws://") + f"/v1/push?pushRef={ref}"


async def _ws_until_finished(ws: Any, timeout: float = 20) -> list[dict[str, Any]]:
    out = []
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            out.append(message)
            if message["type"] == "executionFinished":
                return out


async def test_websocket_push_speaks_n8n(api: httpx.AsyncClient) -> None:
    run_id = await _start(
        api, {"nodes": [{"id": "t", "type": "transform", "config": {"expression": "inputs"}}]}, {"x": 1}
    )
    async with websockets.connect(_ws_url(api), additional_headers=auth_headers(api)) as ws:
        await ws.send(json.dumps({"type": "subscribe", "data": {"executionId": run_id}}))
        messages = await _ws_until_finished(ws)
    assert [m["type"] for m in messages] == [
        "executionStarted",
        "nodeExecuteBefore",
        "nodeExecuteAfter",
        "nodeExecuteAfterData",
        "executionFinished",
    ]
    assert all(m["data"]["executionId"] == run_id for m in messages)
    after = messages[2]["data"]
    assert (
        after["nodeName"] == "t"
        and after["data"]["executionStatus"] == "success"
        and "output" not in json.dumps(after)
    )
    assert messages[3]["data"]["data"] == {"x": 1}
    assert messages[4]["data"]["status"] == "success"

    # resume from a seq: only what came after it
    async with websockets.connect(_ws_url(api, "tab-2"), additional_headers=auth_headers(api)) as ws:
        await ws.send(json.dumps({"type": "resume", "data": {"executionId": run_id, "lastSeq": 2}}))
        resumed = await _ws_until_finished(ws)
    assert [m["type"] for m in resumed] == ["nodeExecuteAfter", "nodeExecuteAfterData", "executionFinished"]


async def test_websocket_cancel_and_bad_messages(api: httpx.AsyncClient) -> None:
    run_id = await _start(api, steps(1, 10_000))
    async with websockets.connect(_ws_url(api), additional_headers=auth_headers(api)) as ws:
        await ws.send(json.dumps({"type": "cancel", "data": {"executionId": run_id}}))
        assert "subscribe" in json.loads(await ws.recv())["data"]["message"]
        await ws.send(json.dumps({"type": "dance"}))
        assert "unknown message type" in json.loads(await ws.recv())["data"]["message"]
        await ws.send(json.dumps({"type": "subscribe", "data": {}}))
        assert "executionId" in json.loads(await ws.recv())["data"]["message"]
        await ws.send("not json")
        assert "JSON" in json.loads(await ws.recv())["data"]["message"]
        await ws.send(json.dumps({"type": "subscribe", "data": {"executionId": str(uuid.uuid4())}}))
        assert "no run" in json.loads(await ws.recv())["data"]["message"]
        await ws.send(json.dumps({"type": "resume", "data": {"executionId": run_id, "lastSeq": 999}}))
        assert "past the run's last event" in json.loads(await ws.recv())["data"]["message"]
        await ws.send(json.dumps({"type": "subscribe", "data": {"executionId": run_id}}))
        first = json.loads(await ws.recv())
        assert first["type"] == "executionStarted"
        await ws.send(
            json.dumps({"type": "cancel", "data": {"executionId": run_id, "reason": "from the tab"}})
        )
        messages = await _ws_until_finished(ws, timeout=10)
    assert messages[-1]["data"]["status"] == "canceled"


async def test_websocket_without_push_ref_is_told_why(api: httpx.AsyncClient) -> None:
    url = str(api.base_url).replace("http://", "ws://") + "/v1/push"
    async with websockets.connect(url, additional_headers=auth_headers(api)) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert "pushRef" in closed.value.rcvd.reason


class RawWebSocket:
    """A WebSocket client on a bare socket with a tiny receive buffer: it can truly stop reading
    (library clients keep draining the socket into memory in the background)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, api: httpx.AsyncClient, push_ref: str) -> RawWebSocket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((api.base_url.host, api.base_url.port or 80))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**16)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /v1/push?pushRef={push_ref} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                f"Authorization: {api.headers['Authorization']}\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
        return cls(reader, writer)

    async def send_json(self, value: Any) -> None:
        payload = json.dumps(value).encode()
        mask = os.urandom(4)
        assert len(payload) < 126
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
        await self.writer.drain()

    async def read_until_close(self) -> tuple[int, str]:
        """Read frames (now reading at full speed) until the server's close frame."""
        while True:
            head = await self.reader.readexactly(2)
            length = head[1] & 0x7F
            if length == 126:
                length = int.from_bytes(await self.reader.readexactly(2), "big")
            elif length == 127:
                length = int.from_bytes(await self.reader.readexactly(8), "big")
            body = await self.reader.readexactly(length)
            if head[0] & 0x0F == 0x8:
                return int.from_bytes(body[:2], "big"), body[2:].decode()


async def test_a_client_that_never_reads_is_cut_off_and_others_are_not_delayed(servers: Servers) -> None:
    big = {
        "nodes": [
            {"id": f"n{i}", "type": "transform", "config": {"expression": "inputs.blob"}} for i in range(10)
        ]
    }
    async with serve_app(servers, own_database=True, push_queue_size=20, push_send_timeout_s=1.0) as api:
        runs = [await _start(api, big, {"blob": "y" * 100_000}) for _ in range(10)]
        slow = await RawWebSocket.connect(api, "slow")
        for run_id in runs:
            await slow.send_json({"type": "subscribe", "data": {"executionId": run_id}})
        # The slow client now reads nothing; a fast one follows the same runs meanwhile.
        started = time.monotonic()
        async with websockets.connect(
            _ws_url(api, "fast"), max_size=None, additional_headers=auth_headers(api)
        ) as fast:
            for run_id in runs:
                await fast.send(json.dumps({"type": "subscribe", "data": {"executionId": run_id}}))
            finished = 0
            async with asyncio.timeout(60):
                while finished < len(runs):
                    if json.loads(await fast.recv())["type"] == "executionFinished":
                        finished += 1
        fast_took = time.monotonic() - started
        await asyncio.sleep(2.0)  # the slow client keeps not reading past the send timeout
        code, reason = await asyncio.wait_for(slow.read_until_close(), 30)
        slow.writer.close()
    assert fast_took < 30, "the fast client was held up"
    assert code == 4008 and "too slow" in reason, (code, reason)


async def test_a_six_mib_output_is_trimmed_in_push_and_complete_over_rest(servers: Servers) -> None:
    worker = WorkerSettings(lease_s=5, poll_s=0.2, output_cap_bytes=10 * 1024 * 1024)
    async with serve_app(servers, own_database=True, worker=worker) as api:
        spec = {"nodes": [{"id": "big", "type": "transform", "config": {"expression": "inputs.blob"}}]}
        run_id = await _start(api, spec, {"blob": "z" * (6 * 1024 * 1024)})
        async with websockets.connect(
            _ws_url(api), max_size=None, additional_headers=auth_headers(api)
        ) as ws:
            await ws.send(json.dumps({"type": "subscribe", "data": {"executionId": run_id}}))
            messages = await _ws_until_finished(ws, timeout=30)
        data_message = next(m for m in messages if m["type"] == "nodeExecuteAfterData")
        assert data_message["data"]["trimmed"] is True and data_message["data"]["nodeName"] == "big"
        assert all(len(json.dumps(m)) < 5 * 1024 * 1024 for m in messages)
        full = (await api.get(data_message["data"]["url"])).json()["items"][0]
        assert full["type"] == "node_execute_after_data" and full["data"]["output"] == "z" * (6 * 1024 * 1024)
