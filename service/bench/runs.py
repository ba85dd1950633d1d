"""``flowledger bench runs``: whole-path run throughput vs DBOS on the same PostgreSQL server.

Ours, per run of a 5-node linear ``noop`` workflow (``--node-type python``: 5 ``python``
nodes calling ``json:dumps`` in the isolated worker processes, to measure what isolation
costs): enqueue (queue row and
``run_queued`` in one transaction), execution by a ``Worker`` (every node's
``node_execute_before``, ``_after`` and ``_after_data`` durable before the next
node starts), and the relay publishing every event to a fresh JetStream
stream. The clock stops when every run has finished *and* the relay has
published up to the log head.

Baseline, in the same process right after: DBOS (``pip install dbos``), a
workflow of 5 ``@DBOS.step()`` steps doing nothing, in a throw-away database
on the same server; ``DBOS.start_workflow`` for every run, then every handle's
result. Both sides run ``concurrency`` runs at once (our worker's
``max_runs``, DBOS's ``max_executor_threads``) and issue starts from
``STARTERS`` concurrent callers.

Nothing is trusted silently: every one of our runs must have a
``run_finished`` event with status ``succeeded`` and every event must have
been relayed; every DBOS workflow must return its input and be ``SUCCESS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from nats.aio.client import Client as NATS
from rich.console import Console
from rich.progress import Progress, TaskID

from schemas.workflow import EdgeSpec, NodeSpec, WorkflowSpec
from service.bench.report import Comparison, print_comparisons
from service.bench.scratch import scratch_schema, scratch_stream
from service.config import Settings, WorkerSettings
from service.engine.nodes import default_registry
from service.engine.worker import Worker
from service.followers.relay import Relay
from service.infra.db import create_pool
from service.infra.event_loop import event_loop_factory
from service.runtime import running
from service.store.event_store import EventStore
from service.store.run_queue import RunQueue
from service.store.workflow_store import StoredWorkflow, WorkflowStore

NODES = 5
STARTERS = 16
"""Concurrent callers of ``RunQueue.enqueue`` / ``DBOS.start_workflow``."""
EVENTS_PER_RUN = 3 + 3 * NODES  # run_queued, run_started, 3 per node, run_finished
STALL_S = 60.0
"""Fail (rather than hang) when no run finishes for this long."""
TENANT = "bench"


NODE_TYPES = ("noop", "python")
PYTHON_CALLABLE = "json:dumps"
"""What a ``python`` bench node calls: trivial, so the figure is the cost of the worker process."""


def bench_spec(node_type: str = "noop") -> WorkflowSpec:
    """``n1 -> n2 -> ... -> n5``, every node a ``noop`` (or a ``python`` node: ``json:dumps``)."""
    if node_type not in NODE_TYPES:
        raise ValueError(f"--node-type must be one of {', '.join(NODE_TYPES)}, got {node_type!r}")
    ids = [f"n{i}" for i in range(1, NODES + 1)]
    config = {"callable": PYTHON_CALLABLE} if node_type == "python" else {}
    return WorkflowSpec(
        id="bench-runs",
        name=f"bench runs: 5 {node_type} nodes in a line",
        nodes=[NodeSpec(id=node_id, type=node_type, config=config) for node_id in ids],
        edges=[EdgeSpec(from_=a, to=b) for a, b in pairwise(ids)],
    )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass(frozen=True)
class SideResult:
    runs: int
    elapsed_s: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.runs / self.elapsed_s

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)


@dataclass(frozen=True)
class RunsBenchResult:
    ours: SideResult
    dbos: SideResult | None
    scaling: tuple[int, SideResult, SideResult] | None = None
    """With ``--processes N``: (N, ours on 1 worker process, ours on N worker processes)."""

    @property
    def ratio(self) -> float | None:
        return None if self.dbos is None else self.ours.rate / self.dbos.rate


# -- ours -----------------------------------------------------------------------------------------


class Stalled(RuntimeError):
    pass


@dataclass(frozen=True)
class OurSide:
    """Our side, running: a scratch schema and stream, the store, the queue, a worker and a relay."""

    schema: str
    store: EventStore
    queue: RunQueue
    workflow: StoredWorkflow
    relay: Relay
    background: list[asyncio.Task[None]]


async def _ours(
    pool: asyncpg.Pool,
    database_url: str,
    nc: NATS,
    runs: int,
    concurrency: int,
    progress: Progress,
    node_type: str = "noop",
    processes: int = 0,
) -> SideResult:
    async with our_side(pool, nc, concurrency, node_type, database_url, processes) as side:
        label = f"flowledger ({processes} worker processes)" if processes else "flowledger"
        enqueued = progress.add_task(f"{label}: enqueued", total=runs)
        finished = progress.add_task(f"{label}: finished", total=runs)
        relayed = progress.add_task(f"{label}: relayed events", total=runs * EVENTS_PER_RUN)
        relay = side.relay
        start = await _run_all(side, database_url, runs, progress, enqueued, finished, relayed)
        head = await side.store.head_position()
        await wait_until(
            lambda: relay.status.published_position >= head,
            side.background,
            lambda: f"the relay stopped short of the log head (last error: {relay.status.last_error})",
            on_poll=lambda: progress.update(relayed, completed=relay.status.published),
        )
        elapsed = time.perf_counter() - start
        progress.update(relayed, completed=relay.status.published)
        latencies = await check_ours(pool, side.schema, runs, relay.status.published)
        return SideResult(runs, elapsed, latencies)


@contextlib.asynccontextmanager
async def our_side(
    pool: asyncpg.Pool,
    nc: NATS,
    concurrency: int,
    node_type: str = "noop",
    database_url: str = "",
    processes: int = 0,
    replicas: int = 1,
) -> AsyncIterator[OurSide]:
    """Start our side in a scratch schema and stream, the bench workflow registered and the
    relay active; stop it and drop the scratch schema and stream on exit. ``processes`` 0: the
    worker runs in this process; N: in N processes of their own (``concurrency`` split among
    them), as ``serve --processes N`` runs it; the stream on ``replicas`` servers."""
    async with scratch_schema(pool) as schema, scratch_stream(nc, "RUNS", replicas) as (stream, prefix):
        store = EventStore(pool, schema=schema)
        await store.start()
        registry = default_registry()
        background: list[asyncio.Task[None]] = []
        workers = _WorkerProcesses(database_url, schema, processes, concurrency)
        try:
            queue = RunQueue(store, schema=schema)
            workflows = WorkflowStore(pool, schema=schema)
            stored, _ = await workflows.register(bench_spec(node_type), tenant=TENANT)
            relay = Relay(store, nc, stream=stream, subject_prefix=prefix, name=f"bench-{stream}")
            background = [asyncio.create_task(relay.run(), name="bench-relay")]
            if processes:
                await workers.start()
                background.append(asyncio.create_task(workers.watch(), name="bench-worker-processes"))
            else:
                worker = Worker(store, queue, workflows, registry, WorkerSettings(max_runs=concurrency))
                background.append(asyncio.create_task(worker.run(), name="bench-worker"))
            await wait_until(
                lambda: relay.status.active, background, lambda: "the relay did not become active"
            )
            await asyncio.sleep(0.1)  # the worker's LISTEN is in place: it is woken by the first enqueue
            yield OurSide(schema, store, queue, stored, relay, background)
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await asyncio.to_thread(workers.stop)
            await registry.aclose()
            await store.close()


class _WorkerProcesses:
    """``count`` processes, each running a ``Worker`` on the bench's scratch schema."""

    def __init__(self, database_url: str, schema: str, count: int, concurrency: int) -> None:
        self._context = multiprocessing.get_context("spawn")  # no inherited event loop or pool
        self._stop = self._context.Event()
        self._args = (database_url, schema, max(1, -(-concurrency // max(1, count))))
        self._count = count
        self._procs: list[Any] = []

    async def start(self) -> None:
        ready = [self._context.Event() for _ in range(self._count)]
        for event in ready:
            proc = self._context.Process(target=_worker_process, args=(*self._args, event, self._stop))
            proc.start()
            self._procs.append(proc)
        deadline = time.monotonic() + 60
        while not all(event.is_set() for event in ready):
            if time.monotonic() > deadline or any(not p.is_alive() for p in self._procs):
                raise RuntimeError("the bench's worker processes did not start")
            await asyncio.sleep(0.05)

    async def watch(self) -> None:
        """Fails when a worker process dies during the bench (the bench then stops)."""
        while True:
            await asyncio.sleep(0.2)
            if any(not p.is_alive() for p in self._procs):
                raise RuntimeError("a worker process of the bench died")

    def stop(self) -> None:
        self._stop.set()
        for proc in self._procs:
            proc.join(timeout=20)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _worker_process(database_url: str, schema: str, max_runs: int, ready: Any, stop: Any) -> None:
    """A worker process of ``bench runs --processes`` (the target of a spawned process)."""

    async def main() -> None:
        pool = await create_pool(database_url)
        store = EventStore(pool, schema=schema)
        await store.start()
        registry = default_registry()
        worker = Worker(
            store,
            RunQueue(store, schema=schema),
            WorkflowStore(pool, schema=schema),
            registry,
            WorkerSettings(max_runs=max_runs),
        )
        task = asyncio.create_task(worker.run(), name="bench-worker")
        await asyncio.sleep(0.1)  # LISTEN in place
        ready.set()
        stopped = asyncio.ensure_future(asyncio.to_thread(stop.wait))
        try:
            await asyncio.wait([stopped, task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await registry.aclose()
            await store.close()
            await pool.close()

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main())


async def _run_all(
    side: OurSide,
    database_url: str,
    runs: int,
    progress: Progress,
    enqueued: TaskID,
    finished: TaskID,
    relayed: TaskID,
) -> float:
    """Enqueue ``runs`` runs from ``STARTERS`` concurrent callers and wait until all have finished;
    returns when the clock started (``time.perf_counter``)."""
    issued = 0

    async def starter() -> None:
        nonlocal issued
        while issued < runs:
            issued += 1
            await side.queue.enqueue(
                tenant=TENANT,
                workflow_id=side.workflow.workflow_id,
                workflow_version=side.workflow.version,
                inputs={"i": issued},
            )
            progress.advance(enqueued)

    # Finished = the queue row is ended, which commits with run_finished. Polled on a
    # connection of its own so the engine keeps its whole pool.
    monitor = await asyncpg.connect(database_url)
    count_ended = f"SELECT count(*) FROM \"{side.schema}\".run_queue WHERE status = 'ended'"
    start = time.perf_counter()
    starters = asyncio.gather(*[starter() for _ in range(min(STARTERS, runs))])
    try:
        ended, last_change = 0, time.perf_counter()
        while True:
            now_ended = await monitor.fetchval(count_ended)
            progress.update(finished, completed=now_ended)
            progress.update(relayed, completed=side.relay.status.published)
            if now_ended >= runs:
                break
            raise_if_died(side.background)
            if starters.done():
                starters.result()  # an enqueue failure ends the bench here
            if now_ended != ended:
                ended, last_change = now_ended, time.perf_counter()
            elif time.perf_counter() - last_change > STALL_S:
                raise Stalled(f"flowledger: no run finished for {STALL_S:.0f} s ({ended} of {runs})")
            await asyncio.sleep(0.01)
        await starters
    except BaseException:
        starters.cancel()
        with contextlib.suppress(BaseException):
            await starters
        raise
    finally:
        await monitor.close()
    return start


def raise_if_died(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        if task.done():
            exc = None if task.cancelled() else task.exception()
            raise RuntimeError(f"{task.get_name()} stopped: {exc!r}") from exc


async def wait_until(
    condition: Callable[[], bool],
    background: list[asyncio.Task[None]],
    failure: Callable[[], str],
    on_poll: Callable[[], object] | None = None,
) -> None:
    deadline = time.perf_counter() + STALL_S
    while not condition():
        raise_if_died(background)
        if time.perf_counter() > deadline:
            raise Stalled(f"flowledger: {failure()} within {STALL_S:.0f} s")
        if on_poll is not None:
            on_poll()
        await asyncio.sleep(0.002)


async def check_ours(pool: asyncpg.Pool, schema: str, runs: int, published: int) -> list[float]:
    """Every run succeeded and every event was relayed; returns queued -> finished latencies (ms)."""
    s = f'"{schema}"'
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            f"""SELECT q.run_id, f.data->>'status' AS status,
                       extract(epoch FROM f.recorded_at - q.recorded_at) * 1000 AS latency_ms
                  FROM {s}.events q
                  LEFT JOIN {s}.events f ON f.run_id = q.run_id AND f.type = 'run_finished'
                 WHERE q.type = 'run_queued'"""
        )
        total_events = await conn.fetchval(f"SELECT count(*) FROM {s}.events")
    succeeded = [float(r["latency_ms"]) for r in rows if r["status"] == "succeeded"]
    if len(rows) != runs or len(succeeded) != runs:
        unfinished = sum(1 for r in rows if r["status"] is None)
        raise RuntimeError(
            f"flowledger: {len(succeeded)} of {runs} runs succeeded ({len(rows)} queued, "
            f"{unfinished} without run_finished, {len(rows) - len(succeeded) - unfinished} failed)"
        )
    if total_events < runs * EVENTS_PER_RUN:  # more is fine: a recovered run has run_recovered too
        raise RuntimeError(f"flowledger: {total_events} events in the log, expected {runs * EVENTS_PER_RUN}")
    if published != total_events:
        raise RuntimeError(f"flowledger: the relay published {published} of {total_events} events")
    return succeeded


# -- DBOS -----------------------------------------------------------------------------------------


def _database_url(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


@contextlib.asynccontextmanager
async def _scratch_database(pool: asyncpg.Pool) -> AsyncIterator[str]:
    name = f"bench_dbos_{uuid.uuid4().hex[:10]}"
    async with pool.acquire() as conn:
        await conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        async with pool.acquire() as conn:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def _launched_dbos(url: str, concurrency: int) -> Iterator[Any]:
    """DBOS configured for ``url`` with a fresh registry; destroyed (registry too) on exit."""
    from dbos import DBOS, DBOSConfig

    @DBOS.step()
    def noop_step(node: int) -> None:
        return None

    @DBOS.workflow()
    def bench_workflow(i: int) -> int:
        for node in range(NODES):
            noop_step(node)
        return i

    config: DBOSConfig = {
        "name": "flowledger-bench",
        "system_database_url": url,
        "max_executor_threads": concurrency,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    try:
        DBOS.launch()
        yield bench_workflow
    finally:
        DBOS.destroy(destroy_registry=True)


def _dbos_side(url: str, runs: int, concurrency: int, progress: Progress) -> float:
    """Runs in a worker thread (DBOS's API is synchronous); returns the elapsed seconds."""
    from dbos import DBOS

    with _launched_dbos(url, concurrency) as workflow:
        started = progress.add_task("dbos: started", total=runs)
        finished = progress.add_task("dbos: finished", total=runs)

        def start(i: int) -> Any:
            handle = DBOS.start_workflow(workflow, i)
            progress.advance(started)
            return handle

        begin = time.perf_counter()
        with ThreadPoolExecutor(min(STARTERS, runs), thread_name_prefix="bench-dbos-start") as pool:
            handles = list(pool.map(start, range(runs)))
        results = []
        for handle in handles:
            results.append(handle.get_result())
            progress.advance(finished)
        elapsed = time.perf_counter() - begin
    if results != list(range(runs)):
        wrong = sum(1 for i, r in enumerate(results) if r != i)
        raise RuntimeError(f"dbos: {wrong} of {runs} workflows returned a wrong result")
    return elapsed


async def _dbos(
    pool: asyncpg.Pool, database_url: str, runs: int, concurrency: int, progress: Progress
) -> SideResult:
    async with _scratch_database(pool) as database:
        url = _database_url(database_url, database)
        elapsed = await asyncio.to_thread(_dbos_side, url, runs, concurrency, progress)
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                "SELECT status, updated_at - created_at AS latency_ms FROM dbos.workflow_status"
            )
        finally:
            await conn.close()
    succeeded = [float(r["latency_ms"]) for r in rows if r["status"] == "SUCCESS"]
    if len(succeeded) != runs:
        raise RuntimeError(f"dbos: {len(succeeded)} of {runs} workflows are SUCCESS ({len(rows)} recorded)")
    return SideResult(runs, elapsed, succeeded)


def dbos_available() -> bool:
    try:
        import dbos  # noqa: F401
    except ImportError:
        return False
    return True


# -- the command ----------------------------------------------------------------------------------


async def bench_runs(
    settings: Settings,
    runs: int = 2000,
    concurrency: int = 100,
    baseline: bool = True,
    node_type: str = "noop",
    processes: int = 0,
) -> RunsBenchResult:
    """Measure ours, then DBOS (when ``baseline`` and installed), and print them side by side.

    ``processes`` N > 0: ours runs its workers in 1 process, then in N processes (the scaling,
    same machine, same run), and the N-process figure is the one compared with DBOS."""
    if runs < 1 or concurrency < 1:
        raise ValueError("--runs and --concurrency must be at least 1")
    if processes < 0:
        raise ValueError("--processes must be 0 (the worker in the bench's own process) or more")
    bench_spec(node_type)  # refuses an unknown node type before anything starts
    with_dbos = baseline and dbos_available()
    async with running(settings, relay=False, worker=False) as runtime:
        assert runtime.pool is not None and runtime.nats is not None and runtime.database_url is not None
        with Progress(transient=True) as progress:

            async def measure(worker_processes: int) -> SideResult:
                assert runtime.pool is not None and runtime.nats is not None
                assert runtime.database_url is not None
                return await _ours(
                    runtime.pool,
                    runtime.database_url,
                    runtime.nats,
                    runs,
                    concurrency,
                    progress,
                    node_type,
                    worker_processes,
                )

            scaling = None
            if processes:
                one = await measure(1)
                ours = await measure(processes)
                scaling = (processes, one, ours)
            else:
                ours = await measure(0)
            theirs = (
                await _dbos(runtime.pool, runtime.database_url, runs, concurrency, progress)
                if with_dbos
                else None
            )
    result = RunsBenchResult(ours, theirs, scaling)
    _print(result, runs, concurrency, baseline, node_type)
    return result


def _print(
    result: RunsBenchResult, runs: int, concurrency: int, baseline: bool, node_type: str = "noop"
) -> None:
    ours = result.ours
    what = "noop" if node_type == "noop" else f"python ({PYTHON_CALLABLE}, isolated worker processes)"
    notes = [
        f"{runs:,} runs of a {NODES}-node linear {what} workflow, {concurrency} runs at once, "
        f"{STARTERS} concurrent starters; ours includes relaying all {runs * EVENTS_PER_RUN:,} events "
        "to JetStream.",
        f"flowledger run latency (run_queued -> run_finished): p50 {ours.p50_ms:,.1f} ms, "
        f"p99 {ours.p99_ms:,.1f} ms; {ours.elapsed_s:,.2f} s in all.",
    ]
    rows: list[Comparison] = []
    if result.scaling is not None:
        count, one, many = result.scaling
        rows.append(
            Comparison(
                f"scaling: {count} worker processes", many.rate, one.rate, "1 worker process", "runs/s", 1.6
            )
        )
        notes.append(
            f"worker processes: 1 -> {one.rate:,.0f} runs/s, {count} -> {many.rate:,.0f} runs/s; the bench's "
            "own process enqueues and relays in both."
        )
    if result.dbos is not None:
        dbos = result.dbos
        notes.append(
            f"dbos workflow latency (created -> updated): p50 {dbos.p50_ms:,.1f} ms, "
            f"p99 {dbos.p99_ms:,.1f} ms; {dbos.elapsed_s:,.2f} s in all; own database on the same server."
        )
        print_comparisons(
            "flowledger bench runs",
            [
                Comparison(
                    f"runs end to end ({node_type})", ours.rate, dbos.rate, "DBOS, 5 steps", "runs/s", 8.0
                ),
                *rows,
            ],
            notes,
        )
        return
    if rows:
        print_comparisons("flowledger bench runs", rows, notes)
        return
    console = Console()
    console.print(f"[bold]flowledger bench runs[/bold]: {ours.rate:,.0f} runs/s")
    if baseline:
        notes.append("DBOS baseline skipped: the dbos package is not installed (pip install dbos).")
    for note in notes:
        console.print(f"[dim]{note}[/dim]")
