"""Live push across service instances: two apps on one database and one NATS stream.

Only one relay is active across them (advisory lock) and only instance A has a
worker, so a run started through A is executed by A and may be relayed by
either; a client of instance B must still get every event live, through B's
own NATS subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import httpx
import websockets
from litestar import Litestar

from service.api.app import create_app
from service.config import ALL_SCOPES, Settings
from tests.helpers.api import sse, wait_ended
from tests.helpers.databases import scratch_database
from tests.helpers.servers import Servers
from tests.helpers.serving import api_key, auth_headers, delete_stream, free_port, serve
from tests.helpers.workflows import steps

LIVE_S = 2.0
"""An event pushed live arrives well within this; the log poll that backs push up waits 5 s."""


@dataclass
class Instance:
    api: httpx.AsyncClient
    app: Litestar


@contextlib.asynccontextmanager
async def _instance(settings: Settings) -> AsyncIterator[Instance]:
    app = create_app(settings)
    async with serve(app, settings.http_port) as api:
        api.headers["Authorization"] = (
            f"Bearer {await api_key(settings.database_url or '', 'default', ALL_SCOPES)}"
        )
        yield Instance(api, app)


@contextlib.asynccontextmanager
async def two_instances(servers: Servers) -> AsyncIterator[tuple[Instance, Instance]]:
    """A (worker on) and B (worker off): one fresh database, one stream, one subject prefix."""
    token = uuid.uuid4().hex[:8]
    async with scratch_database(servers.database_url, prefix="inst") as database_url:
        shared = Settings(
            database_url=database_url,
            nats_url=servers.nats_url,
            nats_stream=f"INST_{token}",
            nats_subject_prefix=f"inst{token}.events",
        )
        try:
            async with (
                _instance(replace(shared, http_port=free_port())) as a,
                _instance(replace(shared, http_port=free_port(), worker_enabled=False)) as b,
            ):
                # Exactly one relay wins the lock; wait until it is publishing.
                for _ in range(200):
                    states = [(await i.api.get("/ready")).json()["relay_active"] for i in (a, b)]
                    if any(states):
                        break
                    await asyncio.sleep(0.05)
                assert sorted(states) == [False, True], f"expected exactly one active relay, got {states}"
                yield a, b
        finally:
            await delete_stream(servers.nats_url, shared.nats_stream)


async def _start(api: httpx.AsyncClient, spec: dict[str, Any]) -> str:
    wid = f"inst-{uuid.uuid4().hex[:8]}"
    assert (await api.post("/v1/workflows", json={"id": wid, **spec})).status_code == 201
    started = await api.post(f"/v1/workflows/{wid}/runs", json={"inputs": {}})
    assert started.status_code == 202
    return str(started.json()["run_id"])


def _worker_id(instance: Instance) -> str:
    worker = instance.app.state.runtime.worker
    assert worker is not None
    return str(worker.worker_id)


async def test_sse_on_b_follows_a_run_started_and_executed_through_a(servers: Servers) -> None:
    async with two_instances(servers) as (a, b):
        assert b.app.state.runtime.worker is None
        run_id = await _start(a.api, steps(6, 150))
        connected_at = time.time()
        received: list[tuple[float, dict[str, Any]]] = []
        async with asyncio.timeout(30):
            async for message in sse(b.api, f"/v1/runs/{run_id}/stream"):
                received.append((time.time(), message))
        stored = await wait_ended(a.api, run_id)

        # complete, in order, each once, byte-for-byte the stored envelopes
        assert [int(m["id"]) for _t, m in received] == [e["seq"] for e in stored]
        assert [json.loads(m["data"]) for _t, m in received] == stored
        assert stored[-1]["type"] == "run_finished" and stored[-1]["data"]["status"] == "succeeded"
        assert next(e for e in stored if e["type"] == "run_started")["data"]["worker_id"] == _worker_id(a)

        # live: every event recorded after B's client connected reached it promptly (pushed over
        # NATS to B's hub, not found by B's 5 s log poll)
        live = [
            (t - datetime.fromisoformat(e["recorded_at"]).timestamp(), e["type"])
            for t, e in ((t, json.loads(m["data"])) for t, m in received)
            if datetime.fromisoformat(e["recorded_at"]).timestamp() > connected_at + 0.2
        ]
        assert len(live) >= 10, f"the run ended before B's client was connected: {live}"
        late = [(round(lag, 3), kind) for lag, kind in live if lag > LIVE_S]
        assert not late, f"events not pushed live to instance B: {late}"


async def test_websocket_on_b_gets_execution_finished_of_a_run_started_through_a(servers: Servers) -> None:
    async with two_instances(servers) as (a, b):
        run_id = await _start(a.api, steps(4, 150))
        url = str(b.api.base_url).replace("http://", "ws://") + "/v1/push?pushRef=instance-b"
        messages: list[tuple[float, dict[str, Any]]] = []
        async with websockets.connect(url, additional_headers=auth_headers(b.api)) as ws:
            await ws.send(json.dumps({"type": "subscribe", "data": {"executionId": run_id}}))
            async with asyncio.timeout(30):
                while True:
                    message = json.loads(await ws.recv())
                    messages.append((time.time(), message))
                    if message["type"] == "executionFinished":
                        break
        stored = await wait_ended(a.api, run_id)
        kinds = [m["type"] for _t, m in messages]
        assert kinds[0] == "executionStarted" and kinds[-1] == "executionFinished"
        assert kinds.count("nodeExecuteBefore") == kinds.count("nodeExecuteAfter") == 4
        assert all(m["data"]["executionId"] == run_id for _t, m in messages)
        assert messages[-1][1]["data"]["status"] == "success"
        finished_at = datetime.fromisoformat(stored[-1]["recorded_at"]).timestamp()
        assert messages[-1][0] - finished_at < LIVE_S, "executionFinished was not pushed live to B"
