"""The fault drill: runs started through three ``flowledger serve`` instances while faults from a
fixed seed hit them, PostgreSQL, the NATS cluster and one instance's database connections; then
everything is healed, every run must end, and the checks print as a table.

    python -m tests.chaos.drill --runs 1000 --seed 7            # what `make chaos` runs
    python -m tests.chaos.drill --runs 150 --duration 40 --short # about the CI form

Exit 0 when every check passed, 1 on any violation (the logs are then kept and their
directory printed; ``--keep DIR`` keeps them in DIR whatever the outcome), 2 for bad options.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import asyncpg
from rich.console import Console
from rich.table import Table

from service.infra.db import init_connection
from tests.chaos.checks import Check, run_checks, wait_all_ended
from tests.chaos.faults import (
    FULL,
    KILL9,
    NATS_ALL,
    NATS_NODE,
    PG_STOP,
    PROXY_DROP,
    PROXY_STALL,
    SHORT,
    Fault,
    Limits,
    plan_faults,
)
from tests.chaos.stage import ROLES, Stage
from tests.chaos.workload import Workload


@dataclass(frozen=True)
class Options:
    runs: int = 1000
    seed: int = 7
    duration: float = 480.0
    """Seconds of faults (the plan's first round, every kind once, may run past it)."""
    limits: Limits = FULL
    drain_timeout: float = 180.0
    """After healing, how long every run has to end before the rest are stragglers."""
    keep: Path | None = None


@dataclass
class Injected:
    fault: Fault
    started_at: float
    healed_after: float = 0.0
    note: str = ""
    error: str = ""


@dataclass
class Result:
    options: Options
    directory: Path
    checks: list[Check] = field(default_factory=list)
    faults: list[Injected] = field(default_factory=list)
    wall_seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and all(c.ok for c in self.checks) and not any(f.error for f in self.faults)


class _Say:
    """Prints a line with the drill's clock, and appends it to ``drill.log``."""

    def __init__(self, log: Path, out: TextIO) -> None:
        self._log = log.open("a")
        self._out = out
        self.t0 = time.monotonic()

    def __call__(self, line: str) -> None:
        stamped = f"[{time.monotonic() - self.t0:6.1f} s] {line}"
        print(stamped, file=self._out, flush=True)
        self._log.write(stamped + "\n")
        self._log.flush()

    def close(self) -> None:
        self._log.close()


async def _inject(stage: Stage, fault: Fault) -> str:
    if fault.kind == KILL9:
        await stage.kill9(fault.target, fault.seconds)
        return ""
    if fault.kind == PG_STOP:
        await stage.postgres_immediate_stop(fault.seconds)
        return ""
    if fault.kind == NATS_NODE:
        await stage.nats_node_down(fault.target, fault.seconds)
        return ""
    if fault.kind == NATS_ALL:
        await stage.nats_cluster_down(fault.seconds)
        return ""
    if fault.kind == PROXY_DROP:
        return f"{await stage.proxy_drop(fault.seconds)} connections reset"
    if fault.kind == PROXY_STALL:
        await stage.proxy_stall(fault.seconds)
        return ""
    raise ValueError(f"unknown fault kind {fault.kind!r}")


async def _inject_all(stage: Stage, plan: list[Fault], say: _Say, into: list[Injected]) -> None:
    """Each fault at its planned offset from now (or once the previous one healed, if later)."""
    t0 = time.monotonic()
    for fault in plan:
        await asyncio.sleep(max(0.0, t0 + fault.at - time.monotonic()))
        done = Injected(fault, started_at=time.monotonic() - t0)
        into.append(done)
        say(f"fault {len(into)}/{len(plan)}: {fault.kind} ({fault.target}) for {fault.seconds:.1f} s")
        began = time.monotonic()
        try:
            done.note = await _inject(stage, fault)
        except Exception as exc:  # noted as a violation; the drill heals and goes on
            done.error = f"{type(exc).__name__}: {exc}"[:300]
            say(f"  fault failed: {done.error}")
            with contextlib.suppress(Exception):
                await stage.heal_all()
        done.healed_after = time.monotonic() - began
        say(f"  healed after {done.healed_after:.1f} s {done.note}".rstrip())


async def run_drill(options: Options, out: TextIO = sys.stdout) -> Result:
    """Run the drill; never raises for a violation (see ``Result.ok``). Its directory is removed
    when it passed, unless ``options.keep`` named it."""
    keep = options.keep
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    root = keep if keep is not None else Path(tempfile.mkdtemp(prefix="flowledger-chaos-"))
    result = Result(options, root)
    say = _Say(root / "drill.log", out)
    stage = Stage(root)
    workload: Workload | None = None
    pool: asyncpg.Pool | None = None
    side: list[asyncio.Task[None]] = []
    plan = plan_faults(options.seed, options.duration, options.limits)
    try:
        say(f"chaos drill: seed {options.seed}, {options.runs} runs, {len(plan)} faults, logs in {root}")
        await stage.start()
        roles = "; ".join(f"{n} --role {' --role '.join(r)}" for n, r in ROLES.items())
        say(f"PostgreSQL {stage.database_url}, NATS {stage.cluster.seed_url}; instances: {roles}")
        workload = Workload(stage.base_urls, stage.auth_headers, options.seed, options.runs)
        await workload.register()
        side.append(asyncio.create_task(stage.supervise()))
        window = 0.9 * max(options.duration, plan[-1].at + plan[-1].seconds)
        starting = asyncio.create_task(workload.start_all(window))
        await _inject_all(stage, plan, say, result.faults)
        say("faults over: healing everything")
        await stage.heal_all()
        await asyncio.wait_for(starting, timeout=120)
        say(f"all {len(workload.state.started)} runs started; waiting for them to end")
        pool = await asyncpg.create_pool(stage.database_url, min_size=1, max_size=4, init=init_connection)
        assert pool is not None
        run_ids = [s.run_id for s in workload.state.started.values()]
        stragglers = await wait_all_ended(pool, run_ids, options.drain_timeout)
        side_stuck = await workload.wait_side_tasks(30)
        say(f"{len(run_ids) - len(stragglers)} of {len(run_ids)} runs ended; checking")
        result.checks = await run_checks(stage, workload, pool, stragglers, side_stuck)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:2000]
        say(f"drill aborted: {result.error}")
    finally:
        for task in side:
            task.cancel()
        await asyncio.gather(*side, return_exceptions=True)
        if workload is not None:
            await workload.close()
        if pool is not None:
            await pool.close()
        with contextlib.suppress(Exception):
            await stage.stop()
        result.wall_seconds = time.monotonic() - say.t0
        say.close()
        if result.ok and keep is None:  # a failed drill keeps its logs, and so does --keep
            shutil.rmtree(root, ignore_errors=True)
    return result


def report(result: Result, console: Console) -> None:
    """The verdict as two tables (checks, faults) and where the logs are."""
    o = result.options
    checks = Table(title=f"Chaos drill: seed {o.seed}, {o.runs} runs, 3 instances", title_justify="left")
    checks.add_column("check")
    checks.add_column("result")
    checks.add_column("detail", overflow="fold")
    for c in result.checks:
        verdict = "[green]ok[/]" if c.ok and c.problems == [] else "[red]FAIL[/]"
        checks.add_row(c.name, verdict, c.detail)
    if result.error:
        checks.add_row("drill", "[red]FAIL[/]", result.error)
    console.print(checks)
    faults = Table(
        title="Faults injected (at: seconds after the first run was started)", title_justify="left"
    )
    for column in ("#", "at s", "fault", "target", "down s", "healed after s", "note"):
        faults.add_column(column, justify="right" if column.endswith("s") or column == "#" else "left")
    for i, f in enumerate(result.faults, 1):
        note = f"[red]{f.error}[/]" if f.error else f.note
        faults.add_row(
            str(i),
            f"{f.started_at:.1f}",
            f.fault.kind,
            f.fault.target,
            f"{f.fault.seconds:.1f}",
            f"{f.healed_after:.1f}",
            note,
        )
    console.print(faults)
    verdict = "[green]PASS[/]" if result.ok else "[red]FAIL[/]"
    console.print(f"{verdict} in {result.wall_seconds:.0f} s wall time", highlight=False)
    if not result.ok or o.keep is not None:
        console.print(f"logs kept in {result.directory}", highlight=False)


def _positive(kind: Callable[[str], float | int]) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.drill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=_positive(int), default=1000, help="runs to start (default 1000)")
    parser.add_argument(
        "--seed", type=int, default=7, help="seed of the fault plan and the workload (default 7)"
    )
    parser.add_argument(
        "--duration", type=_positive(float), default=480.0, help="seconds of faults (default 480)"
    )
    parser.add_argument(
        "--short", action="store_true", help="shorter faults (the CI form): PostgreSQL down 5-8 s, NATS 6 s"
    )
    parser.add_argument(
        "--drain-timeout",
        type=_positive(float),
        default=180.0,
        help="seconds for every run to end after healing",
    )
    parser.add_argument("--keep", type=Path, help="keep the logs in this directory (kept anyway on failure)")
    args = parser.parse_args(argv)
    options = Options(
        runs=args.runs,
        seed=args.seed,
        duration=args.duration,
        limits=SHORT if args.short else FULL,
        drain_timeout=args.drain_timeout,
        keep=args.keep,
    )
    result = asyncio.run(run_drill(options))
    report(result, Console(width=max(120, shutil.get_terminal_size().columns)))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
