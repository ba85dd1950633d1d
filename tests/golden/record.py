"""Record golden histories by running real workflows through the engine.

    python -m tests.golden.record NAME [NAME ...]   # run the scenario(s), write both files
    python -m tests.golden.record --all             # every scenario below
    python -m tests.golden.record --refold [NAME]   # keep the histories, recompute the expected states
    python -m tests.golden.record --list

Recording needs PostgreSQL: ``FLOWLEDGER_DATABASE_URL``, or (unset) the embedded
server started in a temporary home. Each scenario runs on a fresh schema of its
own (dropped afterwards) through ``tests.helpers.engine_harness.engine_on``
(the store, queue, worker and executor the service uses). ``--refold`` needs no
database: use it when a change to ``projections.run_state`` is intended.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from schemas.envelope import EventEnvelope
from schemas.workflow import WorkflowSpec
from service.domain.workflow_spec import build_graph
from service.engine.control import request_cancel
from service.engine.executor import RunExecutor
from service.infra.db import create_pool
from service.infra.migrations import apply_migrations
from tests.golden import GoldenHistory, load_history, names, write_expected, write_history
from tests.helpers.engine_harness import Engine, engine_on


@dataclass(frozen=True)
class Scenario:
    description: str
    workflow: dict[str, Any]
    record: Callable[[asyncpg.Pool, str, dict[str, Any]], Awaitable[list[EventEnvelope]]]


# -- workflows --------------------------------------------------------------------------------------

PARALLEL = {
    "id": "golden-parallel",
    "nodes": [
        {"id": "start", "type": "transform", "config": {"expression": "{order: inputs.order}"}},
        {"id": "price", "type": "delay", "config": {"ms": 40}},
        {"id": "stock", "type": "delay", "config": {"ms": 40}},
        {"id": "label", "type": "transform", "config": {"expression": "nodes.start.order"}},
        {"id": "join", "type": "transform", "config": {"expression": "keys(nodes)"}},
    ],
    "edges": [
        {"from": "start", "to": "price"},
        {"from": "start", "to": "stock"},
        {"from": "start", "to": "label"},
        {"from": "price", "to": "join"},
        {"from": "stock", "to": "join"},
        {"from": "label", "to": "join"},
    ],
}

RETRIES = {
    "id": "golden-retries",
    "nodes": [
        {
            "id": "flaky",
            "type": "fail",
            "config": {"times": 2, "message": "upstream busy"},
            "retry": {"max_attempts": 3, "initial_backoff_ms": 5, "multiplier": 2.0, "max_backoff_ms": 20},
        },
        {"id": "after", "type": "transform", "config": {"expression": "nodes.flaky"}},
    ],
    "edges": [{"from": "flaky", "to": "after"}],
}

BRANCH_SKIP = {
    "id": "golden-branch",
    "nodes": [
        {"id": "check", "type": "branch", "config": {"expression": "inputs.amount > `100`"}},
        {"id": "approve", "type": "transform", "config": {"expression": "{review: `true`}"}},
        {"id": "auto", "type": "transform", "config": {"expression": "{review: `false`}"}},
        {"id": "notify_auto", "type": "noop"},
    ],
    "edges": [
        {"from": "check", "to": "approve", "when": "true"},
        {"from": "check", "to": "auto", "when": "false"},
        {"from": "auto", "to": "notify_auto"},
    ],
}

CANCEL = {
    "id": "golden-cancel",
    "nodes": [
        {"id": "prepare", "type": "noop"},
        {"id": "slow", "type": "delay", "config": {"ms": 30000}},
        {"id": "publish", "type": "noop"},
    ],
    "edges": [{"from": "prepare", "to": "slow"}, {"from": "slow", "to": "publish"}],
}

CRASH = {
    "id": "golden-crash",
    "nodes": [
        {"id": "extract", "type": "transform", "config": {"expression": "inputs.rows"}},
        {"id": "load", "type": "delay", "config": {"ms": 300}},
        {"id": "report", "type": "transform", "config": {"expression": "length(nodes.extract)"}},
    ],
    "edges": [{"from": "extract", "to": "load"}, {"from": "load", "to": "report"}],
}


FORK = {
    "id": "golden-fork",
    "nodes": [
        {"id": "fetch", "type": "transform", "config": {"expression": "inputs.items"}},
        {"id": "enrich", "type": "transform", "config": {"expression": "{count: length(nodes.fetch)}"}},
        {"id": "publish", "type": "transform", "config": {"expression": "nodes.enrich"}},
    ],
    "edges": [{"from": "fetch", "to": "enrich"}, {"from": "enrich", "to": "publish"}],
}

NODE_LOGS = {
    "id": "golden-node-logs",
    "nodes": [
        {"id": "total", "type": "python", "config": {"callable": "examples.python_nodes:order_total_logged"}},
        {"id": "report", "type": "transform", "config": {"expression": "nodes.total.total"}},
    ],
    "edges": [{"from": "total", "to": "report"}],
}

BLOB_OUTPUT = {
    "id": "golden-blob-output",
    "nodes": [
        {"id": "make", "type": "transform", "config": {"expression": "inputs.text"}},
        {"id": "count", "type": "transform", "config": {"expression": "{length: length(nodes.make)}"}},
    ],
    "edges": [{"from": "make", "to": "count"}],
}
BLOB_CAP_BYTES = 1024
"""The event cap of the ``blob_output`` recording: small, so the stored history stays small."""


WAIT_SIGNAL = {
    "id": "golden-approval",
    "nodes": [
        {"id": "draft", "type": "transform", "config": {"expression": "{amount: inputs.amount}"}},
        {"id": "approve", "type": "wait", "config": {"signal": "approve", "timeout_ms": 600000}},
        {"id": "book", "type": "transform", "config": {"expression": "nodes.approve.by"}},
    ],
    "edges": [{"from": "draft", "to": "approve"}, {"from": "approve", "to": "book"}],
}

SUB_CHILD = {
    "id": "golden-child",
    "nodes": [{"id": "total", "type": "transform", "config": {"expression": "sum(inputs.prices)"}}],
    "edges": [],
}

SUB_WORKFLOW = {
    "id": "golden-parent",
    "nodes": [
        {
            "id": "invoice",
            "type": "workflow",
            "config": {"workflow_id": "golden-child", "inputs": {"prices": {"$expr": "inputs.prices"}}},
        },
        {"id": "report", "type": "transform", "config": {"expression": "nodes.invoice.total"}},
    ],
    "edges": [{"from": "invoice", "to": "report"}],
}


# -- recorders --------------------------------------------------------------------------------------


async def _run_to_end(engine: Engine, workflow: dict[str, Any], inputs: dict[str, Any]) -> UUID:
    await engine.register(workflow)
    run_id = await engine.start(workflow["id"], inputs)
    await engine.wait_ended(run_id)
    return run_id


def _plain(
    inputs: dict[str, Any],
) -> Callable[[asyncpg.Pool, str, dict[str, Any]], Awaitable[list[EventEnvelope]]]:
    async def record(pool: asyncpg.Pool, schema: str, workflow: dict[str, Any]) -> list[EventEnvelope]:
        async with engine_on(pool, schema) as engine:
            run_id = await _run_to_end(engine, workflow, inputs)
            return await engine.events(run_id)

    return record


async def _record_cancel(pool: asyncpg.Pool, schema: str, workflow: dict[str, Any]) -> list[EventEnvelope]:
    async with engine_on(pool, schema) as engine:
        await engine.register(workflow)
        run_id = await engine.start(workflow["id"], {})
        await engine.wait_for(
            run_id, lambda es: any(e.type == "node_execute_before" and e.data.node_id == "slow" for e in es)
        )
        await request_cancel(engine.queue, run_id, "operator stopped the release", requested_by="golden")
        return await engine.wait_ended(run_id)


async def _record_crash(pool: asyncpg.Pool, schema: str, workflow: dict[str, Any]) -> list[EventEnvelope]:
    """A worker dies while ``load`` runs (its task is cancelled without recording anything, as a
    SIGKILL would leave it); once its lease expires a second worker recovers the run."""
    async with engine_on(pool, schema, worker=False) as engine:
        await engine.register(workflow)
        run_id = await engine.start(workflow["id"], {"rows": [1, 2, 3]})
        graph = build_graph(msgspec.convert(workflow, WorkflowSpec))

        def executor(worker_id: str, claim: Any) -> RunExecutor:
            return RunExecutor(
                store=engine.store,
                queue=engine.queue,
                registry=engine.registry,
                graph=graph,
                claim=claim,
                worker_id=worker_id,
                node_slots=asyncio.Semaphore(8),
            )

        (claim,) = [c for c in await engine.queue.claim("golden-worker-1", 10, 0.5) if c.run_id == run_id]
        first = asyncio.create_task(executor("golden-worker-1", claim).execute())
        await engine.wait_for(
            run_id, lambda es: any(e.type == "node_execute_before" and e.data.node_id == "load" for e in es)
        )
        first.cancel()  # the crash: nothing more is appended by this worker
        with contextlib.suppress(asyncio.CancelledError):
            await first
        await asyncio.sleep(0.6)  # the lease expires
        (claim,) = [c for c in await engine.queue.claim("golden-worker-2", 10, 30) if c.run_id == run_id]
        await asyncio.wait_for(executor("golden-worker-2", claim).execute(), 20)
        return await engine.events(run_id)


async def _record_fork(pool: asyncpg.Pool, schema: str, workflow: dict[str, Any]) -> list[EventEnvelope]:
    """The fork's own history: a finished parent is forked from ``enrich``, so ``fetch`` is reused."""
    from service.engine.fork import start_fork  # forks are newer than the other scenarios

    async with engine_on(pool, schema) as engine:
        parent = await _run_to_end(engine, workflow, {"items": ["a", "b"]})
        enqueued, _, _ = await start_fork(engine.queue, engine.workflows, parent, from_node="enrich")
        return await engine.wait_ended(enqueued.run_id)


async def _record_wait_signal(
    pool: asyncpg.Pool, schema: str, workflow: dict[str, Any]
) -> list[EventEnvelope]:
    """The run parks at ``approve``; a signal resumes it with its payload as the node's output."""
    from service.engine.control import send_signal

    async with engine_on(pool, schema) as engine:
        await engine.register(workflow)
        run_id = await engine.start(workflow["id"], {"amount": 120})
        await engine.wait_for(run_id, lambda es: es[-1].type == "run_waiting")
        await send_signal(engine.queue, run_id, "approve", {"by": "ada"}, "key:golden")
        return await engine.wait_ended(run_id)


async def _record_sub_workflow(
    pool: asyncpg.Pool, schema: str, workflow: dict[str, Any]
) -> list[EventEnvelope]:
    """The parent's history: ``invoice`` starts a child run, waits, and outputs its outputs."""
    async with engine_on(pool, schema) as engine:
        await engine.register(SUB_CHILD)
        return await engine.wait_ended(await _start(engine, workflow, {"prices": [3, 4]}))


async def _start(engine: Engine, workflow: dict[str, Any], inputs: dict[str, Any]) -> UUID:
    await engine.register(workflow)
    return await engine.start(workflow["id"], inputs)


async def _record_blob(pool: asyncpg.Pool, schema: str, workflow: dict[str, Any]) -> list[EventEnvelope]:
    """An output over the event cap (1 KiB here): stored as a blob, the next node gets its value."""
    from service.config import WorkerSettings

    settings = WorkerSettings(lease_s=5, poll_s=0.2, output_cap_bytes=BLOB_CAP_BYTES)
    async with engine_on(pool, schema, settings=settings) as engine:
        run_id = await _run_to_end(engine, workflow, {"text": "blob " * 400})
        return await engine.events(run_id)


SCENARIOS: dict[str, Scenario] = {
    "parallel_branches": Scenario(
        "start fans out to three independent nodes (two 40 ms delays run concurrently), which join",
        PARALLEL,
        _plain({"order": "A-17"}),
    ),
    "retries": Scenario(
        "a node fails twice (retryable), is retried with backoff and succeeds on attempt 3",
        RETRIES,
        _plain({}),
    ),
    "branch_skip": Scenario(
        "a branch chooses 'true'; the 'false' side and what follows it are skipped",
        BRANCH_SKIP,
        _plain({"amount": 250}),
    ),
    "cancel_during_node": Scenario(
        "cancel requested while a 30 s delay node runs: it is cancelled, the rest skipped, the run cancelled",
        CANCEL,
        _record_cancel,
    ),
    "crash_recovered": Scenario(
        "the worker dies while 'load' runs (before without after); another worker appends run_recovered "
        "and runs 'load' again as attempt 2",
        CRASH,
        _record_crash,
    ),
    "fork": Scenario(
        "a fork of a finished run from node 'enrich': 'fetch' is reused from the parent (reused_from), "
        "'enrich' and 'publish' run again",
        FORK,
        _record_fork,
    ),
    "node_logs": Scenario(
        "a python node prints and logs (a warning, an info line): one node_log event just before its "
        "node_execute_after; the fold ignores it",
        NODE_LOGS,
        _plain({"items": [{"sku": "A-1", "price": 2.5, "quantity": 12}, {"sku": "B-2", "price": 10.0}]}),
    ),
    "wait_signal": Scenario(
        "a wait node parks the run; signal 'approve' (key:golden) resumes it and its payload is the "
        "node's output",
        WAIT_SIGNAL,
        _record_wait_signal,
    ),
    "sub_workflow": Scenario(
        "a workflow node starts a child run of golden-child, waits for it, and outputs the child's "
        "outputs (the parent's history only)",
        SUB_WORKFLOW,
        _record_sub_workflow,
    ),
    "blob_output": Scenario(
        "'make' returns 2002 bytes of JSON, over the 1 KiB event cap of this recording: its event "
        "carries a $blob reference, and 'count' gets the real value (length 2000)",
        BLOB_OUTPUT,
        _record_blob,
    ),
}


# -- plumbing ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _database() -> AsyncIterator[str]:
    url = os.environ.get("FLOWLEDGER_DATABASE_URL")
    if url:
        yield url
        return
    from service.infra.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="flowledger-golden-")))
    url = await asyncio.to_thread(server.start)
    try:
        yield url
    finally:
        await asyncio.to_thread(server.stop)


async def record(selected: list[str]) -> None:
    async with _database() as url:
        pool = await create_pool(url)
        try:
            for name in selected:
                scenario = SCENARIOS[name]
                schema = f"golden_{uuid.uuid4().hex[:10]}"
                async with pool.acquire() as conn:
                    await apply_migrations(conn, schema=schema)
                try:
                    events = await scenario.record(pool, schema, scenario.workflow)
                finally:
                    async with pool.acquire() as conn:
                        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
                history = GoldenHistory(
                    name=name,
                    description=scenario.description,
                    workflow=msgspec.convert(scenario.workflow, WorkflowSpec),
                    events=events,
                )
                write_history(history)
                write_expected(name, events)
                print(f"recorded {name}: {len(events)} events ({', '.join(e.type for e in events)})")
        finally:
            await pool.close()


def refold(selected: list[str]) -> None:
    for name in selected:
        path = write_expected(name, load_history(name).events)
        print(f"refolded {name} -> {path.name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.golden.record", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help=f"scenarios: {', '.join(SCENARIOS)}")
    parser.add_argument("--all", action="store_true", help="record every scenario")
    parser.add_argument("--refold", action="store_true", help="only recompute <name>.expected.json")
    parser.add_argument("--list", action="store_true", help="list scenarios and stored histories")
    args = parser.parse_args(argv)
    if args.list:
        for name, scenario in SCENARIOS.items():
            print(f"{name}: {scenario.description}")
        extra = sorted(set(names()) - set(SCENARIOS))
        if extra:
            print(f"stored without a scenario (refold only): {', '.join(extra)}")
        return 0
    if args.refold:
        refold(args.names or names())
        return 0
    selected = list(SCENARIOS) if args.all else args.names
    unknown = [n for n in selected if n not in SCENARIOS]
    if not selected or unknown:
        parser.error(
            (f"unknown scenario(s): {', '.join(unknown)}; " if unknown else "name a scenario or use --all; ")
            + f"known: {', '.join(SCENARIOS)}"
        )
    asyncio.run(record(selected))
    return 0


if __name__ == "__main__":
    sys.exit(main())
