"""CPU seconds used by a set of processes between two readings (psutil), for ``bench load``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import psutil

SERVER_NAMES = ("postgres", "nats-server")
"""Children of the service process that are not the service: the embedded servers."""


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each live process of ``pids`` (gone or unreadable: left out)."""
    seconds = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        seconds[pid] = times.user + times.system
    return seconds


def run_queue_wait(pids: list[int]) -> dict[int, float] | None:
    """Seconds each process's threads have waited, runnable, for a CPU (Linux ``schedstat``):
    on a shared machine, the CPU a process wanted and did not get. None where not available."""
    if not Path("/proc/self/schedstat").exists():
        return None
    waits = {}
    for pid in pids:
        total = 0
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += int((task / "schedstat").read_text().split()[1])
        except OSError:
            continue
        waits[pid] = total / 1e9
    return waits


def used_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two readings: a process new in ``after`` counts from 0 (it
    started in between); one gone by ``after`` is lost (its last slice is not counted)."""
    return sum(max(0.0, spent - before.get(pid, 0.0)) for pid, spent in after.items())


def service_pids() -> list[int]:
    """This process and its descendants (worker processes), without the embedded servers."""
    me = psutil.Process(os.getpid())
    pids = [me.pid]
    for child in me.children(recursive=True):
        try:
            if not child.name().startswith(SERVER_NAMES):
                pids.append(child.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def local_postgres_pids() -> list[int]:
    """Every process named ``postgres`` on this machine (when the database is not reachable to
    ask which backends are its own: the figure then includes other databases' work)."""
    pids = []
    for proc in psutil.process_iter(["name"]):
        if (proc.info.get("name") or "").startswith("postgres"):
            pids.append(proc.pid)
    return pids
