"""``serve --processes 2``: one port, two service processes under a supervising parent. Each
run executes exactly once, the relay publishes each event once, the run summaries equal a fold
of the log, an SSE stream resumed on whichever process answers has no gap, and a process
killed with -9 is replaced while the other recovers its runs."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest

from projections import run_summaries
from schemas.events import NodeExecuteBefore, RunRecovered, RunStarted
from tests.helpers.engine_process import ServeProcess, _db_token
from tests.helpers.run_logs import read_stream
from tests.integration.test_crash_recovery import (  # noqa: F401 - fixtures
    NODES,
    assert_finished_once_and_intact,
    bodies,
    crash_db,
    db,
    diamond,
    pid_of,
    private_nats,
    read_runs,
    register_and_start,
    spawn,
    typed,
    wait_all_ended,
)

pytestmark = pytest.mark.slow


def _worker_pids(proc: ServeProcess) -> set[int]:
    return {pid_of(str(r["worker_id"])) for r in proc.log_records() if r.get("event") == "worker_started"}


async def _both_workers(proc: ServeProcess, timeout: float = 60) -> set[int]:
    deadline = time.monotonic() + timeout
    while len(pids := _worker_pids(proc)) < 2:
        assert time.monotonic() < deadline, f"two workers never started:\n{proc.log_tail()}"
        await asyncio.sleep(0.1)
    return pids


async def _stream_count(nats_url: str, database_url: str) -> tuple[int, int]:
    """(messages, distinct Nats-Msg-Id) of the service's stream."""
    token = _db_token(database_url)
    contents = await read_stream(nats_url, f"CRASH_{token}", f"crash{token}.events.>")
    return contents.messages, len(contents.ids)


async def test_two_processes_share_the_port_and_run_each_run_once(
    spawn: Callable[..., ServeProcess],  # noqa: F811 - the imported fixture
    db: asyncpg.Pool,  # noqa: F811 - the imported fixture
    crash_db: str,  # noqa: F811 - the imported fixture
    private_nats: str,  # noqa: F811 - the imported fixture
) -> None:
    service = spawn("multi", processes=2)
    await service.wait_ready()
    pids = await _both_workers(service)
    assert service.pid not in pids  # the parent supervises; its children serve
    runs = 120
    async with httpx.AsyncClient(base_url=service.base_url, headers=service.auth_headers, timeout=30) as http:
        run_ids = await register_and_start(http, diamond(b_ms=20, c_ms=40), runs, waves=4)
        await wait_all_ended(db, run_ids, timeout=60)

        # An SSE stream read in two parts, the second resumed with Last-Event-ID on whichever
        # process answers the new connection: every event once, in order.
        run_id = run_ids[0]
        seen: list[int] = []
        for part in ("first", "rest"):  # the server ends the response after the terminal event
            headers = {"Last-Event-ID": str(seen[-1])} if part == "rest" else {}
            async with http.stream("GET", f"/v1/runs/{run_id}/stream", headers=headers) as response:
                async for line in response.aiter_lines():
                    if line.startswith("id:"):
                        seen.append(int(line.split(":", 1)[1]))
                        if part == "first" and len(seen) == 5:
                            break
        await asyncio.sleep(0.5)

    started_by: Counter[int] = Counter()
    raws = await read_runs(db, run_ids)
    for rid, raw in raws.items():
        events = assert_finished_once_and_intact(rid, raw)
        starts = bodies(events, RunStarted)
        assert len(starts) == 1 and bodies(events, RunRecovered) == [], rid
        assert Counter(b.node_id for b in bodies(events, NodeExecuteBefore)) == Counter(NODES), rid
        started_by[pid_of(starts[0].worker_id)] += 1
    assert set(started_by) == pids, f"runs per process: {dict(started_by)}"

    assert seen == list(range(seen[0], seen[0] + len(seen))), f"SSE seqs with a gap or a repeat: {seen}"
    assert seen[-1] == len(raws[run_ids[0]]) - 1

    # The relay published each event once, though both processes ran one (only one was active).
    total = await db.fetchval("SELECT count(*) FROM flowledger.events")
    deadline = time.monotonic() + 20
    while (counted := await _stream_count(private_nats, crash_db)) != (total, total):
        assert time.monotonic() < deadline, f"stream (messages, ids) {counted}, log {total}"
        await asyncio.sleep(0.5)

    # The run summaries (kept by whichever process holds the projection) equal a fold of the log.
    for rid, raw in raws.items():
        folded: Any = None
        for event in typed(raw):
            folded = run_summaries.apply(folded, event)
        row = await db.fetchrow(
            "SELECT status, last_seq, progress FROM flowledger.run_summaries WHERE run_id = $1", rid
        )
        assert row is not None and (row["status"], row["last_seq"], row["progress"]) == (
            folded.status,
            folded.last_seq,
            folded.progress,
        ), rid
    assert service.problems() == [], service.problems()
    assert await service.interrupt() == 0, service.log_tail()
    assert all(not _alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_process_killed_with_9_is_replaced_and_its_runs_recovered(
    spawn: Callable[..., ServeProcess],  # noqa: F811 - the imported fixture
    db: asyncpg.Pool,  # noqa: F811 - the imported fixture
) -> None:
    service = spawn("multi", processes=2)
    await service.wait_ready()
    pids = await _both_workers(service)
    async with httpx.AsyncClient(base_url=service.base_url, headers=service.auth_headers, timeout=30) as http:
        run_ids = await register_and_start(http, diamond(b_ms=1200, c_ms=1500), 60)
    await asyncio.sleep(0.8)  # runs in flight on both processes
    victim = sorted(pids)[0]
    os.kill(victim, signal.SIGKILL)
    await wait_all_ended(db, run_ids, timeout=60)
    deadline = time.monotonic() + 30
    while len(_worker_pids(service) - {victim}) < 2:  # the parent started a new process
        assert time.monotonic() < deadline, service.log_tail()
        await asyncio.sleep(0.2)
    for rid, raw in (await read_runs(db, run_ids)).items():
        events = assert_finished_once_and_intact(rid, raw)
        assert len(bodies(events, RunStarted)) == 1, rid
        for recovered in bodies(events, RunRecovered):
            assert pid_of(recovered.worker_id) != victim
    assert await service.interrupt() == 0, service.log_tail()
