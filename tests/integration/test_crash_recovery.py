"""Crash recovery with real processes: ``kill -9`` with runs in flight, then a restart; and two
service instances sharing one database. Nothing is simulated: real ``flowledger serve``
processes, real HTTP, real SIGKILL, real PostgreSQL and NATS.

Isolation: the service always uses schema ``flowledger`` and stream ``FLOWLEDGER``, so each
test gets a database of its own on the ``database_url`` server, and the module runs its own
nats-server. (A shared ``FLOWLEDGER`` stream is not harmless: a relay resumes after the
``Flowledger-Global-Position`` of the stream's last message, which would then be another
database's position, so relays of different databases would skip each other's events.)
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest

from schemas.canonical import verify_chain
from schemas.envelope import EventEnvelope, RawEnvelope
from schemas.events import (
    TERMINAL_TYPES,
    NodeExecuteAfter,
    NodeExecuteBefore,
    RunFinished,
    RunRecovered,
    RunResumed,
    RunStarted,
    RunWaiting,
)
from service.infra.db import init_connection
from service.infra.embedded import EmbeddedNats
from tests.helpers.databases import scratch_database
from tests.helpers.engine_process import ServeProcess, wait_sessions_gone
from tests.helpers.run_logs import bodies, pid_of, read_runs, typed

APP_NAME = "flowledger-crash-test"
"""application_name of the test's own sessions (so the killed service's sessions can be told apart)."""

NODES = ("a", "b", "c", "d")


def diamond(b_ms: int, c_ms: int) -> dict[str, Any]:
    """a -> (b, c) -> d; b and c sleep, so a run spends most of its time between a and d."""
    return {
        "id": "diamond",
        "nodes": [
            {"id": "a", "type": "noop"},
            {"id": "b", "type": "delay", "config": {"ms": b_ms}},
            {"id": "c", "type": "delay", "config": {"ms": c_ms}},
            {"id": "d", "type": "noop"},
        ],
        "edges": [
            {"from": "a", "to": "b"},
            {"from": "a", "to": "c"},
            {"from": "b", "to": "d"},
            {"from": "c", "to": "d"},
        ],
    }


# -- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server of this module's own (see the module docstring for why not the shared one)."""
    server = EmbeddedNats(tmp_path_factory.mktemp("crash-nats"))
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
async def crash_db(database_url: str) -> AsyncIterator[str]:
    """A database of this test's own; dropped afterwards (WITH FORCE)."""
    async with scratch_database(database_url, prefix="crash") as url:
        yield url


@pytest.fixture
async def db(crash_db: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(
        crash_db,
        min_size=1,
        max_size=4,
        init=init_connection,  # json as the exact stored bytes: the hash chain is checked on them
        server_settings={"application_name": APP_NAME},
    )
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def spawn(crash_db: str, private_nats: str, tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Start ``flowledger serve`` processes on the test's database; every one is killed at the end."""
    started: list[ServeProcess] = []

    def start(name: str, processes: int = 1) -> ServeProcess:
        proc = ServeProcess(
            name,
            database_url=crash_db,
            nats_url=private_nats,
            home=tmp_path / "home",
            log_dir=tmp_path,
            processes=str(processes),
            # Runs stay in memory while they wait: a parked run is woken, not recovered, and is
            # claimed once more per wake (parked runs under kill -9: test_crash_waiting.py).
            env={"FLOWLEDGER_PARK_AFTER_SECONDS": "60"},
        )
        started.append(proc)
        return proc.start()

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


# -- helpers --------------------------------------------------------------------------------------------


async def register_and_start(
    http: httpx.AsyncClient, spec: dict[str, Any], runs: int, waves: int = 1
) -> list[UUID]:
    response = await http.post("/v1/workflows", json=spec)
    assert response.status_code == 201, response.text

    async def one(i: int) -> UUID:
        r = await http.post(f"/v1/workflows/{spec['id']}/runs", json={"inputs": {"i": i}})
        assert r.status_code == 202, r.text
        return UUID(r.json()["run_id"])

    run_ids: list[UUID] = []
    per_wave = -(-runs // waves)
    for start in range(0, runs, per_wave):
        run_ids += await asyncio.gather(*[one(i) for i in range(start, min(runs, start + per_wave))])
        if waves > 1:
            await asyncio.sleep(0.1)
    assert len(set(run_ids)) == runs
    return run_ids


async def wait_all_ended(pool: asyncpg.Pool, run_ids: list[UUID], timeout: float) -> None:
    sql = "SELECT count(DISTINCT run_id) FROM flowledger.events WHERE run_id = ANY($1::uuid[]) AND type = ANY($2)"
    deadline = time.monotonic() + timeout
    while (ended := await pool.fetchval(sql, run_ids, list(TERMINAL_TYPES))) < len(run_ids):
        if time.monotonic() > deadline:
            raise AssertionError(f"only {ended} of {len(run_ids)} runs ended within {timeout:.0f} s")
        await asyncio.sleep(0.1)


def assert_finished_once_and_intact(run_id: UUID, raw: list[RawEnvelope]) -> list[EventEnvelope]:
    """Chain verifies, one terminal event (run_finished succeeded) and it is the last; each node
    has exactly one node_execute_after and it succeeded."""
    assert verify_chain(raw) == [], f"run {run_id}: hash chain broken"
    assert [e.seq for e in raw] == list(range(len(raw))), f"run {run_id}: seq not contiguous"
    events = typed(raw)
    terminal = [e for e in events if e.type in TERMINAL_TYPES]
    assert len(terminal) == 1, f"run {run_id}: terminal events {[e.type for e in terminal]}"
    assert terminal[0] is events[-1], f"run {run_id}: events after the terminal event"
    ending = terminal[0].data
    assert isinstance(ending, RunFinished) and ending.status == "succeeded", f"run {run_id}: ended {ending}"
    afters = Counter((a.node_id, a.status) for a in bodies(events, NodeExecuteAfter))
    assert afters == Counter({(n, "succeeded"): 1 for n in NODES}), f"run {run_id}: {afters}"
    return events


# -- tests ------------------------------------------------------------------------------------------------

IN_FLIGHT_SQL = """
SELECT count(*) FILTER (WHERE has_after AND NOT ended) AS mid,
       count(*) FILTER (WHERE branch_done AND NOT ended) AS mid_branch,
       count(*) FILTER (WHERE ended) AS ended
FROM (SELECT run_id,
             bool_or(type = 'node_execute_after') AS has_after,
             bool_or(type = 'node_execute_after' AND data->>'node_id' IN ('b', 'c')) AS branch_done,
             bool_or(type IN ('run_finished', 'run_cancelled')) AS ended
        FROM flowledger.events GROUP BY run_id) AS r"""


@pytest.mark.slow
async def test_kill_9_with_200_runs_in_flight_then_restart(
    spawn: Callable[[str], ServeProcess], db: asyncpg.Pool
) -> None:
    runs = 200
    t0 = time.monotonic()
    first = spawn("first")
    await first.wait_ready()
    async with httpx.AsyncClient(base_url=first.base_url, headers=first.auth_headers, timeout=30) as http:
        run_ids = await register_and_start(http, diamond(b_ms=1500, c_ms=3000), runs)
    posted_s = time.monotonic() - t0

    # Kill once at least half the runs are mid-way (a node done, run not ended), some past b or c:
    # b and c sleep 1.5 s and 3 s, so this holds for a while even on a slow machine.
    deadline = time.monotonic() + 30
    while True:
        row = await db.fetchrow(IN_FLIGHT_SQL)
        assert row is not None
        mid, mid_branch, ended = row
        if mid >= runs // 2 and mid_branch >= 10:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"runs never got in flight: mid={mid} mid_branch={mid_branch} ended={ended}")
        await asyncio.sleep(0.02)
    assert first.problems() == [], first.problems()
    first.kill9()
    killed_at = time.monotonic()
    async with db.acquire() as conn:
        await wait_sessions_gone(conn, ours=APP_NAME)

    # What was committed at kill time, now final; and until when the killed worker's leases ran.
    leases = {
        r["run_id"]: r["lease_expires_at"]
        for r in await db.fetch("SELECT run_id, lease_expires_at FROM flowledger.run_queue")
    }
    before = await read_runs(db, run_ids)
    ended_before = {r for r, ev in before.items() if any(e.type in TERMINAL_TYPES for e in ev)}
    started_before = {
        r for r, ev in before.items() if r not in ended_before and any(e.type == "run_started" for e in ev)
    }
    done_before: dict[UUID, set[tuple[str, int]]] = {}
    running_before: dict[UUID, dict[str, int]] = {}
    waiting_before: dict[UUID, set[str]] = {}
    for run_id, raw in before.items():
        events = typed(raw)
        done_before[run_id] = {(a.node_id, a.attempt) for a in bodies(events, NodeExecuteAfter)}
        finished_nodes = {n for n, _ in done_before[run_id]}
        running_before[run_id] = {
            b.node_id: b.attempt for b in bodies(events, NodeExecuteBefore) if b.node_id not in finished_nodes
        }
        # A delay whose run_waiting (with its due time) was committed waits on: no new attempt.
        waiting_before[run_id] = {w.node_id for w in bodies(events, RunWaiting) if w.node_id} - finished_nodes
    assert len(started_before) >= runs // 2

    second = spawn("second")
    await second.wait_ready()
    second_worker = second.worker_id()
    assert pid_of(second_worker) == second.pid
    await wait_all_ended(db, run_ids, timeout=90 - (time.monotonic() - killed_at))
    recovered_s = time.monotonic() - killed_at
    await asyncio.sleep(0.5)  # nothing may follow the terminal events; give a stray writer time to show

    after = await read_runs(db, run_ids)
    for run_id in run_ids:
        old, raw = before[run_id], after[run_id]
        events = assert_finished_once_and_intact(run_id, raw)
        # History is only ever appended to: what was committed at the kill is an unchanged prefix.
        assert [e.hash for e in raw[: len(old)]] == [e.hash for e in old], f"run {run_id}: history rewritten"
        new = events[len(old) :]
        if run_id in ended_before:
            assert new == [], f"run {run_id} ended before the kill but got {[e.type for e in new]}"
            continue
        # A node whose node_execute_after was committed before the kill is never executed again.
        new_befores = bodies(new, NodeExecuteBefore)
        rerun = {b.node_id for b in new_befores} & {n for n, _ in done_before[run_id]}
        assert not rerun, f"run {run_id}: re-ran {rerun} although their node_execute_after was committed"
        # A node interrupted mid-attempt runs again, as the next attempt; a delay that was
        # waiting (its due time in the log) is resumed instead, when it is due.
        for node_id, attempt in running_before[run_id].items():
            attempts = [b.attempt for b in new_befores if b.node_id == node_id]
            if node_id in waiting_before[run_id]:
                assert attempts == [], f"run {run_id} node {node_id}: a waiting delay started again"
                resumed = [r for r in bodies(new, RunResumed) if r.node_id == node_id]
                assert [r.cause for r in resumed] == ["timer"], f"run {run_id} node {node_id}: {resumed}"
            else:
                assert attempts == [attempt + 1], (
                    f"run {run_id} node {node_id}: attempts after kill {attempts}"
                )
        starts = bodies(events, RunStarted)
        recoveries = bodies(new, RunRecovered)
        assert len(starts) == 1, f"run {run_id}: {len(starts)} run_started"
        if run_id in started_before:
            assert len(recoveries) == 1, f"run {run_id} was in flight: {len(recoveries)} run_recovered"
            assert new[0].type == "run_recovered", f"run {run_id}: recovery began with {new[0].type}"
            assert recoveries[0].worker_id == second_worker
            assert recoveries[0].completed_nodes == sorted(n for n, _ in done_before[run_id])
            # Not taken over before the dead worker's lease expired (1 s for clock skew to the server).
            assert new[0].recorded_at > leases[run_id] - timedelta(seconds=1), f"run {run_id}: taken early"
        else:
            assert recoveries == [], f"run {run_id} had not started, yet was 'recovered'"
            assert starts[0].worker_id == second_worker

    rows = await db.fetch("SELECT run_id, status, lease_owner, claims FROM flowledger.run_queue")
    assert {r["run_id"] for r in rows} == set(run_ids)
    assert all(r["status"] == "ended" for r in rows)
    # Each run still open at the kill was claimed once by each process, and ended by the second one.
    reclaimed = [r for r in rows if r["run_id"] not in ended_before]
    assert all(r["lease_owner"] == second_worker for r in reclaimed)
    assert all(r["claims"] == 2 for r in reclaimed if r["run_id"] in started_before)
    assert all(r["claims"] in (1, 2) for r in reclaimed)  # a run the first never claimed: once
    logged = Counter(r.get("event") for r in second.log_records())
    assert logged["run_recovered"] == len(started_before)
    assert second.problems() == [], second.problems()

    assert await second.interrupt() == 0, second.log_tail()
    done_at_kill = Counter("".join(sorted(n for n, _ in done_before[r])) or "-" for r in started_before)
    print(
        f"\n{runs} runs posted {posted_s:.1f} s after start; at the kill: {len(ended_before)} ended, "
        f"{len(started_before)} in flight (nodes done: {dict(done_at_kill)}), "
        f"{runs - len(ended_before) - len(started_before)} not started; "
        f"all ended {recovered_s:.1f} s after the kill; total {time.monotonic() - t0:.1f} s"
    )


async def test_two_instances_on_one_database_never_run_a_node_twice(
    spawn: Callable[[str], ServeProcess], db: asyncpg.Pool
) -> None:
    runs = 100
    one, two = spawn("one"), spawn("two")
    await asyncio.gather(one.wait_ready(), two.wait_ready())
    workers = {one.worker_id(): one.pid, two.worker_id(): two.pid}
    async with httpx.AsyncClient(base_url=one.base_url, headers=one.auth_headers, timeout=30) as http:
        run_ids = await register_and_start(http, diamond(b_ms=200, c_ms=400), runs, waves=5)
    await wait_all_ended(db, run_ids, timeout=60)
    await asyncio.sleep(0.5)

    started_by: Counter[str] = Counter()
    for run_id, raw in (await read_runs(db, run_ids)).items():
        events = assert_finished_once_and_intact(run_id, raw)
        starts = bodies(events, RunStarted)
        assert len(starts) == 1, f"run {run_id}: {len(starts)} run_started"
        assert bodies(events, RunRecovered) == [], f"run {run_id} was recovered"
        befores = Counter(b.node_id for b in bodies(events, NodeExecuteBefore))
        assert befores == Counter(NODES), f"run {run_id}: node_execute_before per node {befores}"
        started_by[starts[0].worker_id] += 1

    assert set(started_by) == set(workers), f"runs per worker: {dict(started_by)}; workers {workers}"
    assert all(pid_of(w) == pid for w, pid in workers.items())
    for proc in (one, two):
        assert proc.problems() == [], proc.problems()
    codes = await asyncio.gather(one.interrupt(), two.interrupt())
    assert tuple(codes) == (0, 0), (one.log_tail(), two.log_tail())
    print(f"\nruns started per instance: {dict(started_by)}")
