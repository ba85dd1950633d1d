"""A rebuild's fold in several processes, each folding one share of the runs.

Folding is CPU work in Python (decode, apply, encode for COPY), so one process is
bound to one core. Every projection's rows are per run, so the runs can be split
(by a hash of the run id, in the query) among worker processes
(``service.followers.rebuild_worker``): each reads its share of the log up to the
head as it was when the rebuild began and COPYs its rows into the same shadow
tables. ``rebuild_all`` then builds the indexes and catches up from that head
under the checkpoint locks, exactly as after a fold in one process.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable

import msgspec

from projections.runner import FoldShadows, Projection
from schemas.envelope import LogEvent
from service.store.event_store import EventStore

PARALLEL_FROM_EVENTS = 100_000
"""Below this many events in the log a rebuild folds in its own process: starting the
workers (~0.3 s each) would cost more than it saves."""
WORKER_MODULE = "service.followers.rebuild_worker"


class FoldJob(msgspec.Struct, frozen=True):
    """What one worker folds: the runs of ``share`` (of ``shares``) up to position ``upto``."""

    database_url: str
    schema: str
    projections: list[str]
    shadows: list[str]
    batch: int
    copy_rows: int
    upto: int
    share: int
    shares: int


class FoldDone(msgspec.Struct, frozen=True):
    """A worker's answer: the last position it read and its late events, in log order."""

    position: int
    late: list[LogEvent]


PROGRESS = b"+"
"""A worker's stdout: one ``+<events>`` line per page folded, then ``=<FoldDone as JSON>``."""
DONE = b"="


class RebuildWorkerFailed(RuntimeError):
    """A worker process of a parallel rebuild failed (nothing was swapped in)."""


def default_workers() -> int:
    """Half the cores, at most 4: PostgreSQL needs the rest (each worker's reads and COPYs
    cost it CPU), usually on the same machine. On 2 cores: 1, the fold in the caller's process
    (measured on a shared 2-core machine, 2 workers were no faster than 1 there)."""
    return max(1, min(4, (os.cpu_count() or 1) // 2))


def process_fold(store: EventStore, database_url: str, workers: int, copy_rows: int = 20_000) -> FoldShadows:
    """A ``FoldShadows`` that folds in ``workers`` processes, each on its own connections."""

    async def fold(
        projections: list[Projection],
        shadows: list[str],
        batch: int,
        on_progress: Callable[[int], None] | None,
    ) -> tuple[int, list[LogEvent]]:
        upto = await store.head_position()
        jobs = [
            FoldJob(
                database_url,
                store.schema,
                [p.name for p in projections],
                shadows,
                batch,
                copy_rows,
                upto,
                share,
                workers,
            )
            for share in range(workers)
        ]
        done = await _run_workers(jobs, on_progress)
        late = sorted((e for d in done for e in d.late), key=lambda e: e.global_position)
        return upto, late

    return fold


async def _run_workers(jobs: list[FoldJob], on_progress: Callable[[int], None] | None) -> list[FoldDone]:
    procs: list[asyncio.subprocess.Process] = []
    try:
        for _ in jobs:
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    WORKER_MODULE,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
            )
        return list(
            await asyncio.gather(*[_follow(p, j, on_progress) for p, j in zip(procs, jobs, strict=True)])
        )
    finally:
        # On failure or cancellation no worker may go on writing into the shadow tables.
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
        for proc in procs:
            await proc.wait()


async def _follow(
    proc: asyncio.subprocess.Process, job: FoldJob, on_progress: Callable[[int], None] | None
) -> FoldDone:
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    errors = asyncio.ensure_future(proc.stderr.read())  # read all along: a full pipe would block it
    try:
        proc.stdin.write(msgspec.json.encode(job))
        await proc.stdin.drain()
        proc.stdin.close()
        answer: FoldDone | None = None
        while line := await proc.stdout.readline():
            if line.startswith(PROGRESS):
                if on_progress is not None:
                    on_progress(int(line[1:]))
            elif line.startswith(DONE):
                answer = msgspec.json.decode(line[1:], type=FoldDone)
        code = await proc.wait()
        stderr = await errors
    finally:
        errors.cancel()
    if code != 0 or answer is None:
        lines = stderr.decode(errors="replace").strip().splitlines()
        reason = lines[-1] if lines else f"exit code {code}"
        raise RebuildWorkerFailed(f"rebuild worker {job.share + 1} of {job.shares} failed: {reason}")
    return answer
