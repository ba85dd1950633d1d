"""Untrusted ``python`` node code on real runs (real PostgreSQL, real worker processes): every way
a worker can die fails only that attempt (``worker_crashed``, retried per policy), other runs and
the service carry on, a run that keeps crashing ends ``poison_run``, a recovery does not crash-loop,
and CPU-bound code does not stall the event loop.

The misbehaving callables are in ``tests/helpers/bad_nodes.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest

from schemas.events import NodeExecuteAfter, RunFinished, RunRecovered
from service.config import NodeSettings
from tests.helpers.api import wait_ended
from tests.helpers.engine_harness import Engine, engine_on, node_events
from tests.helpers.servers import Servers
from tests.helpers.serving import serve_app
from tests.helpers.workflows import wf

BAD = "tests.helpers.bad_nodes"
CRASHES = {
    "sys_exit": ({"callable": f"{BAD}:exit_now"}, "exited with code 3"),
    "os_exit": ({"callable": f"{BAD}:exit_hard"}, "exited with code 7"),
    "segfault": ({"callable": f"{BAD}:segfault"}, "crashed with SIGSEGV"),
    "memory": ({"callable": f"{BAD}:hog_memory", "memory_mb": 128}, "ran out of memory"),
    "cpu": ({"callable": f"{BAD}:spin", "cpu_seconds": 1}, "exceeded its CPU time limit of 1 s"),
}


@pytest.fixture
async def engine(pool: asyncpg.Pool, schema: str) -> AsyncIterator[Engine]:
    async with engine_on(pool, schema) as e:
        yield e


def python_node(node_id: str, config: dict[str, Any], max_attempts: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "id": node_id,
        "type": "python",
        "config": config,
        "retry": {"max_attempts": max_attempts, "initial_backoff_ms": 10},
        **extra,
    }


def failures(events: list[Any], node_id: str) -> list[tuple[int, str, str]]:
    """``(attempt, kind, message)`` of each failed attempt of ``node_id``."""
    return [
        (e.data.attempt, e.data.error.kind, e.data.error.message)
        for e in events
        if isinstance(e.data, NodeExecuteAfter) and e.data.node_id == node_id and e.data.status == "failed"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("cause", sorted(CRASHES))
async def test_each_crash_fails_its_attempt_with_worker_crashed_retried_per_policy_while_other_runs_finish(
    engine: Engine, cause: str
) -> None:
    config, how = CRASHES[cause]
    await engine.register(
        wf(
            "crashy",
            [python_node("bad", config, max_attempts=2), {"id": "after", "type": "noop"}],
            [("bad", "after")],
        )
    )
    await engine.register(
        wf("fine", [python_node("total", {"callable": "examples.python_nodes:order_total"})], [])
    )
    crashy = await engine.start("crashy")
    fine = [await engine.start("fine", {"items": [{"price": 1.5, "quantity": 2}]}) for _ in range(3)]

    events = await engine.wait_ended(crashy, timeout=60)
    assert node_events(events, "bad") == [
        "node_execute_before#1",
        "node_execute_after#1",
        "node_execute_after_data#1",
        "node_retry_scheduled#1",
        "node_execute_before#2",
        "node_execute_after#2",
        "node_execute_after_data#2",
    ]
    failed = failures(events, "bad")
    assert [(a, k) for a, k, _ in failed] == [(1, "worker_crashed"), (2, "worker_crashed")]
    assert all(how in message for _, _, message in failed), failed
    finished = events[-1].data
    assert isinstance(finished, RunFinished) and finished.status == "failed"
    assert finished.error is not None and finished.error.startswith("node bad failed (worker_crashed: ")
    for run in fine:  # the other runs, on the same worker and pool, were untouched
        done = await engine.wait_ended(run, timeout=60)
        assert done[-1].data == RunFinished(status="succeeded", duration_ms=done[-1].data.duration_ms)
        assert (await engine.state(run)).nodes["total"].output == {"total": 3.0, "count": 1}


async def test_a_crashed_attempt_is_retried_and_can_succeed(engine: Engine, tmp_path: Path) -> None:
    await engine.register(
        wf("once", [python_node("flaky", {"callable": f"{BAD}:crash_once"}, max_attempts=3)], [])
    )
    events = await engine.wait_ended(
        await engine.start("once", {"marker": str(tmp_path / "marker")}), timeout=30
    )
    assert [(a, k) for a, k, _ in failures(events, "flaky")] == [(1, "worker_crashed")]
    assert events[-1].data.status == "succeeded"
    assert (await engine.state(events[0].run_id)).nodes["flaky"].output == "recovered"


async def test_an_exception_in_user_code_stays_an_ordinary_failure(engine: Engine) -> None:
    await engine.register(
        wf("raises", [python_node("f", {"callable": f"{BAD}:raise_value_error"}, max_attempts=2)], [])
    )
    events = await engine.wait_ended(await engine.start("raises"), timeout=30)
    assert failures(events, "f") == [
        (1, "ValueError", "bad input, not a crash"),
        (2, "ValueError", "bad input, not a crash"),
    ]
    assert "poison_run" not in (events[-1].data.error or "")


async def test_a_run_that_crashes_its_worker_three_times_ends_failed_with_poison_run(engine: Engine) -> None:
    await engine.register(
        wf(
            "poison",
            [
                python_node("bad", {"callable": f"{BAD}:segfault"}, max_attempts=10),
                {"id": "after", "type": "noop"},
            ],
            [("bad", "after")],
            on_failure="continue",  # poison ends the run whatever the failure policy
        )
    )
    events = await engine.wait_ended(await engine.start("poison"), timeout=60)
    assert [(a, k) for a, k, _ in failures(events, "bad")] == [
        (1, "worker_crashed"),
        (2, "worker_crashed"),
        (3, "worker_crashed"),
    ]
    assert [e.data.attempt for e in events if e.type == "node_retry_scheduled"] == [
        1,
        2,
    ]  # none after the 3rd
    assert node_events(events, "after") == ["node_skipped"]
    (skipped,) = [e.data for e in events if e.type == "node_skipped"]
    assert skipped.reason == "run stopped: poison_run"
    finished = events[-1].data
    assert isinstance(finished, RunFinished) and finished.status == "failed"
    assert finished.error == (
        "poison_run: executing this run took down a worker or its executor 3 times "
        "(3 worker crash(es)); it is not retried or recovered again"
    )


async def _expire_lease(pool: asyncpg.Pool, schema: str, run_id: Any) -> None:
    """What a dead executor leaves behind: a lease nobody renews, now past."""
    await pool.execute(
        f"UPDATE \"{schema}\".run_queue SET lease_expires_at = clock_timestamp() - interval '1 second' WHERE run_id = $1",
        run_id,
    )


async def _wait_running(engine: Engine, run_id: Any, node_id: str, attempt: int) -> None:
    await engine.wait_for(
        run_id,
        lambda events: f"node_execute_before#{attempt}" in node_events(events, node_id),
        timeout=30,
    )


async def test_recoveries_after_dead_executors_count_and_a_restart_does_not_crash_loop(
    pool: asyncpg.Pool, schema: str, tmp_path: Path
) -> None:
    """The executor dies (as after a SIGKILL: its task stops, nothing is recorded, its lease
    expires) while the node runs, twice; then a graceful hand-back, which does not count; then
    the node's worker is killed: the third crash, so the run ends ``poison_run``, and a later
    claim runs nothing again."""
    spec = wf(
        "killer",
        [python_node("k", {"callable": f"{BAD}:sleep_forever"}, max_attempts=5)],
        [],
    )
    async with engine_on(pool, schema, worker=False) as engine:
        await engine.register(spec)
        run_id = await engine.start("killer", {"pid_file": str(tmp_path / "pid")})

        async def executor_dies(attempt: int) -> None:
            executor = await engine.claim_executor(run_id, spec, worker_id=f"w{attempt}")
            task = asyncio.create_task(executor.execute())
            await _wait_running(engine, run_id, "k", attempt)
            task.cancel()  # no event recorded, the worker process killed with the call
            await asyncio.gather(task, return_exceptions=True)
            await _expire_lease(pool, schema, run_id)

        await executor_dies(1)
        await executor_dies(2)
        # A graceful hand-back (a shutdown) in between: recovered again, but it does not count.
        executor = await engine.claim_executor(run_id, spec, worker_id="w-graceful")
        task = asyncio.create_task(executor.execute())
        await _wait_running(engine, run_id, "k", 3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await engine.queue.release("w-graceful", [run_id])

        state = await engine.state(run_id)
        assert (state.recoveries, state.crashed_executors, state.crashed_workers) == (2, 2, 0)

        # The next attempt's worker dies (killed from outside, as the OOM killer would).
        executor = await engine.claim_executor(run_id, spec, worker_id="w-last")
        task = asyncio.create_task(executor.execute())
        await _wait_running(engine, run_id, "k", 4)
        pid_file = tmp_path / "pid"
        deadline = time.monotonic() + 20
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        await asyncio.wait_for(task, 30)

        events = await engine.events(run_id)
        recovered = [e.data for e in events if isinstance(e.data, RunRecovered)]
        assert [r.lease_expired for r in recovered] == [True, True, False]
        assert [(a, k) for a, k, _ in failures(events, "k")] == [(4, "worker_crashed")]
        assert "was killed with SIGKILL" in failures(events, "k")[0][2]
        finished = events[-1].data
        assert isinstance(finished, RunFinished) and finished.status == "failed"
        assert finished.error is not None and finished.error.startswith(
            "poison_run: executing this run took down a worker or its executor 3 times "
            "(1 worker crash(es), 2 recovery(ies) after its executor died)"
        )

        # A later claim (another restart) finds the run ended: nothing runs, nothing is appended.
        assert [c for c in await engine.queue.claim("w-after", 100, 30) if c.run_id == run_id] == []
        assert len(await engine.events(run_id)) == len(events)


async def test_a_recovery_after_the_third_dead_executor_ends_the_run_without_running_it(
    pool: asyncpg.Pool, schema: str, tmp_path: Path
) -> None:
    spec = wf("killer3", [python_node("k", {"callable": f"{BAD}:sleep_forever"}, max_attempts=5)], [])
    async with engine_on(pool, schema, worker=False) as engine:
        await engine.register(spec)
        run_id = await engine.start("killer3", {"pid_file": str(tmp_path / "pid")})
        for attempt in (1, 2, 3):
            executor = await engine.claim_executor(run_id, spec, worker_id=f"w{attempt}")
            task = asyncio.create_task(executor.execute())
            await _wait_running(engine, run_id, "k", attempt)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await _expire_lease(pool, schema, run_id)
        executor = await engine.claim_executor(run_id, spec, worker_id="w4")
        await asyncio.wait_for(executor.execute(), 30)
        events = await engine.events(run_id)
        assert [e.type for e in events[-3:]] == ["run_recovered", "node_skipped", "run_finished"]
        assert node_events(events, "k").count("node_execute_before#4") == 0
        assert events[-1].data.error.startswith("poison_run: ")
        assert "(3 recovery(ies) after its executor died)" in events[-1].data.error


async def test_a_node_timeout_kills_the_worker_and_fails_the_attempt(engine: Engine, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    await engine.register(
        wf("slow", [python_node("s", {"callable": f"{BAD}:sleep_forever"}, timeout_ms=1500)], [])
    )
    events = await engine.wait_ended(await engine.start("slow", {"pid_file": str(pid_file)}), timeout=30)
    assert [(a, k) for a, k, _ in failures(events, "s")] == [(1, "timeout")]
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        assert time.monotonic() < deadline, f"worker {pid} still runs after its node timed out"
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_a_cpu_bound_python_node_does_not_stall_a_concurrent_delay_node(engine: Engine) -> None:
    await engine.register(
        wf(
            "busy",
            [
                python_node("burn", {"callable": f"{BAD}:spin_async"}),  # never awaits
                {"id": "tick", "type": "delay", "config": {"ms": 200}},
            ],
            [],
        )
    )
    events = await engine.wait_ended(await engine.start("busy", {"seconds": 2.5}), timeout=60)
    assert events[-1].data.status == "succeeded"
    after = {e.data.node_id: e for e in events if isinstance(e.data, NodeExecuteAfter)}
    assert after["burn"].data.duration_ms >= 2400
    # Both started together; the delay finished (and was recorded) while the burn still ran.
    # On a stalled loop it could not even have started its timer until the burn was over.
    ahead = (after["burn"].recorded_at - after["tick"].recorded_at).total_seconds()
    assert ahead > 1.5, f"the delay node ended only {ahead:.2f} s before the CPU-bound one"


@pytest.mark.slow
async def test_the_service_keeps_serving_while_python_nodes_crash_and_burn(servers: Servers) -> None:
    async with serve_app(servers, own_database=True, nodes=NodeSettings(python_workers=2)) as api:
        specs = [
            wf("crash", [python_node("bad", {"callable": f"{BAD}:segfault"}, max_attempts=2)], []),
            wf("burn", [python_node("burn", {"callable": f"{BAD}:hold_gil"})], []),
            wf("ok", [python_node("ok", {"callable": "examples.python_nodes:greeting"})], []),
        ]
        for spec in specs:
            assert (await api.post("/v1/workflows", json=spec)).status_code in (200, 201)
        crash = (await api.post("/v1/workflows/crash/runs", json={"inputs": {}})).json()["run_id"]
        burn = (await api.post("/v1/workflows/burn/runs", json={"inputs": {"n": 80_000_000}})).json()[
            "run_id"
        ]
        ok = (await api.post("/v1/workflows/ok/runs", json={"inputs": {"name": "Ada"}})).json()["run_id"]

        slowest = 0.0
        async with httpx.AsyncClient(base_url=str(api.base_url), timeout=5) as probe:
            ended = asyncio.ensure_future(wait_ended(api, burn, timeout=60))
            while not ended.done():
                started = time.monotonic()
                assert (await probe.get("/health")).status_code == 200
                slowest = max(slowest, time.monotonic() - started)
                await asyncio.sleep(0.05)
            burned = await ended
        assert burned[-1]["data"]["status"] == "succeeded"
        burn_s = next(
            e["data"]["duration_ms"] / 1000
            for e in burned
            if e["type"] == "node_execute_after" and e["data"]["node_id"] == "burn"
        )
        # A loop held by the node would not answer at all until the burn was over; on a loaded
        # machine an answer can still take a while, so the bound is relative to the burn.
        assert slowest < burn_s / 2, f"/health took {slowest:.2f} s while a python node burned {burn_s:.2f} s"

        crashed = await wait_ended(api, crash, timeout=60)
        errors = [e["data"]["error"]["kind"] for e in crashed if e["type"] == "node_execute_after"]
        assert errors == ["worker_crashed", "worker_crashed"]
        assert crashed[-1]["data"]["status"] == "failed"
        assert (await wait_ended(api, ok, timeout=60))[-1]["data"]["status"] == "succeeded"
        assert (await api.get("/ready")).status_code == 200
