"""``flowledger bench load``: an open-loop load generator that steps the offered rate of runs up
until the service saturates.

Each step starts runs of the ``bench runs`` shape (5-node linear ``noop``) at a fixed rate for
a fixed time, whether or not earlier runs have finished (open loop: a slow service builds a
backlog, it does not slow the generator down). Per step: offered, issued and achieved runs/s,
events/s, p50/p99 run latency (run_queued -> run_finished) of the runs that finished in the
step, the backlog at its end, and the CPU of the service and of PostgreSQL. The saturation
point is the first step that completes fewer than 90 % of the offered runs/s, or whose p99
passes the bound. The load stops there; then every started run must finish and succeed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from rich.console import Console
from rich.table import Table

from service.bench.load_cpu import cpu_seconds, run_queue_wait, used_between
from service.bench.load_http import LoadError, http_target
from service.bench.load_local import Window, local_target
from service.bench.load_model import P99_BOUND_MS, StepResult, is_saturated, parse_rates, saturation_point
from service.bench.runs import EVENTS_PER_RUN, NODES, STALL_S
from service.config import Settings

MAX_PENDING = 20_000
"""Starts in flight at once; past it the generator has fallen behind (issued < offered)."""
TICK_S = 0.002


class Target(Protocol):
    label: str

    async def start_run(self, i: int) -> None: ...
    def check_alive(self) -> None: ...
    async def window(self, since: datetime, until: datetime) -> Window: ...
    async def unfinished(self) -> int: ...
    async def postgres_pids(self) -> list[int]: ...
    def service_pids(self) -> list[int] | None: ...
    async def drain(self, issued: int, stall_s: float) -> None: ...


@dataclass(frozen=True)
class LoadResult:
    steps: list[StepResult]
    saturation: StepResult | None
    issued: int
    target: str


class _Starter:
    """Starts runs as tasks (never awaited in line: open loop) and keeps the first failure."""

    def __init__(self, target: Target) -> None:
        self._target = target
        self.pending: set[asyncio.Task[None]] = set()
        self.issued = 0
        self.failure: BaseException | None = None

    def start(self) -> bool:
        if len(self.pending) >= MAX_PENDING:
            return False
        self.issued += 1
        task = asyncio.create_task(self._target.start_run(self.issued))
        self.pending.add(task)
        task.add_done_callback(self._done)
        return True

    def _done(self, task: asyncio.Task[None]) -> None:
        self.pending.discard(task)
        if not task.cancelled() and task.exception() is not None and self.failure is None:
            self.failure = task.exception()

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def settle(self) -> None:
        while self.pending:
            await asyncio.gather(*list(self.pending), return_exceptions=True)
        self.raise_failure()


async def _step(target: Target, starter: _Starter, rate: float, seconds: float) -> StepResult:
    pg_before = cpu_seconds(await target.postgres_pids())
    service = target.service_pids()
    service_before = cpu_seconds(service) if service is not None else None
    wait_before = run_queue_wait(service) if service is not None else None
    since = datetime.now(UTC)
    begin, handled, issued, total = time.perf_counter(), 0, 0, round(rate * seconds)
    while True:
        elapsed = time.perf_counter() - begin
        if elapsed >= seconds:
            break
        due = min(total, int(elapsed * rate) + 1)
        while handled < due:  # a start refused (too many in flight) is dropped, not made up later
            handled += 1
            issued += starter.start()
        starter.raise_failure()
        target.check_alive()
        await asyncio.sleep(TICK_S)
    until = datetime.now(UTC)
    pg_after = cpu_seconds(await target.postgres_pids())
    service_now = target.service_pids() or []
    service_after = cpu_seconds(service_now) if service_before is not None else None
    wait_after = run_queue_wait(service_now) if wait_before is not None else None
    window = await target.window(since, until)
    backlog = await target.unfinished() + len(starter.pending)
    return StepResult(
        offered=rate,
        seconds=(until - since).total_seconds(),
        issued=issued,
        finished=window.finished,
        events=window.events,
        latencies_ms=window.latencies_ms,
        backlog=backlog,
        service_cpu_s=None if service_before is None else used_between(service_before, service_after or {}),
        pg_cpu_s=used_between(pg_before, pg_after) if pg_before or pg_after else None,
        service_wait_s=None if wait_before is None else used_between(wait_before, wait_after or {}),
    )


@asynccontextmanager
async def _target(
    settings: Settings,
    url: str | None,
    api_key: str | None,
    concurrency: int,
    processes: int,
    clients: int,
    replicas: int,
) -> AsyncIterator[Target]:
    if url:
        async with http_target(url, api_key, clients) as target:
            yield target
    else:
        async with local_target(settings, concurrency, processes, replicas) as local:
            yield local


async def bench_load(
    settings: Settings,
    rates: str = "50,100,200,400,800",
    step_seconds: float = 10.0,
    concurrency: int = 100,
    processes: int = 0,
    url: str | None = None,
    replicas: int = 1,
    api_key: str | None = None,
    clients: int = 64,
    p99_bound_ms: float = P99_BOUND_MS,
) -> LoadResult:
    """Offer each rate of ``rates`` in turn for ``step_seconds``, stop at saturation, drain and
    check every run, print the table."""
    offered = parse_rates(rates)
    if not step_seconds > 0:
        raise ValueError("--step-seconds must be positive")
    if concurrency < 1 or clients < 1 or processes < 0 or not p99_bound_ms > 0:
        raise ValueError(
            "--concurrency and --clients must be at least 1, --processes 0 or more, --p99-bound-ms positive"
        )
    steps: list[StepResult] = []
    async with _target(settings, url, api_key, concurrency, processes, clients, replicas) as target:
        starter = _Starter(target)
        try:
            for rate in offered:
                step = await _step(target, starter, rate, step_seconds)
                steps.append(step)
                if is_saturated(step, p99_bound_ms):
                    break
            await starter.settle()
            await target.drain(starter.issued, STALL_S)
        finally:
            for task in list(starter.pending):
                task.cancel()
        label = target.label
    result = LoadResult(steps, saturation_point(steps, p99_bound_ms), starter.issued, label)
    print_load(result, concurrency, processes, p99_bound_ms, replicas, url is not None)
    return result


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _one_decimal(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} %"


def print_load(
    result: LoadResult, concurrency: int, processes: int, p99_bound_ms: float, replicas: int, remote: bool
) -> None:
    table = Table(title="flowledger bench load (runs/s, events/s; CPU in % of one core)")
    columns = (
        "offered/s",
        "issued/s",
        "done/s",
        "events/s",
        "p50 ms",
        "p99 ms",
        "backlog",
        "svc CPU",
        "svc wait",
        "PG CPU",
        "PG ms/1k ev",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for step in result.steps:
        table.add_row(
            f"{step.offered:,.0f}",
            f"{step.issued_rate:,.0f}",
            f"{step.achieved:,.0f}",
            f"{step.events_per_s:,.0f}",
            _ms(step.p50_ms),
            _ms(step.p99_ms),
            f"{step.backlog:,}",
            _pct(step.service_cpu_pct),
            _pct(step.service_wait_pct),
            _pct(step.pg_cpu_pct),
            _one_decimal(step.pg_cpu_ms_per_1k_events),
        )
    console = Console()
    if not console.is_terminal:  # a pipe or a file: the whole table, never cut at 80 columns
        console = Console(width=max(console.width, 132))
    console.print(table)
    sat = result.saturation
    if sat is None:
        last = result.steps[-1]
        console.print(
            f"saturation: not reached up to {last.offered:,.0f} runs/s offered "
            f"({last.achieved:,.0f} runs/s, {last.events_per_s:,.0f} events/s achieved)"
        )
    else:
        console.print(
            f"saturation: at {sat.offered:,.0f} runs/s offered: {sat.achieved:,.0f} runs/s achieved, "
            f"{sat.events_per_s:,.0f} events/s, p99 {_ms(sat.p99_ms)} ms"
        )
    where = (
        "a running service (--url): runs started over HTTP, figures from GET /v1/runs, events counted "
        f"as {EVENTS_PER_RUN} per run, PG CPU = every local postgres process"
        if remote
        else f"the bench's own service, workers {'in this process' if not processes else f'in {processes} processes'} "
        f"({concurrency} runs at once), relay to an R{replicas} stream; PG CPU = this database's backends "
        "and the server's own processes; service CPU = this process and its workers (% of one core); "
        "svc wait = the time they waited, runnable, for a CPU (Linux schedstat)"
    )
    notes = [
        f"{result.issued:,} runs of a {NODES}-node linear noop workflow, open loop; every one finished "
        "and succeeded (checked after the last step).",
        f"target: {where}.",
        f"saturated = achieved < 90 % of offered, or p99 (run_queued -> run_finished) > {p99_bound_ms:,.0f} ms.",
    ]
    for note in notes:
        console.print(f"[dim]{note}[/dim]")


__all__ = ["LoadError", "LoadResult", "bench_load"]
