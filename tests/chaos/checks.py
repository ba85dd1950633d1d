"""The drill's verdict: each check reads what the service left (the log, the queue, the stream,
the read models, the CLI's audit) and says pass or fail with a short detail."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import httpx

from schemas.envelope import EventEnvelope
from schemas.events import (
    TERMINAL_TYPES,
    NodeExecuteAfter,
    NodeExecuteBefore,
    RunFinished,
    RunRecovered,
    RunStarted,
)
from tests.chaos.stage import STREAM, SUBJECT_PREFIX, Stage
from tests.chaos.workload import NODES, Workload
from tests.helpers.paths import FLOWLEDGER
from tests.helpers.run_logs import bodies, pid_of, read_runs, read_stream, typed

PROJECTIONS = {"run_summaries": ("run_id",), "node_executions": ("run_id", "node_id")}
MAX_LISTED = 10


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    problems: list[str] = field(default_factory=list)


def _listed(problems: list[str]) -> str:
    more = f" (+{len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
    return "; ".join(problems[:MAX_LISTED]) + more


def check(name: str, problems: list[str], detail: str) -> Check:
    return Check(name, not problems, _listed(problems) if problems else detail, problems)


async def wait_all_ended(pool: asyncpg.Pool, run_ids: list[UUID], timeout: float) -> list[str]:
    """Until every run has a terminal event; returns the stragglers (id, workflow and state) if
    ``timeout`` passes first."""
    sql = "SELECT DISTINCT run_id FROM flowledger.events WHERE run_id = ANY($1::uuid[]) AND type = ANY($2)"
    deadline = time.monotonic() + timeout
    while True:
        ended = {r["run_id"] for r in await pool.fetch(sql, run_ids, list(TERMINAL_TYPES))}
        if len(ended) == len(run_ids) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    open_ids = [r for r in run_ids if r not in ended]
    rows = await pool.fetch(
        """SELECT q.run_id, q.workflow_id, q.status, q.lease_owner,
                  (SELECT type FROM flowledger.events e WHERE e.run_id = q.run_id ORDER BY seq DESC LIMIT 1) AS last
             FROM flowledger.run_queue q WHERE q.run_id = ANY($1::uuid[])""",
        open_ids,
    )
    return [
        f"{r['run_id']} ({r['workflow_id']}: queue {r['status']}, owner {r['lease_owner']}, last event {r['last']})"
        for r in rows
    ]


def _node_problems(run_id: UUID, workflow_id: str, events: list[EventEnvelope]) -> list[str]:
    """A node that started again after a successful node_execute_after, an attempt number used
    twice, or a node of the workflow that did not succeed exactly once."""
    problems = []
    done: set[str] = set()
    attempts: Counter[tuple[str, int]] = Counter()
    succeeded: Counter[str] = Counter()
    for event in events:
        body = event.data
        if isinstance(body, NodeExecuteBefore):
            if body.node_id in done:
                problems.append(
                    f"run {run_id}: node {body.node_id} ran again (attempt {body.attempt}) after it succeeded"
                )
            attempts[(body.node_id, body.attempt)] += 1
        elif isinstance(body, NodeExecuteAfter) and body.status == "succeeded":
            done.add(body.node_id)
            succeeded[body.node_id] += 1
    problems += [
        f"run {run_id}: node {n} attempt {a} started {c} times" for (n, a), c in attempts.items() if c > 1
    ]
    expected = Counter(dict.fromkeys(NODES[workflow_id], 1))
    if succeeded != expected:
        problems.append(
            f"run {run_id}: succeeded nodes {dict(succeeded)}, expected each of {sorted(expected)} once"
        )
    return problems


async def _snapshot(pool: asyncpg.Pool) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for table, key in PROJECTIONS.items():
        rows = await pool.fetch(f"SELECT * FROM flowledger.{table} ORDER BY {', '.join(key)}")
        out[table] = [tuple(r.values()) for r in rows]
    return out


async def _wait_projections_caught_up(pool: asyncpg.Pool, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        head = await pool.fetchval("SELECT coalesce(max(global_position), 0) FROM flowledger.events")
        positions = {
            r["name"]: r["position"]
            for r in await pool.fetch(
                "SELECT name, position FROM flowledger.checkpoints WHERE name = ANY($1)", list(PROJECTIONS)
            )
        }
        behind = {n: positions.get(n) for n in PROJECTIONS if positions.get(n) != head}
        if not behind:
            return ""
        if time.monotonic() > deadline:
            return f"projections not caught up with the log head {head}: {behind}"
        await asyncio.sleep(0.5)


async def _cli(stage: Stage, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [FLOWLEDGER, *args],
        env=stage.env_for_cli(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def run_checks(
    stage: Stage, workload: Workload, pool: asyncpg.Pool, stragglers: list[str], side_stuck: list[str]
) -> list[Check]:
    checks: list[Check] = []
    state = workload.state
    wanted = workload.runs
    started = state.started
    run_ids = [s.run_id for s in started.values()]

    # -- the runs
    not_started = [f"run {i} not started" for i in range(wanted) if i not in started]
    retried = sum(s.attempts > 1 for s in started.values())
    checks.append(
        check(
            "runs started",
            not_started + state.rejected,
            f"{len(started)} of {wanted} ({retried} needed a retry on another instance)",
        )
    )
    keys = {
        r["idempotency_key"]: r["run_id"]
        for r in await pool.fetch(
            "SELECT idempotency_key, run_id FROM flowledger.run_queue WHERE idempotency_key LIKE $1",
            f"chaos-{workload.seed}-%",
        )
    }
    key_problems = [
        f"key {s.key}: API said run {s.run_id}, queue has {keys.get(s.key)}"
        for s in started.values()
        if keys.get(s.key) != s.run_id
    ]
    if len(keys) != len(started):
        key_problems.append(f"{len(keys)} queued runs for {len(started)} keys")
    checks.append(
        check("one run per idempotency key", key_problems, f"{len(keys)} runs for {len(started)} keys")
    )
    checks.append(check("runs ended", stragglers, f"{len(run_ids) - len(stragglers)} of {len(run_ids)}"))

    raws = await read_runs(pool, run_ids)
    workflow_of = {s.run_id: s.workflow_id for s in started.values()}
    once, succeeded, nodes = [], [], []
    statuses: Counter[str] = Counter()
    recovered = 0
    worker_of_run: Counter[str] = Counter()
    pids = stage.pids()
    for run_id, raw in raws.items():
        events = typed(raw)
        terminal = [e for e in events if e.type in TERMINAL_TYPES]
        if terminal and (len(terminal) != 1 or terminal[0] is not events[-1]):
            once.append(
                f"run {run_id}: terminal events {[e.type for e in terminal]} at seqs {[e.seq for e in terminal]}"
            )
        if terminal:
            ending = terminal[-1].data
            status = ending.status if isinstance(ending, RunFinished) else terminal[-1].type
            statuses[status] += 1
            if status != "succeeded":
                succeeded.append(f"run {run_id} ({workflow_of[run_id]}): {status}")
            nodes += _node_problems(run_id, workflow_of[run_id], events)
        starts = bodies(events, RunStarted)
        if len(starts) > 1:
            once.append(f"run {run_id}: {len(starts)} run_started")
        recovered += len(bodies(events, RunRecovered))
        if starts:
            worker_of_run[pids.get(pid_of(starts[0].worker_id), "?")] += 1
    queue_open = await pool.fetchval(
        "SELECT count(*) FROM flowledger.run_queue WHERE run_id = ANY($1::uuid[]) AND status <> 'ended'",
        run_ids,
    )
    if queue_open:
        once.append(f"{queue_open} runs not marked ended in the run queue")
    checks.append(check("each run ended exactly once", once, "one terminal event each, the last one"))
    checks.append(
        check("every run succeeded", succeeded, ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
    )
    checks.append(
        check(
            "no node ran again after its node_execute_after",
            nodes,
            f"{sum(len(NODES[w]) for w in workflow_of.values())} nodes, each succeeded once",
        )
    )

    failures = ", ".join(f"{k}: {n}" for k, n in sorted(state.failures.items())) or "none"
    checks.append(
        check(
            "no 500 while a dependency is down",
            state.server_errors,
            f"requests sent to another instance after: {failures}",
        )
    )

    # -- the audit, from the CLI
    audit = await _cli(stage, "audit", "verify", "--all")
    lines = [line for line in (audit.stdout + audit.stderr).splitlines() if line.strip()]
    checks.append(
        check(
            "audit verify --all",
            [] if audit.returncode == 0 else [f"exit {audit.returncode}", *lines[-MAX_LISTED:]],
            (lines[-1] if lines else "clean")[:120],
        )
    )

    # -- the stream: once the relay has caught up
    log_count = await pool.fetchval("SELECT count(*) FROM flowledger.events")
    event_ids = {str(r["event_id"]) for r in await pool.fetch("SELECT event_id FROM flowledger.events")}
    deadline = time.monotonic() + 90
    error = ""
    while True:
        try:
            contents = await read_stream(stage.cluster.seed_url, STREAM, f"{SUBJECT_PREFIX}.>")
        except Exception as exc:  # a node still electing: try again until the deadline
            contents, error = None, repr(exc)
        if contents is not None and contents.messages >= log_count:
            break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(2)
    if contents is None:
        checks.append(check("stream = log, no duplicate Nats-Msg-Id", [f"stream unreadable: {error}"], ""))
    else:
        dupes = [f"Nats-Msg-Id {i} {n} times" for i, n in contents.ids.items() if n > 1]
        problems = list(dupes)
        if contents.messages != log_count:
            problems.append(f"stream has {contents.messages} messages, the log {log_count} events")
        if set(contents.ids) != event_ids:
            missing, extra = event_ids - set(contents.ids), set(contents.ids) - event_ids
            problems.append(f"{len(missing)} events not on the stream, {len(extra)} messages not in the log")
        if not contents.in_order:
            problems.append("global positions not increasing in stream order")
        checks.append(
            check(
                "stream = log, no duplicate Nats-Msg-Id",
                problems,
                f"{contents.messages} messages = {log_count} events, {len(contents.ids)} distinct ids, in order",
            )
        )

    # -- the read models against a rebuild
    lag = await _wait_projections_caught_up(pool, 60)
    before = await _snapshot(pool)
    rebuild = await _cli(stage, "projections", "rebuild")
    after = await _snapshot(pool)
    problems = [lag] if lag else []
    if rebuild.returncode != 0:
        problems.append(
            f"rebuild exit {rebuild.returncode}: {(rebuild.stdout + rebuild.stderr).strip()[-300:]}"
        )
    for table in PROJECTIONS:
        if before[table] != after[table]:
            differ = len(set(before[table]) ^ set(after[table]))
            problems.append(
                f"{table}: {differ} rows differ ({len(before[table])} kept, {len(after[table])} rebuilt)"
            )
    checks.append(
        check(
            "projections = rebuild",
            problems,
            ", ".join(f"{t} {len(before[t])} rows" for t in PROJECTIONS),
        )
    )

    # -- push from any instance
    followed = state.followed
    push = list(side_stuck)
    reconnects = 0
    for run_id, f in followed.items():
        expected = list(range(len(raws.get(run_id, []))))
        reconnects += f.reconnects
        if f.ended and f.seqs != expected:
            push.append(f"run {run_id}: SSE seqs {f.seqs} != log 0..{len(expected) - 1}")
    checks.append(
        check(
            "push: live SSE across instances = log",
            push,
            f"{len(followed)} runs followed, every event once in order ({reconnects} resumptions with Last-Event-ID)",
        )
    )

    # -- one relay
    active = []
    async with httpx.AsyncClient(timeout=5) as http:
        for name, proc in stage.instances.items():
            try:
                ready = (await http.get(f"{proc.base_url}/ready")).json()
            except (httpx.HTTPError, ValueError):
                continue
            if ready.get("relay_active"):
                active.append(name)
    checks.append(
        check(
            "one active relay",
            [] if len(active) == 1 else [f"active relays: {active}"],
            f"on {active[0] if active else '-'}",
        )
    )

    # -- figures (informative: not pass/fail)
    spread = ", ".join(f"{n}: {worker_of_run[n]}" for n in sorted(worker_of_run))
    checks.append(Check("runs started per worker instance", True, spread or "-"))
    checks.append(Check("runs recovered after a crash or lost lease", True, str(recovered)))
    exits = [f"{e.instance} exit {e.code} at {e.at:.0f} s" for e in stage.unexpected_exits]
    checks.append(Check("instances that exited by themselves (restarted)", True, _listed(exits) or "none"))
    return checks
