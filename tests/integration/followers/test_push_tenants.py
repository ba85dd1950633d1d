"""Live push never crosses tenants: the SSE streams (per run and per tenant) and the WebSocket
push channel need a credential with ``runs:read``, and carry only the caller's tenant's events,
neither while catching up nor live. Cancelling over the WebSocket needs ``runs:write``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from service.config import ALL_SCOPES
from tests.helpers.api import sse, wait_ended
from tests.helpers.servers import Servers
from tests.helpers.serving import serve_app
from tests.helpers.tenants import TenantObjects, api_keys, bearer, make_objects
from tests.helpers.workflows import steps


@dataclass
class Push:
    client: httpx.AsyncClient
    """No credential of its own."""
    a: TenantObjects
    b: TenantObjects
    tokens: dict[str, str]
    """More keys of tenant A: ``read`` (runs:read only) and ``workflows`` (no runs scope)."""

    def as_(self, token: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.client.base_url, headers=bearer(token), timeout=30)

    def ws_url(self, ref: str) -> str:
        return str(self.client.base_url).replace("http://", "ws://") + f"/v1/push?pushRef={ref}"


@pytest.fixture(scope="module")
async def push(servers: Servers) -> AsyncIterator[Push]:
    async with serve_app(servers, own_database=True) as admin:
        database_url: str = admin.database_url  # type: ignore[attr-defined]
        a_tokens = await api_keys(
            database_url,
            "acme",
            {"all": ALL_SCOPES, "read": ["runs:read"], "workflows": ["workflows:read", "workflows:write"]},
        )
        b_token = (await api_keys(database_url, "globex", {"all": ALL_SCOPES}))["all"]
        async with httpx.AsyncClient(base_url=admin.base_url, timeout=10) as client:
            a = await make_objects(client, "acme", a_tokens["all"], "acme")
            b = await make_objects(client, "globex", b_token, "globex")
            yield Push(client, a, b, a_tokens)


async def _start(client: httpx.AsyncClient, workflow_id: str, inputs: dict[str, Any]) -> str:
    response = await client.post(f"/v1/workflows/{workflow_id}/runs", json={"inputs": inputs})
    assert response.status_code == 202, response.text
    return str(response.json()["run_id"])


async def _register(client: httpx.AsyncClient, spec: dict[str, Any]) -> str:
    workflow_id = f"live-{uuid.uuid4().hex[:8]}"
    response = await client.post("/v1/workflows", json={"id": workflow_id, **spec})
    assert response.status_code == 201, response.text
    return workflow_id


async def test_the_tenant_stream_never_carries_another_tenants_events(push: Push) -> None:
    """B follows ``/v1/stream`` from the start of the log (catch-up: A's finished runs) while A runs
    a live run; B's own run started after A's ended marks how far B's stream has come."""
    a_secret = f"live-secret-{uuid.uuid4().hex[:8]}"
    async with push.as_(push.a.token) as a, push.as_(push.b.token) as b:
        a_live = await _register(a, steps(3, 100))
        b_sentinel = await _register(b, steps(1, 1))
        seen: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
        last: dict[str, str] = {}  # reader -> the run whose end it waits for

        async def follow(name: str, client: httpx.AsyncClient) -> None:
            async for message in sse(client, "/v1/stream"):
                seen[name].append(message)
                if message["event"] == "run_finished" and json.loads(message["data"])["run_id"] == last.get(
                    name
                ):
                    return

        readers = [asyncio.create_task(follow(name, c)) for name, c in (("a", a), ("b", b))]
        await asyncio.sleep(0.3)  # both streams are open and caught up (a handful of stored events)
        live_run = last["a"] = await _start(a, a_live, {"card": a_secret})
        await wait_ended(a, live_run)
        last["b"] = await _start(b, b_sentinel, {})
        await asyncio.wait_for(asyncio.gather(*readers), 20)

    payloads = [json.loads(m["data"]) for m in seen["b"]]
    assert {p["tenant"] for p in payloads} == {"globex"}
    assert {push.b.run_id, push.b.other_run_id, last["b"]} <= {p["run_id"] for p in payloads}
    text = json.dumps(seen["b"])
    for marker in [*push.a.markers, live_run, a_live, a_secret]:
        assert marker not in text
    # A's own stream did carry A's live run (the check above is not vacuous).
    a_payloads = [json.loads(m["data"]) for m in seen["a"]]
    assert {push.a.run_id, live_run} <= {p["run_id"] for p in a_payloads}
    assert {p["tenant"] for p in a_payloads} == {"acme"}


async def test_the_tenant_stream_filtered_on_another_tenants_workflow_is_empty(push: Push) -> None:
    async with push.as_(push.b.token) as b:
        path = f"/v1/stream?workflow_id={push.a.workflow_id}"
        got: list[dict[str, Any]] = []

        async def read() -> None:
            async for message in sse(b, path, last_event_id="0"):
                got.append(message)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(read(), 1.0)
    assert got == []


async def test_a_run_stream_of_another_tenant_is_unknown(push: Push) -> None:
    async with push.as_(push.b.token) as b:
        for headers in ({}, {"Last-Event-ID": "0"}):
            answer = await b.get(f"/v1/runs/{push.a.run_id}/stream", headers=headers)
            assert answer.status_code == 404 and answer.json()["detail"] == f"no run {push.a.run_id}"
            assert push.a.workflow_id not in answer.text


async def _refused(url: str, headers: dict[str, str]) -> int:
    """The HTTP status a WebSocket handshake is refused with."""
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(url, additional_headers=headers):
            pass
    return refused.value.response.status_code


async def test_the_push_channel_needs_a_credential_with_runs_read(push: Push) -> None:
    url = push.ws_url("anon")
    assert await _refused(url, {}) in (401, 403)
    assert await _refused(url, {"Authorization": "Bearer flk_nope_nope"}) in (401, 403)
    assert await _refused(url, {"Authorization": f"Basic {push.a.token}"}) in (401, 403)
    assert await _refused(url, bearer(push.tokens["workflows"])) == 403  # no runs:read
    # No token in the URL either: the query string is not a credential.
    assert await _refused(f"{url}&token={push.a.token}", {}) in (401, 403)


async def _recv(ws: Any, timeout: float = 10) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return message


async def test_subscribing_to_another_tenants_run_is_an_error_and_sends_nothing(push: Push) -> None:
    a_run, b_run = push.a.run_id, push.b.run_id
    async with websockets.connect(push.ws_url("b-tab"), additional_headers=bearer(push.b.token)) as ws:
        for kind, data in [
            ("subscribe", {"executionId": a_run}),
            ("resume", {"executionId": a_run, "lastSeq": 0}),
            ("cancel", {"executionId": a_run}),
        ]:
            await ws.send(json.dumps({"type": kind, "data": data}))
            reply = await _recv(ws)
            assert reply["type"] == "error", reply
            assert push.a.workflow_id not in json.dumps(reply)
        # The channel still works for B's own run, and nothing of A's run ever came.
        await ws.send(json.dumps({"type": "subscribe", "data": {"executionId": b_run}}))
        messages: list[dict[str, Any]] = []
        while not messages or messages[-1]["type"] != "executionFinished":
            messages.append(await _recv(ws))
    assert {m["data"]["executionId"] for m in messages} == {b_run}
    assert a_run not in json.dumps(messages)


async def test_cancelling_over_the_push_channel_needs_runs_write(push: Push) -> None:
    async with push.as_(push.a.token) as a:
        workflow_id = await _register(a, steps(2, 400))
        run_id = await _start(a, workflow_id, {})
        headers = bearer(push.tokens["read"])
        async with websockets.connect(push.ws_url("a-reader"), additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "subscribe", "data": {"executionId": run_id}}))
            assert (await _recv(ws))["type"] == "executionStarted"
            await ws.send(json.dumps({"type": "cancel", "data": {"executionId": run_id}}))
            replies = []
            while True:  # the error arrives among the run's messages
                replies.append(await _recv(ws))
                if replies[-1]["type"] in ("error", "executionFinished"):
                    break
            assert replies[-1]["type"] == "error" and "runs:write" in replies[-1]["data"]["message"]
        events = await wait_ended(a, run_id)
    assert events[-1]["type"] == "run_finished"
    assert "run_cancel_requested" not in [e["type"] for e in events]
