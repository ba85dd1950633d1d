"""``flowledger bench push``: live push (SSE) delivery latency at 1,000 clients vs raw NATS subscribers.

The service runs in this process (uvicorn on a free 127.0.0.1 port, a throw-away
database and its own JetStream stream), with its worker, relay and push hub as
in production. Every run is of one workflow: a ``gate`` node (a ``python``
node that waits for the bench), then a line of ``delay`` nodes, so a run emits
a steady stream of events (3 per node) once released.

Two scenarios, each measured twice in a load-generator *process* of its own
(``python -m service.bench.push``, raw asyncio sockets with a minimal
chunked-HTTP / SSE parser, so the clients do not eat the server's CPU budget):

- ours: ``clients`` SSE streams (``GET /v1/runs/{id}/stream``), all on one
  run, then spread evenly over ``runs`` runs;
- baseline: the same fan-out done by NATS itself: ``clients`` raw nats-py core
  subscriptions (one per client, on its run's subjects) receiving the very
  messages the relay publishes, ``SUBSCRIBERS_PER_CONNECTION`` per connection.

The gate holds every run until all clients have received their first message
(so each is subscribed), then opens; latency counts the events recorded after
that moment: client receive time minus the envelope's ``recorded_at`` (same
machine clock), so it covers group commit, the relay, NATS and, for ours, the
push hub and the HTTP server. During the SSE measurement one more raw NATS
subscriber on the whole subject space measures the relay alone (recorded ->
NATS). Each SSE client must receive every stored event of its run exactly once,
in seq order, with the stored event ids; each NATS subscriber every event from
its first one on. Any deviation is counted and reported, never hidden.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import resource
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import msgspec
from rich.console import Console
from rich.progress import Progress, TaskID

from service.bench.report import Comparison, print_comparisons
from service.bench.scratch import admin_token
from service.config import Settings
from service.engine.nodes import NodeContext, NodeType
from service.runtime import running

TARGET_P99_MS = 150.0
GATE_TIMEOUT_S = 300.0
"""A gate nobody opens (a run started outside a bench) lets its run through after this long."""
SUBSCRIBERS_PER_CONNECTION = 100
"""Baseline: raw NATS subscriptions sharing one nats-py connection."""
CONNECT_CONCURRENCY = 200
"""SSE connections being set up at once by the load generator."""
CONNECT_TIMEOUT_S = 120.0
WORKFLOW_ID = "bench-push"
TERMINAL_TYPES = (b"run_finished", b"run_cancelled")

Mode = Literal["sse", "nats"]
_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])
"""Where ``service`` is importable from: the load generator process imports it too."""

# -- the gate (runs inside the service's worker, in this process) ---------------------------------

_GATES: dict[str, asyncio.Event] = {}
GATE_NODE_TYPE = "bench_gate"


class GateConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


async def gate(config: GateConfig, ctx: NodeContext) -> dict[str, bool]:
    """A node type the bench registers in its service (in-process, so it sees ``_GATES``; python
    nodes run in worker subprocesses): waits until the bench opens the gate ``inputs.gate``."""
    token = str((ctx.document.get("inputs") or {}).get("gate", ""))
    opened = _GATES.get(token)
    if opened is None:
        return {"released": False}
    try:
        await asyncio.wait_for(opened.wait(), GATE_TIMEOUT_S)
    except TimeoutError:
        return {"released": False}
    return {"released": True}


GATE = NodeType(GATE_NODE_TYPE, GateConfig, gate, "waits until the push bench opens its gate")


def bench_spec(nodes: int, delay_ms: int) -> dict[str, Any]:
    """``gate -> s1 -> ... -> s<nodes>``: each ``s`` a ``delay`` of ``delay_ms``."""
    ids = [f"s{i}" for i in range(1, nodes + 1)]
    return {
        "id": WORKFLOW_ID,
        "name": "bench push: a gate, then a line of delays",
        "nodes": [
            {
                "id": "gate",
                "type": GATE_NODE_TYPE,
                "config": {},
                "timeout_ms": int(GATE_TIMEOUT_S * 1000) + 60_000,
            },
            *({"id": node_id, "type": "delay", "config": {"ms": delay_ms}} for node_id in ids),
        ],
        "edges": [{"from": a, "to": b} for a, b in pairwise(["gate", *ids])],
    }


def events_per_run(nodes: int) -> int:
    """run_queued, run_started, the gate's 3, 5 per delay node (before, run_waiting, run_resumed,
    after, after_data: a delay is a durable timer), run_finished."""
    return 3 + 3 + 5 * nodes


# -- the load generator (a process of its own) ----------------------------------------------------


class GeneratorConfig(msgspec.Struct):
    mode: Mode
    host: str
    port: int
    nats_url: str
    subject_prefix: str
    runs: list[str]
    """The run each client follows (one entry per client)."""
    relay_probe: bool
    timeout_s: float
    authorization: str = ""
    """The ``Authorization`` header every SSE client sends (the service has auth on)."""


class ClientReport(msgspec.Struct):
    connected: bool
    error: str | None
    messages: list[tuple[int, str, float, float]]
    """(seq, event_id, recorded_at as a Unix time, receive time)."""
    id_mismatches: int = 0
    """SSE ``id:`` fields that differ from the envelope's seq."""


class GeneratorReport(msgspec.Struct):
    clients: list[ClientReport]
    relay_probe: list[tuple[float, float]]
    cpu_s: float = 0.0
    """CPU time the load generator used while the runs were live (is the client side a bottleneck?)."""
    """(recorded_at, receive time) of every message the single raw NATS subscriber got."""


class _Envelope(msgspec.Struct):
    seq: int
    event_id: str
    recorded_at: datetime


_envelope_decoder = msgspec.json.Decoder(_Envelope)


@dataclass(eq=False)
class _Client:
    run_id: str
    raw: list[tuple[float, int, bytes]] = field(default_factory=list)
    """(receive time, SSE id or -1, envelope JSON) as received; decoded after the measurement."""
    first: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    connected: bool = False
    error: str | None = None

    def report(self) -> ClientReport:
        messages = []
        mismatches = 0
        for received, sse_id, data in self.raw:
            envelope = _envelope_decoder.decode(data)
            if sse_id != -1 and sse_id != envelope.seq:
                mismatches += 1
            messages.append((envelope.seq, envelope.event_id, envelope.recorded_at.timestamp(), received))
        return ClientReport(self.connected, self.error, messages, mismatches)


def _emit(kind: str, **data: Any) -> None:
    sys.stdout.buffer.write(msgspec.json.encode({"kind": kind, **data}) + b"\n")
    sys.stdout.buffer.flush()


def _raise_open_files_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return int(soft)


async def _sse_client(config: GeneratorConfig, client: _Client, setup: asyncio.Semaphore) -> None:
    """One SSE stream on a bare socket: chunked HTTP/1.1 de-framing and SSE parsing, nothing else."""
    writer: asyncio.StreamWriter | None = None
    await setup.acquire()  # held until the first message: connections are set up in waves
    setting_up = True
    try:
        reader, writer = await asyncio.open_connection(config.host, config.port, limit=2**22)
        writer.write(
            f"GET /v1/runs/{client.run_id}/stream HTTP/1.1\r\nHost: {config.host}:{config.port}\r\n"
            f"Authorization: {config.authorization}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 200 " not in status + b" ":
            client.error = status.decode(errors="replace")
            return
        chunked = b"transfer-encoding: chunked" in head.lower()
        buffer = b""
        while not client.done.is_set():
            if chunked:
                size = int(((await reader.readline()).split(b";", 1)[0].strip() or b"0"), 16)
                if size == 0:
                    break
                data = (await reader.readexactly(size + 2))[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    break
            received = time.time()
            buffer += data
            while True:
                end = buffer.find(b"\r\n\r\n")
                skip = 4
                if end < 0:
                    end, skip = buffer.find(b"\n\n"), 2
                    if end < 0:
                        break
                block, buffer = buffer[:end], buffer[end + skip :]
                sse_id, event, payload = -1, b"", b""
                for line in block.splitlines():
                    name, _, value = line.partition(b":")
                    value = value[1:] if value.startswith(b" ") else value
                    if name == b"id":
                        sse_id = int(value)
                    elif name == b"event":
                        event = value
                    elif name == b"data":
                        payload = value if not payload else payload + b"\n" + value
                if not payload:
                    continue  # a comment (keep-alive)
                if event == b"error":
                    client.error = f"server error event: {payload.decode(errors='replace')}"
                    client.done.set()
                    break
                client.raw.append((received, sse_id, payload))
                client.connected = True  # subscribed: the server sends stored events after that
                client.first.set()
                if setting_up:
                    setting_up = False
                    setup.release()
                if event in TERMINAL_TYPES:
                    client.done.set()
                    break
        if not client.done.is_set() and client.error is None:
            client.error = "stream ended before the run's terminal event"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        client.error = f"{type(exc).__name__}: {exc}"
    finally:
        if setting_up:
            setup.release()
        client.first.set()  # a failed client does not hold the others up
        client.done.set()
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _generate(config: GeneratorConfig) -> GeneratorReport:
    import nats

    from service.infra.nats import parse_nats_servers

    servers = parse_nats_servers(config.nats_url)  # one URL or a cluster's seed list
    clients = [_Client(run_id) for run_id in config.runs]
    probe: list[tuple[float, bytes]] = []
    connections = []
    tasks: list[asyncio.Task[None]] = []
    try:
        if config.relay_probe:
            probe_nc = await nats.connect(servers=servers, name="bench-push-probe")
            connections.append(probe_nc)

            async def on_probe(msg: Any) -> None:
                probe.append((time.time(), msg.data))

            await probe_nc.subscribe(f"{config.subject_prefix}.>", cb=on_probe)
            await probe_nc.flush()
        if config.mode == "sse":
            setup = asyncio.Semaphore(CONNECT_CONCURRENCY)
            tasks = [asyncio.create_task(_sse_client(config, c, setup)) for c in clients]
        else:
            per = SUBSCRIBERS_PER_CONNECTION
            for start in range(0, len(clients), per):
                nc = await nats.connect(servers=servers, name=f"bench-push-{start // per}")
                connections.append(nc)
                for client in clients[start : start + per]:

                    async def on_msg(msg: Any, client: _Client = client) -> None:
                        client.raw.append((time.time(), -1, msg.data))
                        if msg.subject.rsplit(".", 1)[-1].encode() in TERMINAL_TYPES:
                            client.done.set()

                    await nc.subscribe(f"{config.subject_prefix}.*.*.{client.run_id}.>", cb=on_msg)
                    client.connected = True
                    client.first.set()
                await nc.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(c.first.wait() for c in clients)), CONNECT_TIMEOUT_S)
        _emit("connected", connected=sum(1 for c in clients if c.connected), clients=len(clients))
        cpu_start = time.process_time()
        deadline = time.monotonic() + config.timeout_s
        while not all(c.done.is_set() for c in clients) and time.monotonic() < deadline:
            _emit("progress", received=sum(len(c.raw) for c in clients))
            await asyncio.sleep(0.5)
        for c in clients:
            if not c.done.is_set():
                c.error = c.error or f"no terminal event within {config.timeout_s:.0f} s"
        cpu_used = time.process_time() - cpu_start
        if config.relay_probe:
            await asyncio.sleep(0.5)  # the probe's last messages
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for nc in connections:
            with contextlib.suppress(Exception):
                await nc.close()
    probe_points = []
    for received, data in probe:
        with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
            probe_points.append((_envelope_decoder.decode(data).recorded_at.timestamp(), received))
    return GeneratorReport([c.report() for c in clients], probe_points, cpu_used)


def _generator_main() -> None:
    config = msgspec.json.decode(sys.stdin.buffer.readline(), type=GeneratorConfig)
    _raise_open_files_limit(len(config.runs) + 256)
    report = asyncio.run(_generate(config))
    sys.stdout.buffer.write(b'{"kind":"result","report":' + msgspec.json.encode(report) + b"}\n")
    sys.stdout.buffer.flush()


# -- the service under test (in this process) -----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _scratch_database(pool: asyncpg.Pool, database_url: str) -> AsyncIterator[str]:
    """A fresh database on the same server: no other service's worker or relay can touch its runs."""
    name = f"bench_push_{uuid.uuid4().hex[:10]}"
    async with pool.acquire() as conn:
        await conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    finally:
        async with pool.acquire() as conn:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class _Service:
    client: httpx.AsyncClient
    port: int
    subject_prefix: str


@contextlib.asynccontextmanager
async def _serve(settings: Settings, database_url: str, nats_url: str) -> AsyncIterator[_Service]:
    """The app under uvicorn on a free port, with its own JetStream stream; ready and relaying."""
    import uvicorn

    from service.api.app import create_app
    from service.infra.nats import connect_nats

    port = _free_port()
    token = uuid.uuid4().hex[:8]
    app_settings = Settings(
        database_url=database_url,
        nats_url=nats_url,
        nats_stream=f"BENCH_PUSH_{token}",
        nats_subject_prefix=f"benchpush{token}.events",
        home=settings.home,
        http_host="127.0.0.1",
        http_port=port,
        worker=settings.worker,
    )
    app = create_app(app_settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
            backlog=4096,
        )
    )
    task = asyncio.create_task(server.serve(), name="bench-push-server")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:
                if task.done():
                    raise RuntimeError("the service stopped during start-up")
                with contextlib.suppress(httpx.TransportError):
                    ready = await client.get("/ready")
                    if ready.status_code == 200 and ready.json()["relay_active"]:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the service did not become ready (with an active relay) within 60 s")
                await asyncio.sleep(0.05)
            client.headers["Authorization"] = f"Bearer {await admin_token(database_url)}"
            if GATE_NODE_TYPE not in app.state.runtime.registry:
                app.state.runtime.registry.register(GATE)
            yield _Service(client, port, app_settings.nats_subject_prefix)
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        nc = await connect_nats(nats_url, name="bench-push-cleanup")
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(app_settings.nats_stream)
        await nc.close()


# -- one measurement ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, min(len(ordered), math.ceil(q / 100 * len(ordered)))) - 1]


@dataclass
class Violations:
    missing: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    mismatched: int = 0
    """Wrong event id for a seq, an unknown seq, or an SSE id that is not the envelope's seq."""
    incomplete_clients: int = 0
    """Clients that did not reach their run's terminal event (or saw an error)."""

    @property
    def total(self) -> int:
        return self.missing + self.duplicates + self.out_of_order + self.mismatched + self.incomplete_clients

    def __str__(self) -> str:
        return (
            f"{self.missing} missing, {self.duplicates} duplicated, {self.out_of_order} out of order, "
            f"{self.mismatched} mismatched, {self.incomplete_clients} incomplete clients"
        )


@dataclass
class PhaseResult:
    mode: Mode
    runs: int
    clients: int
    connected: int
    errors: dict[str, int]
    delivered: int
    """Messages delivered to clients in all (catch-up included)."""
    latencies_ms: list[float]
    """Per delivered event recorded after the gate opened."""
    window_s: float
    """Gate opened -> last event received."""
    server_cpu_s: float
    """CPU time of this process (the service: HTTP, push, worker, relay, projections) in that window."""
    generator_cpu_s: float
    runs_took_s: float
    """Gate opened -> the last run's last event recorded: the fan-out shares the engine's CPU."""
    violations: Violations
    relay_latencies_ms: list[float] = field(default_factory=list)

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)

    @property
    def rate(self) -> float:
        """Events delivered per second (summed over clients) while the runs were live."""
        return len(self.latencies_ms) / self.window_s if self.window_s > 0 else 0.0


@dataclass
class Scenario:
    name: str
    ours: PhaseResult
    baseline: PhaseResult | None

    @property
    def meets_target(self) -> bool:
        return self.ours.p99_ms <= TARGET_P99_MS


@dataclass
class PushBenchResult:
    scenarios: list[Scenario]

    @property
    def violations(self) -> int:
        return sum(
            s.ours.violations.total + (s.baseline.violations.total if s.baseline else 0)
            for s in self.scenarios
        )


async def _stored_events(client: httpx.AsyncClient, run_id: str) -> tuple[dict[int, str], float]:
    """The run's stored event ids by seq, and when its last event was recorded (Unix time)."""
    ids: dict[int, str] = {}
    last_recorded = math.nan
    after = -1
    while True:
        page = await client.get(f"/v1/runs/{run_id}/events", params={"after_seq": after, "limit": 1000})
        page.raise_for_status()
        body = page.json()
        for event in body["items"]:
            ids[event["seq"]] = event["event_id"]
            last_recorded = datetime.fromisoformat(event["recorded_at"]).timestamp()
        if body["next_cursor"] is None:
            return ids, last_recorded
        after = int(body["next_cursor"])


def _check(
    mode: Mode, messages: list[tuple[int, str, float, float]], stored: dict[int, str], into: Violations
) -> None:
    seqs = [m[0] for m in messages]
    expected = set(stored)
    if mode == "nats":  # a core subscriber sees only what is published after it subscribed
        expected = {s for s in expected if seqs and s >= seqs[0]}
    into.missing += len(expected - set(seqs))
    into.duplicates += len(seqs) - len(set(seqs))
    into.out_of_order += sum(1 for a, b in pairwise(seqs) if b < a)
    into.mismatched += sum(1 for seq, event_id, _r, _t in messages if stored.get(seq) != event_id)


async def _phase(
    service: _Service,
    nats_url: str,
    mode: Mode,
    runs: int,
    clients: int,
    nodes: int,
    delay_ms: int,
    progress: Progress,
    label: str,
) -> PhaseResult:
    token = uuid.uuid4().hex
    opened = _GATES[token] = asyncio.Event()
    try:
        run_ids = []
        for _ in range(runs):
            started = await service.client.post(
                f"/v1/workflows/{WORKFLOW_ID}/runs", json={"inputs": {"gate": token}}
            )
            started.raise_for_status()
            run_ids.append(str(started.json()["run_id"]))
        assignment = [run_ids[i % runs] for i in range(clients)]
        timeout_s = 60.0 + 4 * (nodes * delay_ms / 1000) + runs * 0.05
        config = GeneratorConfig(
            mode=mode,
            host="127.0.0.1",
            port=service.port,
            nats_url=nats_url,
            subject_prefix=service.subject_prefix,
            runs=assignment,
            relay_probe=mode == "sse",
            timeout_s=timeout_s,
            authorization=service.client.headers["Authorization"],
        )
        connecting = progress.add_task(f"{label}: connecting {clients:,} clients", total=None)
        expected = clients * events_per_run(nodes)
        receiving = progress.add_task(f"{label}: events delivered", total=expected, visible=False)
        report, opened_at, server_cpu_s = await _run_generator(
            config, opened, progress, connecting, receiving
        )
        progress.remove_task(connecting)
        progress.remove_task(receiving)
        stored: dict[str, dict[int, str]] = {}
        ended_at = opened_at
        for run_id in run_ids:
            stored[run_id], last_recorded = await _stored_events(service.client, run_id)
            ended_at = max(ended_at, last_recorded)
    finally:
        opened.set()  # never leave a run waiting at its gate
        _GATES.pop(token, None)

    violations = Violations()
    errors: dict[str, int] = {}
    latencies: list[float] = []
    last_received = opened_at
    for run_id, client in zip(assignment, report.clients, strict=True):
        if client.error is not None:
            reason = client.error.split(":", 1)[0]
            errors[reason] = errors.get(reason, 0) + 1
            violations.incomplete_clients += 1
        _check(mode, client.messages, stored[run_id], violations)
        violations.mismatched += client.id_mismatches
        for _seq, _id, recorded, received in client.messages:
            if recorded >= opened_at:
                latencies.append((received - recorded) * 1000)
                last_received = max(last_received, received)
    return PhaseResult(
        mode=mode,
        runs=runs,
        clients=clients,
        connected=sum(1 for c in report.clients if c.connected),
        errors=errors,
        delivered=sum(len(c.messages) for c in report.clients),
        latencies_ms=latencies,
        window_s=last_received - opened_at,
        server_cpu_s=server_cpu_s,
        generator_cpu_s=report.cpu_s,
        runs_took_s=ended_at - opened_at,
        violations=violations,
        relay_latencies_ms=[(r - t) * 1000 for t, r in report.relay_probe if t >= opened_at],
    )


async def _run_generator(
    config: GeneratorConfig,
    opened: asyncio.Event,
    progress: Progress,
    connecting: TaskID,
    receiving: TaskID,
) -> tuple[GeneratorReport, float, float]:
    """Run the load generator process; open the gate once its clients are connected.

    Returns its report, the wall-clock time the gate opened, and this process's CPU time since.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        __spec__.name if __spec__ is not None else "service.bench.push",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=2**30,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [_SOURCE_ROOT, os.environ.get("PYTHONPATH")])),
        },
    )
    assert process.stdin is not None and process.stdout is not None
    opened_at = math.inf
    cpu_at_open = time.process_time()
    try:
        process.stdin.write(msgspec.json.encode(config) + b"\n")
        await process.stdin.drain()
        process.stdin.close()
        deadline = time.monotonic() + CONNECT_TIMEOUT_S + config.timeout_s + 60
        while True:
            line = await asyncio.wait_for(process.stdout.readline(), max(1.0, deadline - time.monotonic()))
            if not line:
                code = await process.wait()
                raise RuntimeError(f"the load generator exited ({code}) without a result")
            message = msgspec.json.decode(line)
            kind = message["kind"]
            if kind == "connected":
                progress.update(connecting, visible=False)
                progress.update(receiving, visible=True)
                opened_at = time.time()
                cpu_at_open = time.process_time()
                opened.set()
            elif kind == "progress":
                progress.update(receiving, completed=message["received"])
            elif kind == "result":
                server_cpu_s = time.process_time() - cpu_at_open
                report = msgspec.convert(message["report"], GeneratorReport)
                await process.wait()
                return report, opened_at, server_cpu_s
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# -- the command ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _quiet_logs() -> AsyncIterator[None]:
    """The service's per-run info lines (hundreds of runs) would bury the progress display."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


async def bench_push(
    settings: Settings,
    clients: int = 1000,
    runs: int = 100,
    nodes: int = 20,
    delay_ms: int = 100,
    baseline: bool = True,
) -> PushBenchResult:
    """Both scenarios (all clients on one run; clients spread over ``runs`` runs), ours then baseline."""
    if clients < 1 or runs < 1 or nodes < 1 or delay_ms < 0:
        raise ValueError("--clients, --runs and --nodes must be at least 1, --delay-ms at least 0")
    _raise_open_files_limit(clients + 1024)  # the server side holds one socket per client
    scenarios: list[tuple[str, int]] = [(f"1 run x {clients:,}", 1)]
    if runs > 1:
        scenarios.append((f"{runs} runs x {clients / runs:,.3g}", runs))
    results: list[Scenario] = []
    async with _quiet_logs(), running(settings) as admin:
        assert admin.pool is not None and admin.database_url is not None and admin.nats_url is not None
        async with (
            _scratch_database(admin.pool, admin.database_url) as database_url,
            _serve(settings, database_url, admin.nats_url) as service,
        ):
            registered = await service.client.post("/v1/workflows", json=bench_spec(nodes, delay_ms))
            if registered.status_code != 201:
                raise RuntimeError(f"registering the bench workflow failed: {registered.text}")
            with Progress(transient=True) as progress:
                for name, run_count in scenarios:
                    ours = await _phase(
                        service, admin.nats_url, "sse", run_count, clients, nodes, delay_ms, progress, name
                    )
                    theirs = (
                        await _phase(
                            service,
                            admin.nats_url,
                            "nats",
                            run_count,
                            clients,
                            nodes,
                            delay_ms,
                            progress,
                            f"{name} (raw NATS)",
                        )
                        if baseline
                        else None
                    )
                    results.append(Scenario(name, ours, theirs))
    result = PushBenchResult(results)
    _print(result, clients, nodes, delay_ms)
    return result


def _cpu(phase: PhaseResult) -> str:
    window = max(phase.window_s, 1e-9)
    per_message = phase.server_cpu_s / max(len(phase.latencies_ms), 1) * 1e6
    return (
        f"CPU over the {phase.window_s:,.1f} s window: service {phase.server_cpu_s:,.1f} s "
        f"({phase.server_cpu_s / window:.0%} of a core, {per_message:,.0f} us per delivered event), "
        f"load generator {phase.generator_cpu_s:,.1f} s ({phase.generator_cpu_s / window:.0%}); "
        f"the runs took {phase.runs_took_s:,.1f} s from the gate to their last event"
    )


def _print(result: PushBenchResult, clients: int, nodes: int, delay_ms: int) -> None:
    notes = [
        f"Each run: a gate, then {nodes} delay nodes of {delay_ms} ms ({events_per_run(nodes)} events). "
        "Latency = client receive time - the event's recorded_at, over events recorded after every "
        "client was connected; ratio = flowledger / baseline (for latency, lower is better). "
        f"Baseline: {clients:,} raw nats-py core subscriptions ({SUBSCRIBERS_PER_CONNECTION} per "
        "connection) on the same runs' subjects, fed by the same relay.",
    ]
    rows: list[Comparison] = []
    for s in result.scenarios:
        ours = s.ours
        notes.append(
            f"{s.name}, SSE: p50 {ours.p50_ms:,.1f} ms, p99 {ours.p99_ms:,.1f} ms "
            f"(target p99 <= {TARGET_P99_MS:.0f} ms: {'met' if s.meets_target else 'MISSED'}); "
            f"{ours.connected:,}/{ours.clients:,} connected; {ours.delivered:,} events delivered; "
            f"violations: {ours.violations}" + (f"; client errors: {ours.errors}" if ours.errors else "")
        )
        notes.append(f"{s.name}, SSE: {_cpu(ours)}")
        if ours.relay_latencies_ms:
            notes.append(
                f"{s.name}, relay alone (recorded_at -> 1 raw NATS subscriber in the load generator): "
                f"p50 {percentile(ours.relay_latencies_ms, 50):,.1f} ms, "
                f"p99 {percentile(ours.relay_latencies_ms, 99):,.1f} ms"
            )
        theirs = s.baseline
        if theirs is None:
            continue
        notes.append(
            f"{s.name}, raw NATS: p50 {theirs.p50_ms:,.1f} ms, p99 {theirs.p99_ms:,.1f} ms; "
            f"{theirs.connected:,}/{theirs.clients:,} subscribed; violations: {theirs.violations}; "
            f"{_cpu(theirs)}"
        )
        rows += [
            Comparison(f"{s.name}: p50", ours.p50_ms * 1000, theirs.p50_ms * 1000, "raw NATS", "us"),
            Comparison(f"{s.name}: p99", ours.p99_ms * 1000, theirs.p99_ms * 1000, "raw NATS", "us"),
            Comparison(f"{s.name}: delivered", ours.rate, theirs.rate, "raw NATS", "ev/s"),
        ]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    notes.append(f"Machine: {os.cpu_count()} CPUs, load average {load} (1, 5, 15 min) at the end.")
    if rows:
        print_comparisons("flowledger bench push", rows, notes)
        return
    console = Console()
    console.print("[bold]flowledger bench push[/bold]")
    for note in notes:
        console.print(f"[dim]{note}[/dim]")


if __name__ == "__main__":
    _generator_main()
