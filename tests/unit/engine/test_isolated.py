"""The isolated worker pool with real worker processes (no database): ``python`` nodes through the
real registry, each crash cause, limits, timeouts, recycling, and the service process untouched.

The misbehaving callables are in ``tests/helpers/bad_nodes.py``; no test imports that module,
so the service process provably never does.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest

from service.config import NodeSettings
from service.engine.nodes import NodeContext, NodeFailure, NodeRegistry, NodeType, default_registry
from service.engine.nodes.builtins import PythonConfig
from service.engine.nodes.isolated import IsolatedPool, callable_ref, describe_exit
from tests.helpers.paths import REPO_ROOT

BAD = "tests.helpers.bad_nodes"


@pytest.fixture
async def registry() -> AsyncIterator[NodeRegistry]:
    registry = default_registry(NodeSettings(python_workers=2, python_memory_mb=256, python_cpu_seconds=60))
    try:
        yield registry
    finally:
        await registry.aclose()


def ctx(inputs: dict[str, Any] | None = None, node_id: str = "n1") -> NodeContext:
    return NodeContext(
        run_id="run-1",
        node_id=node_id,
        node_type="python",
        attempt=1,
        document={"inputs": inputs or {}, "nodes": {}},
    )


async def call(registry: NodeRegistry, name: str, inputs: dict[str, Any] | None = None, **config: Any) -> Any:
    parsed = registry.parse_config("python", {"callable": f"{BAD}:{name}", **config})
    return await registry.execute("python", parsed, ctx(inputs))


async def crash(
    registry: NodeRegistry, name: str, inputs: dict[str, Any] | None = None, **config: Any
) -> str:
    with pytest.raises(NodeFailure) as info:
        await call(registry, name, inputs, **config)
    assert info.value.kind == "worker_crashed", info.value
    assert info.value.retryable
    return info.value.message


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize(
    ("name", "config", "how"),
    [
        ("exit_now", {}, "exited with code 3 during the call (sys.exit or os._exit in the called code)"),
        ("exit_hard", {}, "exited with code 7 during the call (sys.exit or os._exit in the called code)"),
        ("segfault", {}, "crashed with SIGSEGV (a segmentation fault)"),
        ("hog_memory", {"memory_mb": 128}, "ran out of memory (MemoryError at its memory limit of 128 MiB)"),
        ("spin", {"cpu_seconds": 1}, "exceeded its CPU time limit of 1 s (SIGXCPU)"),
    ],
)
async def test_each_crash_fails_the_call_with_worker_crashed_and_the_next_call_gets_a_fresh_worker(
    registry: NodeRegistry, name: str, config: dict[str, Any], how: str
) -> None:
    before = await call(registry, "pid", **config)  # the worker the crashing call will get
    message = await crash(registry, name, **config)
    assert message == f"node n1: worker process {before} {how}"
    assert gone(before)  # the crash was the worker's, and it took only the worker
    after = await call(registry, "pid", **config)
    assert after != before and after != os.getpid()
    assert "tests.helpers.bad_nodes" not in sys.modules


async def test_an_exception_is_an_ordinary_failure_and_the_worker_lives_on(registry: NodeRegistry) -> None:
    first = await call(registry, "pid")
    with pytest.raises(NodeFailure) as info:
        await call(registry, "raise_value_error")
    assert (info.value.kind, info.value.message, info.value.retryable) == (
        "ValueError",
        "bad input, not a crash",
        True,
    )
    with pytest.raises(NodeFailure) as bad:
        await call(registry, "bad_output")
    assert bad.value.kind == "invalid_output" and not bad.value.retryable
    assert await call(registry, "pid") == first


async def test_print_in_user_code_does_not_corrupt_the_replies(registry: NodeRegistry) -> None:
    assert await call(registry, "noisy") == "still fine"
    assert await call(registry, "noisy") == "still fine"


async def test_a_timeout_kills_the_worker_running_the_call(registry: NodeRegistry, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            await call(registry, "sleep_forever", {"pid_file": str(pid_file)})
    pid = int(pid_file.read_text())
    assert gone(pid), f"worker {pid} still runs after its call timed out"
    assert await call(registry, "pid") != pid


async def test_workers_are_recycled_after_max_calls() -> None:
    registry = default_registry(NodeSettings(python_workers=1, python_max_calls=2))
    try:
        pids = [await call(registry, "pid") for _ in range(5)]
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
        assert gone(pids[0]) and gone(pids[2])
    finally:
        await registry.aclose()


async def test_calls_beyond_the_pool_size_wait_and_all_run_in_separate_processes() -> None:
    registry = default_registry(NodeSettings(python_workers=2))
    try:
        started = time.monotonic()
        results = await asyncio.gather(*(call(registry, "spin", {"seconds": 0.3}) for _ in range(4)))
        assert all(isinstance(r, int) and r > 0 for r in results)
        assert time.monotonic() - started >= 0.55  # two at a time: two rounds of 0.3 s
        assert registry.isolated.started == 2
    finally:
        await registry.aclose()


@pytest.mark.parametrize(
    ("name", "inputs"),
    [("spin", {"seconds": 1.0}), ("spin_async", {"seconds": 1.0}), ("hold_gil", {"n": 40_000_000})],
)
async def test_a_cpu_bound_call_does_not_stall_the_event_loop(
    registry: NodeRegistry, name: str, inputs: dict[str, Any]
) -> None:
    """Plain Python, a coroutine function that never awaits, and a C call holding the GIL: none
    runs in the service process, so the loop ticks on."""
    await call(registry, "pid")  # the worker is up: what follows measures the call, not the start
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    try:
        assert await call(registry, name, inputs) > 0
    finally:
        ticker.cancel()
    took = time.monotonic() - started
    assert took > 0.3 and len(gaps) > took / 0.05, (took, len(gaps))
    assert max(gaps) < 0.25, f"the loop stalled: longest gap {max(gaps):.3f} s"


async def test_memory_limits_are_per_node_and_workers_are_kept_per_limit(registry: NodeRegistry) -> None:
    default = await call(registry, "pid")
    small = await call(registry, "pid", memory_mb=128)
    assert small != default
    assert await call(registry, "pid") == default  # each limit keeps its own idle worker
    assert await call(registry, "pid", memory_mb=128) == small
    # a third limit with both slots' workers idle: one of them is retired to make room
    other = await call(registry, "pid", memory_mb=512)
    assert other not in (default, small)
    assert registry.isolated.started == 3


async def test_the_worker_imports_user_code_the_service_never_does(registry: NodeRegistry) -> None:
    assert await call(registry, "is_loaded", {"module": BAD}) is True
    assert BAD not in sys.modules


async def test_the_python_registration_check_does_not_import_user_code(registry: NodeRegistry) -> None:
    assert registry.check_config("python", {"callable": f"{BAD}:segfault"}) is not None
    assert BAD not in sys.modules
    with pytest.raises(ValueError, match=r"no module named 'tests\.helpers\.no_such_nodes'"):
        registry.check_config("python", {"callable": "tests.helpers.no_such_nodes:f"})


def test_python_limits_in_the_config_are_checked() -> None:
    registry = NodeRegistry()
    from service.engine.nodes.builtins import register_builtins

    register_builtins(registry)
    ok = registry.parse_config("python", {"callable": "m:f", "memory_mb": 0, "cpu_seconds": 5})
    assert ok == PythonConfig(callable="m:f", memory_mb=0, cpu_seconds=5)
    with pytest.raises(ValueError, match="memory_mb must be 0 \\(no limit\\) or at least 64, got 10"):
        registry.parse_config("python", {"callable": "m:f", "memory_mb": 10})
    with pytest.raises(ValueError, match="cpu_seconds"):
        registry.parse_config("python", {"callable": "m:f", "cpu_seconds": -1})


# -- isolated plugin node types -----------------------------------------------------------------------


class DoubleConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    value: int
    memory_mb: int | None = None


async def double_in_a_worker(config: DoubleConfig, ctx: NodeContext) -> dict[str, int]:
    """Runs in a worker process: doubles ``value`` and says where it ran."""
    return {"doubled": config.value * 2, "pid": os.getpid(), "attempt": ctx.attempt}


async def test_a_plugin_node_type_can_declare_itself_isolated() -> None:
    registry = NodeRegistry(isolated=IsolatedPool(1))
    registry.register(NodeType("double", DoubleConfig, double_in_a_worker, isolated=True))
    try:
        out = await registry.execute("double", DoubleConfig(value=21, memory_mb=128), ctx())
        assert out["doubled"] == 42 and out["attempt"] == 1
        assert out["pid"] != os.getpid()
    finally:
        await registry.aclose()


def test_an_isolated_node_type_must_be_importable_by_name() -> None:
    async def local_handler(config: DoubleConfig, ctx: NodeContext) -> None:
        return None

    with pytest.raises(TypeError, match="isolated node type 'local': a worker process cannot import it"):
        NodeRegistry().register(NodeType("local", DoubleConfig, local_handler, isolated=True))
    assert callable_ref(double_in_a_worker) == f"{__name__}:double_in_a_worker"


def test_exit_descriptions_name_the_cause() -> None:
    assert describe_exit(-9, memory_mb=0, cpu_seconds=0).startswith("was killed with SIGKILL")
    assert describe_exit(-15, memory_mb=0, cpu_seconds=0) == "was killed by SIGTERM"
    assert describe_exit(86, memory_mb=0, cpu_seconds=0) == "ran out of memory (MemoryError at memory)"


@pytest.mark.slow
def test_workers_die_with_the_service_even_after_kill_9(tmp_path: Path) -> None:
    """A process with a pool is SIGKILLed while its worker runs a call: the worker goes too."""
    pid_file = tmp_path / "pid"
    script = textwrap.dedent(
        f"""
        import asyncio
        from service.engine.nodes import NodeContext, default_registry

        async def main():
            registry = default_registry()
            config = registry.parse_config("python", {{"callable": "{BAD}:sleep_forever"}})
            ctx = NodeContext(run_id="r", node_id="n", node_type="python", attempt=1,
                              document={{"inputs": {{"pid_file": {str(pid_file)!r}}}, "nodes": {{}}}})
            await registry.execute("python", config, ctx)

        asyncio.run(main())
        """
    )
    service = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert service.poll() is None, "the service process exited early"
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.05)
        worker = int(pid_file.read_text())
        assert psutil.pid_exists(worker)
        service.kill()
        service.wait(timeout=10)
        assert gone(worker), f"worker {worker} outlived the service"
    finally:
        if service.poll() is None:
            service.kill()
