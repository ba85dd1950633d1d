"""Schedules over real HTTP, PostgreSQL and NATS: a schedule fires and starts runs (actor
``schedule:<id>``, one run per fire time), DELETE stops it, bad schedules are clear 400s, another
tenant sees none of it, ``overlap: skip`` never runs two at once, catch-up after downtime follows
its policy, and two instances on one database start each fire time exactly once."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from service.domain.schedules import plan_firing, schedule_timing
from tests.helpers.api import assert_problem, wait_ended
from tests.helpers.servers import Servers
from tests.helpers.serving import api_key, serve_app


@pytest.fixture(scope="module")
async def app(servers: Servers) -> AsyncIterator[httpx.AsyncClient]:
    """A service with a database of its own: its schedules fire nowhere else."""
    async with serve_app(servers, own_database=True) as client:
        yield client


async def _workflow(api: httpx.AsyncClient, *nodes: dict[str, Any]) -> str:
    wid = f"sched-{uuid.uuid4().hex[:8]}"
    spec = {"id": wid, "nodes": list(nodes) or [{"id": "a", "type": "noop"}], "edges": []}
    response = await api.post("/v1/workflows", json=spec)
    assert response.status_code == 201, response.text
    return wid


async def _schedule(api: httpx.AsyncClient, wid: str, **body: Any) -> dict[str, Any]:
    response = await api.post(f"/v1/workflows/{wid}/schedules", json=body)
    assert response.status_code == 201, response.text
    schedule: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/v1/schedules/{schedule['id']}"
    return schedule


async def _runs(api: httpx.AsyncClient, schedule_id: str) -> list[asyncpg.Record]:
    """The queue rows of the schedule's runs (idempotency_key, run_id, queued_at, ended_at), by key."""
    conn = await asyncpg.connect(api.database_url)  # type: ignore[attr-defined]
    try:
        return await conn.fetch(
            "SELECT idempotency_key, run_id, status, queued_at, ended_at FROM flowledger.run_queue "
            "WHERE idempotency_key LIKE $1 ORDER BY idempotency_key",
            f"schedule:{schedule_id}:%",
        )
    finally:
        await conn.close()


async def _wait_runs(api: httpx.AsyncClient, schedule_id: str, n: int, timeout: float = 15) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        rows = await _runs(api, schedule_id)
        if len(rows) >= n:
            return rows
        assert time.monotonic() < deadline, f"{len(rows)} runs of schedule {schedule_id}, not {n}"
        await asyncio.sleep(0.1)


async def test_a_schedule_fires_runs_as_its_own_actor_until_deleted(app: httpx.AsyncClient) -> None:
    wid = await _workflow(app, {"id": "echo", "type": "transform", "config": {"expression": "inputs"}})
    schedule = await _schedule(app, wid, every="1s", inputs={"city": "Lyon"})
    assert schedule["workflow_id"] == wid and schedule["every"] == "1s" and schedule["cron"] is None
    assert schedule["timezone"] == "UTC" and schedule["overlap"] == "skip" and schedule["catchup"] == "latest"
    assert schedule["created_by"].startswith("key:") and schedule["last_run_id"] is None
    next_fire = datetime.fromisoformat(schedule["next_fire_at"])
    assert next_fire.microsecond == 0 and timedelta(0) < next_fire - datetime.now(UTC) <= timedelta(
        seconds=1.5
    )

    rows = await _wait_runs(app, schedule["id"], 2)
    run_id = str(rows[0]["run_id"])
    events = await wait_ended(app, run_id)
    queued = events[0]["data"]
    assert queued["actor"] == f"schedule:{schedule['id']}"
    assert queued["inputs"] == {"city": "Lyon"} and queued["idempotency_key"] == rows[0]["idempotency_key"]
    assert events[-1]["data"]["status"] == "succeeded"

    listed = (await app.get(f"/v1/workflows/{wid}/schedules")).json()
    assert [s["id"] for s in listed["items"]] == [schedule["id"]] and listed["next_cursor"] is None
    assert schedule["id"] in [s["id"] for s in (await app.get("/v1/schedules")).json()["items"]]
    shown = (await app.get(f"/v1/schedules/{schedule['id']}")).json()
    assert shown["last_run_id"] is not None and shown["last_fire_at"] is not None

    assert (await app.delete(f"/v1/schedules/{schedule['id']}")).status_code == 204
    after_delete = len(await _runs(app, schedule["id"]))
    await asyncio.sleep(2.5)
    assert len(await _runs(app, schedule["id"])) == after_delete  # no run after the DELETE answered
    assert_problem(await app.get(f"/v1/schedules/{schedule['id']}"), 404)
    assert_problem(await app.delete(f"/v1/schedules/{schedule['id']}"), 404)
    assert (await app.get(f"/v1/workflows/{wid}/schedules")).json()["items"] == []


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({}, 400, "exactly one of cron"),
        ({"cron": "* * * * *", "every": "1m"}, 400, "not both"),
        ({"cron": "*/5 * * *"}, 400, "it needs 5"),
        ({"cron": "99 * * * *"}, 400, "not a valid cron expression"),
        ({"cron": "0 0 31 2 *"}, 400, "never fires"),
        ({"every": "soon"}, 400, "not an interval"),
        ({"every": "30s", "timezone": "Europe/Atlantis"}, 400, "not an IANA time zone"),
        ({"every": "30s", "overlap": "queue"}, 400, "overlap"),
        ({"every": "30s", "catchup": "some"}, 400, "catchup"),
        ({"every": "30s", "colour": "red"}, 400, "colour"),
        ({"every": "30s", "inputs": [1]}, 400, "inputs"),
    ],
)
async def test_bad_schedules_are_clear_400s(
    app: httpx.AsyncClient, body: dict[str, Any], status: int, says: str
) -> None:
    wid = await _workflow(app)
    problem = assert_problem(await app.post(f"/v1/workflows/{wid}/schedules", json=body), status)
    assert says in problem["detail"], problem


async def test_an_unknown_workflow_or_schedule_is_a_404(app: httpx.AsyncClient) -> None:
    problem = assert_problem(await app.post("/v1/workflows/nope/schedules", json={"every": "1m"}), 404)
    assert "'nope' is not registered" in problem["detail"]
    assert_problem(await app.get("/v1/workflows/nope/schedules"), 404)
    for bad in ("not-a-uuid", str(uuid.uuid4())):
        assert "no schedule" in assert_problem(await app.get(f"/v1/schedules/{bad}"), 404)["detail"]
        assert_problem(await app.delete(f"/v1/schedules/{bad}"), 404)
    assert_problem(await app.get("/v1/schedules", params={"cursor": "x"}), 400)


async def test_another_tenant_cannot_see_or_delete_a_schedule(app: httpx.AsyncClient) -> None:
    wid = await _workflow(app)
    schedule = await _schedule(app, wid, cron="0 0 1 1 *", timezone="Europe/Paris")
    token = await api_key(app.database_url, "rival", ["workflows:read", "workflows:write"])  # type: ignore[attr-defined]
    other = httpx.AsyncClient(base_url=app.base_url, headers={"Authorization": f"Bearer {token}"})
    async with other:
        missing = str(uuid.uuid4())
        for method in ("GET", "DELETE"):
            theirs = assert_problem(await other.request(method, f"/v1/schedules/{schedule['id']}"), 404)
            none = assert_problem(await other.request(method, f"/v1/schedules/{missing}"), 404)
            assert theirs["detail"].replace(schedule["id"], "?") == none["detail"].replace(missing, "?")
        assert_problem(await other.get(f"/v1/workflows/{wid}/schedules"), 404)
        assert_problem(await other.post(f"/v1/workflows/{wid}/schedules", json={"every": "1s"}), 404)
        listed = await other.get("/v1/schedules")
        assert listed.status_code == 200 and schedule["id"] not in listed.text
    assert (await app.get(f"/v1/schedules/{schedule['id']}")).status_code == 200  # still there


async def test_overlap_skip_never_runs_two_at_once(app: httpx.AsyncClient) -> None:
    slow = {"id": "wait", "type": "delay", "config": {"ms": 1800}}
    skip = await _schedule(app, await _workflow(app, slow), every="1s", overlap="skip")
    allow = await _schedule(app, await _workflow(app, slow), every="1s", overlap="allow")
    await asyncio.sleep(4.5)
    for s in (skip, allow):
        assert (await app.delete(f"/v1/schedules/{s['id']}")).status_code == 204
    allowed = await _runs(app, allow["id"])
    assert len(allowed) >= 3  # one a second, each running 1.8 s: they overlap
    skipped = await _wait_ended_rows(app, skip["id"])
    assert 1 <= len(skipped) <= 3
    ordered = sorted(skipped, key=lambda r: r["queued_at"])
    for before, after in itertools.pairwise(ordered):
        assert after["queued_at"] >= before["ended_at"], (before, after)


async def _wait_ended_rows(api: httpx.AsyncClient, schedule_id: str) -> list[Any]:
    deadline = time.monotonic() + 15
    while True:
        rows = await _runs(api, schedule_id)
        if all(r["status"] == "ended" for r in rows):
            return rows
        assert time.monotonic() < deadline, rows
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("catchup", ["all", "latest", "none"])
async def test_catchup_after_downtime(app: httpx.AsyncClient, catchup: str) -> None:
    """A monthly schedule whose next fire time is made 6 months old, as if no instance had run
    since: ``all`` starts each missed month, ``latest`` the last one, ``none`` nothing."""
    wid = await _workflow(app)
    schedule = await _schedule(app, wid, cron="0 0 1 * *", overlap="allow", catchup=catchup)
    now = datetime.now(UTC)
    back = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0) - timedelta(days=160)
    back = back.replace(day=1)
    conn = await asyncpg.connect(app.database_url)  # type: ignore[attr-defined]
    try:
        await conn.execute(
            "UPDATE flowledger.schedules SET next_fire_at = $2 WHERE schedule_id = $1",
            uuid.UUID(schedule["id"]),
            back,
        )
        await conn.execute("SELECT pg_notify('flowledger_schedules', 'test')")
        deadline = time.monotonic() + 10
        while await conn.fetchval(
            "SELECT next_fire_at < clock_timestamp() FROM flowledger.schedules WHERE schedule_id = $1",
            uuid.UUID(schedule["id"]),
        ):
            assert time.monotonic() < deadline, "the scheduler never took the overdue schedule"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    timing = schedule_timing("0 0 1 * *", None, "UTC", now=now)
    plan = plan_firing(timing, back, datetime.now(UTC), catchup)  # type: ignore[arg-type]
    rows = await _runs(app, schedule["id"])
    expected = [f"schedule:{schedule['id']}:{t.strftime('%Y-%m-%dT%H:%M:%SZ')}" for t in plan.starts]
    assert [r["idempotency_key"] for r in rows] == expected
    assert {"all": len(expected) >= 5, "latest": len(expected) == 1, "none": not expected}[catchup]
    shown = (await app.get(f"/v1/schedules/{schedule['id']}")).json()
    assert datetime.fromisoformat(shown["next_fire_at"]) > now
    await app.delete(f"/v1/schedules/{schedule['id']}")


async def _two_instances_fire_once(servers: Servers, seconds: float) -> None:
    async with serve_app(servers, own_database=True) as one:
        url = one.database_url  # type: ignore[attr-defined]
        async with serve_app(servers, database_url=url) as two:
            wid = await _workflow(one)
            schedule = await _schedule(two, wid, every="1s", overlap="allow", catchup="all")
            await asyncio.sleep(seconds)
            assert (await one.delete(f"/v1/schedules/{schedule['id']}")).status_code == 204
            rows = await _runs(one, schedule["id"])
    keys = Counter(r["idempotency_key"] for r in rows)
    assert keys and max(keys.values()) == 1, keys.most_common(3)
    assert len({r["run_id"] for r in rows}) == len(rows)
    fires = sorted(datetime.strptime(k.split(":", 2)[2], "%Y-%m-%dT%H:%M:%SZ") for k in keys)
    assert len(fires) >= seconds - 2
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(fires)), fires


async def test_two_instances_start_each_fire_time_once(servers: Servers) -> None:
    await _two_instances_fire_once(servers, 4)


@pytest.mark.slow
async def test_two_instances_start_each_fire_time_once_for_ten_seconds(servers: Servers) -> None:
    await _two_instances_fire_once(servers, 10)
