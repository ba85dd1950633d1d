"""kill -9 while runs wait: during a long delay (parked, and held in memory), during a wait for
a signal, and during a child run. Real ``flowledger serve`` processes, real SIGKILL, then a
second process on the same database: every run ends once, no node runs twice, no child is
started twice, and a delay waits only what was left of it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest

from schemas.canonical import verify_chain
from schemas.events import TERMINAL_TYPES, RunWaiting
from service.store.event_store import EventStore
from tests.helpers.engine_process import ServeProcess, wait_sessions_gone
from tests.integration.test_crash_recovery import (  # noqa: F401 - fixtures
    APP_NAME,
    crash_db,
    db,
    private_nats,
    spawn,
    typed,
)

pytestmark = pytest.mark.slow

SPECS: list[dict[str, Any]] = [
    {  # parked: 6 s is longer than the 2 s a run keeps a wait in memory
        "id": "long-delay",
        "nodes": [{"id": "nap", "type": "delay", "config": {"ms": 6000}}, {"id": "after", "type": "noop"}],
        "edges": [{"from": "nap", "to": "after"}],
    },
    {  # held in memory by the killed worker: recovered after its lease
        "id": "short-delay",
        "nodes": [{"id": "nap", "type": "delay", "config": {"ms": 1800}}, {"id": "after", "type": "noop"}],
        "edges": [{"from": "nap", "to": "after"}],
    },
    {
        "id": "approval",
        "nodes": [
            {"id": "ask", "type": "wait", "config": {"signal": "go"}},
            {"id": "after", "type": "transform", "config": {"expression": "nodes.ask"}},
        ],
        "edges": [{"from": "ask", "to": "after"}],
    },
    {
        "id": "kid",
        "nodes": [
            {"id": "nap", "type": "delay", "config": {"ms": 3000}},
            {"id": "out", "type": "transform", "config": {"expression": "inputs.k"}},
        ],
        "edges": [{"from": "nap", "to": "out"}],
    },
    {
        "id": "parent",
        "nodes": [
            {
                "id": "sub",
                "type": "workflow",
                "config": {"workflow_id": "kid", "inputs": {"k": {"$expr": "inputs.k"}}},
            },
            {"id": "after", "type": "transform", "config": {"expression": "nodes.sub.out"}},
        ],
        "edges": [{"from": "sub", "to": "after"}],
    },
]


async def _start(http: httpx.AsyncClient, workflow_id: str, inputs: dict[str, Any]) -> UUID:
    response = await http.post(f"/v1/workflows/{workflow_id}/runs", json={"inputs": inputs})
    assert response.status_code == 202, response.text
    return UUID(response.json()["run_id"])


async def _wait_until(pool: asyncpg.Pool, sql: str, *args: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await pool.fetchval(sql, *args):
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {sql} {args}")
        await asyncio.sleep(0.05)


async def test_kill_9_while_runs_wait_then_restart(
    spawn: Callable[[str], ServeProcess],  # noqa: F811 - the imported fixture
    db: asyncpg.Pool,  # noqa: F811 - the imported fixture
) -> None:
    first = spawn("first")
    await first.wait_ready()
    async with httpx.AsyncClient(base_url=first.base_url, headers=first.auth_headers, timeout=30) as http:
        for spec in SPECS:
            assert (await http.post("/v1/workflows", json=spec)).status_code == 201
        long_runs = [await _start(http, "long-delay", {}) for _ in range(3)]
        short_runs = [await _start(http, "short-delay", {}) for _ in range(3)]
        approvals = [await _start(http, "approval", {}) for _ in range(3)]
        parents = [await _start(http, "parent", {"k": i}) for i in range(3)]
    everything = long_runs + short_runs + approvals + parents

    # Kill once every run waits: the delays started, the approvals parked, the children sleeping.
    await _wait_until(
        db,
        "SELECT count(DISTINCT run_id) = $2 FROM flowledger.events WHERE run_id = ANY($1::uuid[]) AND type = 'run_waiting'",
        everything,
        len(everything),
    )
    await _wait_until(
        db,
        "SELECT count(*) = 3 FROM flowledger.events e WHERE e.type = 'run_waiting' AND e.workflow_id = 'kid'",
    )
    first.kill9()
    killed_at = time.monotonic()
    async with db.acquire() as conn:
        await wait_sessions_gone(conn, ours=APP_NAME)
    parked = await db.fetchval(
        "SELECT count(*) FROM flowledger.run_queue WHERE status = 'waiting' AND run_id = ANY($1::uuid[])",
        approvals,
    )
    assert parked == 3  # a run waiting for a signal holds no lease: there is nothing to recover

    second = spawn("second")
    await second.wait_ready()
    async with httpx.AsyncClient(base_url=second.base_url, headers=second.auth_headers, timeout=30) as http:
        for run_id in approvals:
            sent = await http.post(f"/v1/runs/{run_id}/signals/go", json={"payload": {"ok": True}})
            assert sent.status_code == 202, sent.text
    await _wait_until(
        db,
        "SELECT count(DISTINCT run_id) = $2 FROM flowledger.events WHERE run_id = ANY($1::uuid[]) AND type = ANY($3)",
        everything,
        len(everything),
        list(TERMINAL_TYPES),
        timeout=60,
    )
    assert time.monotonic() - killed_at < 60

    store = EventStore(db)
    for run_id in everything:
        raw = await store.read_run(run_id)
        assert verify_chain(raw) == []
        events = typed(raw)
        assert [e.type for e in events].count("run_finished") == 1 and events[-1].type == "run_finished"
        assert events[-1].data.status == "succeeded", (run_id, [e.type for e in events])
        befores = Counter(e.data.node_id for e in events if e.type == "node_execute_before")
        assert all(n == 1 for n in befores.values()), befores  # no node started again
        if run_id in long_runs + short_runs:
            before = next(e for e in events if e.type == "node_execute_before")
            after = next(e for e in events if e.type == "node_execute_after")
            slept = (after.recorded_at - before.recorded_at).total_seconds()
            ms = 6.0 if run_id in long_runs else 1.8
            # At least the delay; at most the delay plus the lease (4 s) and a restart: the delay
            # was not started again from zero after the kill.
            assert ms <= slept < ms + 9, (run_id, slept)
        if run_id in approvals:
            outputs = {e.data.node_id: e.data.output for e in events if e.type == "node_execute_after_data"}
            assert outputs["after"] == {"ok": True}
        if run_id in parents:
            outputs = {e.data.node_id: e.data.output for e in events if e.type == "node_execute_after_data"}
            assert outputs["after"] == parents.index(run_id)
    # One child per parent: no child was started twice across the crash.
    children = await db.fetch("SELECT run_id FROM flowledger.run_queue WHERE workflow_id = 'kid'")
    assert len(children) == 3
    waits = [
        e.data.child_run_id
        for run_id in parents
        for e in typed(await store.read_run(run_id))
        if isinstance(e.data, RunWaiting)
    ]
    assert sorted(waits) == sorted(str(r["run_id"]) for r in children)
