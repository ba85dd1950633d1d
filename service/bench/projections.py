"""``flowledger bench projections``: rebuilding the read models from a large log vs reading it raw.

The log (in a scratch schema) is written straight through ``EventStore.append``, not by running
workflows: realistic run histories of a 3-node workflow (``fetch`` http -> ``check`` branch ->
``notify`` transform when "true"), ~12 events a run on average: most runs succeed, some take the
other branch (``notify`` skipped), some retry ``fetch`` once, a few fail it three times (the rest
skipped). Each run is appended in four parts, and many runs are in flight at once from several
tasks, so runs interleave in the log as they do in production and the store group-commits large
batches.

Measured in the same process, on the same log:
- the rebuild rate (log events per second) of each projection and of both at once (one pass
  over the log), through ``rebuild_projections`` as ``flowledger projections rebuild`` runs it:
  read the columns the folds need, decode what the views read, fold in memory (in ``--workers``
  processes, each a share of the runs), COPY into shadow tables, index, swap;
- the baseline: the raw rate of reading the same events with asyncpg, the same columns paged by
  ``global_position`` in the same batch size, rows fetched and nothing else (best of a read before
  and one after the rebuilds, so a cold cache never flatters the ratio);
- optionally ``GET /v1/runs/{id}`` throughput on an in-process uvicorn server over ~200 real runs
  in the ``flowledger`` schema, beside ``GET /health`` on the same server.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import math
import pstats
import random
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import asyncpg
import httpx
import msgspec
import uuid_utils.compat as uuid_compat
from rich.console import Console
from rich.progress import Progress

from projections.runner import PROJECTIONS
from schemas.events import (
    Event,
    NodeError,
    NodeExecuteAfter,
    NodeExecuteAfterData,
    NodeExecuteBefore,
    NodeRetryScheduled,
    NodeSkipped,
    RunFinished,
    RunQueued,
    RunStarted,
)
from service.bench.report import Comparison, print_comparisons
from service.bench.scratch import admin_token, scratch_schema
from service.config import Settings
from service.engine.outputs import record_output
from service.followers.parallel_rebuild import default_workers
from service.followers.projection_service import rebuild_projections
from service.runtime import running
from service.store.event_store import EventStore

BATCH = 5000
"""Events per read, for the rebuilds and the raw baseline alike."""
WRITERS = 8
RUNS_IN_FLIGHT = 100
"""Runs each writer has in flight at once (so ~WRITERS x RUNS_IN_FLIGHT appends are queued)."""
TENANT = "bench"
WORKFLOWS = ("orders", "invoices", "refunds", "signups")
TARGET_RATE = 50_000.0
TARGET_RATIO = 0.5
HTTP_RUNS = 200
HTTP_CLIENTS = 50
HTTP_SECONDS = 5.0

# Shapes of run histories, with their share of runs and event counts.
OK, OTHER_BRANCH, RETRIED, FAILED = "ok", "other_branch", "retried", "failed"
SHAPES: tuple[tuple[str, float], ...] = ((OK, 0.70), (OTHER_BRANCH, 0.15), (RETRIED, 0.10), (FAILED, 0.05))
EVENTS_PER_SHAPE = {OK: 12, OTHER_BRANCH: 10, RETRIED: 16, FAILED: 16}
MEAN_EVENTS_PER_RUN = sum(EVENTS_PER_SHAPE[s] * share for s, share in SHAPES)

_HTTP_OUTPUT = {
    "status_code": 200,
    "headers": {"content-type": "application/json", "content-length": "87"},
    "body": {"order_id": "A-10023", "status": "paid", "amount": 129.5, "currency": "EUR", "items": 3},
}
_ERROR = NodeError(kind="http_status", message="GET http://payments.internal/orders answered 503")


def _after(node: str, node_type: str, rng: random.Random, attempt: int = 1) -> NodeExecuteAfter:
    # Log-normal durations: most nodes quick, a long tail (as with real HTTP calls).
    base = 40.0 if node_type == "http" else 0.4
    return NodeExecuteAfter(
        node_id=node,
        node_type=node_type,
        status="succeeded",
        attempt=attempt,
        duration_ms=round(base * rng.lognormvariate(0, 0.6), 3),
        item_count=1,
    )


class _Histories:
    """Builds run histories; output events are built once (they hash their output) and reused."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        cap = 5 * 1024 * 1024
        self.fetch_data = {a: record_output("fetch", a, _HTTP_OUTPUT, cap).data for a in (1, 2, 3)}
        self.failed_data = {a: NodeExecuteAfterData(node_id="fetch", attempt=a) for a in (1, 2, 3)}
        self.check_data = {
            label: record_output("check", 1, {"branch": label}, cap).data for label in ("true", "false")
        }
        self.notify_data = record_output("notify", 1, {"ok": True, "order": "A-10023"}, cap).data

    def shape(self) -> str:
        roll, acc = self.rng.random(), 0.0
        for shape, share in SHAPES:
            acc += share
            if roll < acc:
                return shape
        return OK

    def parts(self, shape: str) -> list[list[Event]]:
        """The run's events in the four appends a worker would make (enqueue, start+fetch, check, rest)."""
        rng = self.rng
        fetch: list[Event] = []
        attempts = {OK: 1, OTHER_BRANCH: 1, RETRIED: 2, FAILED: 3}[shape]
        for attempt in range(1, attempts + 1):
            fetch.append(NodeExecuteBefore(node_id="fetch", node_type="http", attempt=attempt))
            if shape == FAILED or attempt < attempts:
                after = msgspec.structs.replace(
                    _after("fetch", "http", rng, attempt), status="failed", error=_ERROR
                )
                fetch += [after, self.failed_data[attempt]]
                if attempt < 3:
                    fetch.append(
                        NodeRetryScheduled(
                            node_id="fetch",
                            attempt=attempt,
                            next_attempt=attempt + 1,
                            delay_ms=100,
                            error=_ERROR,
                        )
                    )
            else:
                fetch += [_after("fetch", "http", rng, attempt), self.fetch_data[attempt]]
        queued: list[Event] = [RunQueued(workflow_version="v1", inputs={"order_id": "A-10023"}, node_count=3)]
        if shape == FAILED:
            rest: list[Event] = [
                NodeSkipped(node_id="check", reason="run stopped: node fetch failed"),
                NodeSkipped(node_id="notify", reason="run stopped: node fetch failed"),
                RunFinished(status="failed", error="node fetch failed (http_status: ...)"),
            ]
            return [queued, [RunStarted(worker_id="bench"), *fetch], rest[:1], rest[1:]]
        label = "false" if shape == OTHER_BRANCH else "true"
        check: list[Event] = [
            NodeExecuteBefore(node_id="check", node_type="branch"),
            _after("check", "branch", rng),
            self.check_data[label],
        ]
        if shape == OTHER_BRANCH:
            tail: list[Event] = [
                NodeSkipped(node_id="notify", reason="not reached: no incoming edge was taken")
            ]
        else:
            tail = [
                NodeExecuteBefore(node_id="notify", node_type="transform"),
                _after("notify", "transform", rng),
            ]
            tail.append(self.notify_data)
        tail.append(RunFinished(status="succeeded"))
        return [queued, [RunStarted(worker_id="bench"), *fetch], check, tail]


async def _fill(store: EventStore, target: int, progress: Progress) -> int:
    """Append run histories until the log holds at least ``target`` events; returns the count."""
    histories = _Histories()
    plan: list[tuple[str, str]] = []
    planned = 0
    while planned < target:
        shape = histories.shape()
        plan.append((shape, WORKFLOWS[len(plan) % len(WORKFLOWS)]))
        planned += EVENTS_PER_SHAPE[shape]
    task = progress.add_task(f"writing {planned:,} events ({len(plan):,} runs)", total=planned)

    async def append_run(run_id: uuid.UUID, workflow: str, events: list[Event], seq: int) -> None:
        await store.append(run_id, events, seq, tenant=TENANT, workflow_id=workflow)

    async def writer(mine: list[tuple[str, str]]) -> None:
        for start in range(0, len(mine), RUNS_IN_FLIGHT):
            chunk = [
                (uuid_compat.uuid7(), wf, histories.parts(shape))
                for shape, wf in mine[start : start + RUNS_IN_FLIGHT]
            ]
            seqs = [0] * len(chunk)
            for part in range(4):
                await asyncio.gather(
                    *[
                        append_run(run_id, wf, parts[part], seqs[i])
                        for i, (run_id, wf, parts) in enumerate(chunk)
                    ]
                )
                for i, (_, _, parts) in enumerate(chunk):
                    seqs[i] += len(parts[part])
                progress.advance(task, sum(len(parts[part]) for _, _, parts in chunk))

    await asyncio.gather(*[writer(plan[i::WRITERS]) for i in range(WRITERS)])
    return planned


# -- reading: raw vs rebuild --------------------------------------------------------------------


def _raw_read_sql(schema: str) -> str:
    # The columns EventStore.read_all selects, in the same order and encoding.
    return (
        "SELECT event_id, run_id, seq, global_position, type, tenant, workflow_id, recorded_at, "
        "schema_version, encode(prev_hash, 'hex'), encode(hash, 'hex'), data "
        f'FROM "{schema}".events WHERE global_position > $1 ORDER BY global_position LIMIT $2'
    )


async def _raw_read(
    pool: asyncpg.Pool, schema: str, total: int, batch: int, progress: Progress, label: str
) -> float:
    task = progress.add_task(f"raw asyncpg read ({label})", total=total)
    sql = _raw_read_sql(schema)
    read = 0
    async with pool.acquire() as conn:
        start = time.perf_counter()
        position = 0
        while rows := await conn.fetch(sql, position, batch):
            position = rows[-1][3]
            read += len(rows)
            progress.advance(task, len(rows))
        elapsed = time.perf_counter() - start
    if read != total:
        raise RuntimeError(f"raw read saw {read} of {total} events")
    return total / elapsed


async def _rebuild(
    pool: asyncpg.Pool,
    store: EventStore,
    names: list[str],
    total: int,
    batch: int,
    progress: Progress,
    *,
    database_url: str,
    workers: int,
) -> float:
    """Rebuild ``names`` together (one read of the log); log events per second of wall time."""
    task = progress.add_task(f"rebuild {' + '.join(names)}", total=total)
    start = time.perf_counter()
    position = await rebuild_projections(
        pool,
        store,
        names,
        on_progress=lambda n: progress.advance(task, n),
        batch=batch,
        database_url=database_url,
        workers=workers,
        parallel_from=0,
    )
    if position <= 0:
        raise RuntimeError(f"rebuild of {names} read nothing")
    return total / (time.perf_counter() - start)


async def _profiled_rebuild(
    pool: asyncpg.Pool, store: EventStore, total: int, batch: int, console: Console
) -> None:
    """Both rebuilds one after the other under cProfile, folding in this process (the profiler
    sees no other); prints where the time goes."""
    profiler = cProfile.Profile()
    with Progress(transient=True, console=console) as progress:
        profiler.enable()
        try:
            for name in sorted(PROJECTIONS):
                await _rebuild(pool, store, [name], total, batch, progress, database_url="", workers=1)
        finally:
            profiler.disable()
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(order).print_stats(25)
        console.print(f"[bold]cProfile of both rebuilds, by {order}[/bold]")
        console.print(out.getvalue(), markup=False, highlight=False)


# -- HTTP: GET /v1/runs/{id} vs GET /health ----------------------------------------------------


@dataclass
class LoadResult:
    requests: int
    errors: int
    elapsed_s: float
    latencies_ms: list[float] = field(repr=False, default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_ms, 50) if self.latencies_ms else float("nan")

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99) if self.latencies_ms else float("nan")


@dataclass
class HttpResult:
    runs: LoadResult | None
    health: LoadResult
    unavailable: str | None = None
    """Why ``GET /v1/runs/{id}`` was not measured (the route is missing or failing)."""


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(1, min(len(ordered), math.ceil(q / 100 * len(ordered)))) - 1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoadPlan(msgspec.Struct):
    """What the load generator does: ``clients`` concurrent httpx clients (one connection each)
    GET a random one of ``paths`` in a loop for ``seconds``."""

    base_url: str
    paths: list[str]
    clients: int = HTTP_CLIENTS
    seconds: float = HTTP_SECONDS
    seed: int = 11
    authorization: str = ""
    """Sent as the ``Authorization`` header (empty: none, as for /health)."""


async def _load(plan: LoadPlan) -> LoadResult:
    rng = random.Random(plan.seed)
    latencies: list[float] = []
    errors = 0

    async def client() -> None:
        nonlocal errors
        headers = {"Authorization": plan.authorization} if plan.authorization else {}
        async with httpx.AsyncClient(base_url=plan.base_url, timeout=10, headers=headers) as http:
            while time.perf_counter() < deadline:
                begin = time.perf_counter()
                response = await http.get(rng.choice(plan.paths))
                latencies.append((time.perf_counter() - begin) * 1000)
                if response.status_code != 200:
                    errors += 1

    start = time.perf_counter()
    deadline = start + plan.seconds
    await asyncio.gather(*[client() for _ in range(plan.clients)])
    return LoadResult(len(latencies), errors, time.perf_counter() - start, latencies)


async def _load_elsewhere(plan: LoadPlan) -> LoadResult:
    """Run the load generator in a child process: its clients' CPU time must not come out of the
    server's event loop (httpx costs about as much per request as the server does)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        __name__,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(msgspec.json.encode(plan)), plan.seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"the load generator failed ({proc.returncode}): {err.decode()[-1000:]}")
    return msgspec.json.decode(out, type=LoadResult)


def _load_main() -> None:
    """The child's entry point: a ``LoadPlan`` as JSON on stdin, a ``LoadResult`` as JSON on stdout."""
    plan = msgspec.json.decode(sys.stdin.buffer.read(), type=LoadPlan)
    sys.stdout.buffer.write(msgspec.json.encode(asyncio.run(_load(plan))))


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float, failure: str) -> None:
    deadline = time.perf_counter() + timeout_s
    while not await check():
        if time.perf_counter() > deadline:
            raise RuntimeError(failure)
        await asyncio.sleep(0.1)


async def _http(settings: Settings, progress: Progress) -> HttpResult:
    """Serve the app in-process, create finished runs through the API, then load both routes."""
    import uvicorn

    from service.api.app import create_app

    port = _free_port()
    # No relay: it has no part in serving reads, and its publishing would compete for the CPU.
    app = create_app(replace(settings, http_host="127.0.0.1", http_port=port, relay_enabled=False))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on", access_log=False)
    )
    serving = asyncio.create_task(server.serve(), name="bench-uvicorn")
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:

            async def ready() -> bool:
                if serving.done():
                    raise RuntimeError(f"the server stopped: {serving.exception()!r}")
                with contextlib.suppress(httpx.TransportError):
                    return (await http.get("/ready")).status_code == 200
                return False

            await _until(ready, 60, "the in-process server did not become ready within 60 s")
            assert settings.database_url is not None
            authorization = f"Bearer {await admin_token(settings.database_url)}"
            http.headers["Authorization"] = authorization
            workflow_id = f"bench-http-{uuid.uuid4().hex[:8]}"
            spec = {
                "id": workflow_id,
                "name": "bench projections: GET /v1/runs/{id}",
                "nodes": [{"id": n, "type": "noop"} for n in ("a", "b", "c")],
                "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}],
            }
            (await http.post("/v1/workflows", json=spec)).raise_for_status()
            task = progress.add_task(f"creating {HTTP_RUNS} runs through the API", total=HTTP_RUNS)
            starters = asyncio.Semaphore(16)

            async def start_run() -> str:
                async with starters:
                    response = await http.post(f"/v1/workflows/{workflow_id}/runs", json={"inputs": {}})
                response.raise_for_status()
                progress.advance(task)
                return str(response.json()["run_id"])

            run_ids = await asyncio.gather(*[start_run() for _ in range(HTTP_RUNS)])

            async def finished() -> bool:
                # Through the projections: the route under test reads the same read model.
                body = (await http.get("/v1/metrics/summary", params={"workflow_id": workflow_id})).json()
                [figures] = body["workflows"]
                return bool(figures["succeeded"] + figures["failed"] + figures["cancelled"] == HTTP_RUNS)

            await _until(finished, 180, f"the {HTTP_RUNS} runs were not all ended and projected within 180 s")

            probe = await http.get(f"/v1/runs/{run_ids[0]}")
            unavailable = None
            if probe.status_code != 200:
                try:
                    detail = str(probe.json().get("detail", probe.text))
                except ValueError:
                    detail = probe.text
                unavailable = f"GET /v1/runs/{{id}} answered {probe.status_code}: {detail[:200]}"

        runs = None
        if unavailable is None:
            progress.add_task(
                f"GET /v1/runs/{{id}}: {HTTP_CLIENTS} clients, {HTTP_SECONDS:.0f} s", total=None
            )
            runs = await _load_elsewhere(
                LoadPlan(base_url, [f"/v1/runs/{r}" for r in run_ids], authorization=authorization)
            )
        progress.add_task(f"GET /health: {HTTP_CLIENTS} clients, {HTTP_SECONDS:.0f} s", total=None)
        health = await _load_elsewhere(LoadPlan(base_url, ["/health"]))
        return HttpResult(runs, health, unavailable)
    finally:
        server.should_exit = True
        await serving


# -- the command ----------------------------------------------------------------------------------


@dataclass
class ProjectionsBenchResult:
    events: int
    runs_rate: float
    nodes_rate: float
    both_rate: float
    raw_rate: float
    http: HttpResult | None = None

    def rebuild_comparisons(self) -> list[Comparison]:
        raw = "raw asyncpg read"
        return [
            Comparison("rebuild run_summaries", self.runs_rate, self.raw_rate, raw, "ev/s", TARGET_RATIO),
            Comparison("rebuild node_executions", self.nodes_rate, self.raw_rate, raw, "ev/s", TARGET_RATIO),
            Comparison("rebuild both at once", self.both_rate, self.raw_rate, raw, "ev/s", TARGET_RATIO),
        ]

    @property
    def targets_met(self) -> bool:
        return all(c.ratio >= TARGET_RATIO and c.ours >= TARGET_RATE for c in self.rebuild_comparisons())


async def bench_projections(
    settings: Settings,
    events: int = 1_000_000,
    http: bool = True,
    profile: bool = False,
    batch: int = BATCH,
    workers: int | None = None,
) -> ProjectionsBenchResult:
    """Write a log of ``events`` events to a scratch schema, rebuild the projections from it, compare
    with reading it raw; then (``http``) load ``GET /v1/runs/{id}`` beside ``GET /health``."""
    if events < 1 or batch < 1:
        raise ValueError("--events and --batch must be at least 1")
    if workers is not None and workers < 1:
        raise ValueError("--workers must be at least 1")
    workers = default_workers() if workers is None else workers
    console = Console()
    async with running(settings, relay=False) as runtime:
        assert runtime.pool is not None and runtime.database_url is not None
        async with scratch_schema(runtime.pool) as schema:
            store = EventStore(runtime.pool, schema=schema, max_batch_events=10_000)
            await store.start()
            try:
                with Progress(transient=True, console=console) as progress:
                    start = time.perf_counter()
                    total = await _fill(store, events, progress)
                    fill_s = time.perf_counter() - start
                    head = await store.head_position()
                    async with runtime.pool.acquire() as conn:
                        # Hint bits and statistics settled, so no reader pays for them.
                        await conn.execute(f'VACUUM ANALYZE "{schema}".events')
                    raw_before = await _raw_read(runtime.pool, schema, total, batch, progress, "before")
                    url = runtime.database_url
                    runs_rate, nodes_rate, both_rate = [
                        await _rebuild(
                            runtime.pool,
                            store,
                            names,
                            total,
                            batch,
                            progress,
                            database_url=url,
                            workers=workers,
                        )
                        for names in (["run_summaries"], ["node_executions"], sorted(PROJECTIONS))
                    ]
                    raw_after = await _raw_read(runtime.pool, schema, total, batch, progress, "after")
                if profile:
                    await _profiled_rebuild(runtime.pool, store, total, batch, console)
            finally:
                await store.close()
        http_result = None
        if http:
            app_settings = replace(settings, database_url=runtime.database_url, nats_url=runtime.nats_url)
            with Progress(transient=True, console=console) as progress:
                http_result = await _http(app_settings, progress)
    result = ProjectionsBenchResult(
        total, runs_rate, nodes_rate, both_rate, max(raw_before, raw_after), http_result
    )
    _print(result, batch, fill_s, head, raw_before, raw_after, workers)
    return result


def _print(
    result: ProjectionsBenchResult,
    batch: int,
    fill_s: float,
    head: int,
    raw_before: float,
    raw_after: float,
    workers: int,
) -> None:
    rows = result.rebuild_comparisons()
    below = [c.name for c in rows if c.ours < TARGET_RATE]
    notes = [
        f"{result.events:,} events ({result.events / MEAN_EVENTS_PER_RUN:,.0f} runs of ~{MEAN_EVENTS_PER_RUN:.1f} "
        f"events, 4 workflows), written in {fill_s:,.1f} s ({result.events / fill_s:,.0f} ev/s through "
        f"EventStore.append); log head {head:,}; batches of {batch:,} events.",
        f"raw read: {raw_before:,.0f} ev/s before the rebuilds, {raw_after:,.0f} ev/s after; the faster is the baseline.",
        "'both at once': one pass over the log folding both projections; log events per second of wall time; "
        + (
            f"the fold in {workers} worker processes, each a share of the runs."
            if workers > 1
            else "the fold in this process."
        ),
        f"targets: rebuild >= {TARGET_RATE:,.0f} ev/s and >= {TARGET_RATIO:.0%} of the raw read rate: "
        + ("met" if result.targets_met else "MISSED")
        + (f" (below {TARGET_RATE:,.0f} ev/s: {', '.join(below)})" if below else ""),
    ]
    http = result.http
    if http is not None:
        h = http.health
        if http.runs is not None:
            r = http.runs
            rows.append(Comparison("GET /v1/runs/{id}", r.rate, h.rate, "GET /health, same server", "req/s"))
            notes.append(
                f"GET /v1/runs/{{id}}: {r.requests:,} requests ({r.errors} not 200), p50 {r.p50_ms:,.1f} ms, "
                f"p99 {r.p99_ms:,.1f} ms; GET /health: {h.requests:,} requests ({h.errors} not 200), "
                f"p50 {h.p50_ms:,.1f} ms, p99 {h.p99_ms:,.1f} ms. "
                f"{HTTP_CLIENTS} httpx clients (one child process) against uvicorn in this process (worker "
                f"and projections on, relay off), {HTTP_SECONDS:.0f} s each, over {HTTP_RUNS} runs in the "
                "flowledger schema."
            )
        else:
            notes.append(
                f"GET /v1/runs/{{id}} not measured: {http.unavailable}. "
                f"GET /health: {h.rate:,.0f} req/s, p99 {h.p99_ms:,.1f} ms ({HTTP_CLIENTS} clients)."
            )
    print_comparisons("flowledger bench projections", rows, notes)


if __name__ == "__main__":
    _load_main()
