"""An in-process engine on one test's own schema: store, queue, workflows, registry and a worker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from projections.run_state import RunState
from schemas.codec import to_typed
from schemas.envelope import EventEnvelope
from schemas.workflow import WorkflowSpec
from service.config import WorkerSettings
from service.domain.run_document import fold_raw
from service.domain.workflow_spec import build_graph, check_spec
from service.engine.executor import RunExecutor
from service.engine.nodes import NodeRegistry, default_registry
from service.engine.worker import Worker
from service.store.event_store import EventStore
from service.store.run_queue import RunQueue
from service.store.workflow_store import WorkflowStore


@dataclass
class Engine:
    store: EventStore
    queue: RunQueue
    workflows: WorkflowStore
    registry: NodeRegistry
    worker: Worker | None

    async def register(self, spec: dict[str, Any]) -> str:
        parsed = check_spec(msgspec.convert(spec, WorkflowSpec), self.registry)  # type: ignore[arg-type]
        stored, _ = await self.workflows.register(parsed)
        return stored.version

    async def start(self, workflow_id: str, inputs: dict[str, Any] | None = None) -> UUID:
        stored = await self.workflows.get(workflow_id)
        enqueued = await self.queue.enqueue(
            tenant="default",
            workflow_id=workflow_id,
            workflow_version=stored.version,
            inputs=inputs or {},
            node_count=len(stored.spec.nodes),
        )
        return enqueued.run_id

    async def claim_executor(
        self,
        run_id: UUID,
        spec: dict[str, Any],
        *,
        executor_class: type[RunExecutor] = RunExecutor,
        worker_id: str = "test-worker",
        node_slots: int = 64,
    ) -> RunExecutor:
        """Claim ``run_id`` (no worker running) and build the executor that would run it."""
        (claim,) = [c for c in await self.queue.claim(worker_id, 100, 30) if c.run_id == run_id]
        return executor_class(
            store=self.store,
            queue=self.queue,
            registry=self.registry,
            graph=build_graph(msgspec.convert(spec, WorkflowSpec)),
            claim=claim,
            worker_id=worker_id,
            node_slots=asyncio.Semaphore(node_slots),
        )

    async def events(self, run_id: UUID) -> list[EventEnvelope]:
        return [to_typed(e) for e in await self.store.read_run(run_id)]

    async def state(self, run_id: UUID) -> RunState:
        return fold_raw(await self.store.read_run(run_id))

    async def wait_ended(self, run_id: UUID, timeout: float = 20.0) -> list[EventEnvelope]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = await self.events(run_id)
            if events and events[-1].type in ("run_finished", "run_cancelled"):
                return events
            await asyncio.sleep(0.02)
        raise AssertionError(f"run {run_id} did not end: {[e.type for e in await self.events(run_id)]}")

    async def wait_for(self, run_id: UUID, predicate: Any, timeout: float = 10.0) -> list[EventEnvelope]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = await self.events(run_id)
            if predicate(events):
                return events
            await asyncio.sleep(0.01)
        raise AssertionError(
            f"condition not reached for run {run_id}: {[e.type for e in await self.events(run_id)]}"
        )


@contextlib.asynccontextmanager
async def engine_on(
    pool: asyncpg.Pool, schema: str, *, worker: bool = True, settings: WorkerSettings | None = None
) -> AsyncIterator[Engine]:
    store = EventStore(pool, schema=schema)
    await store.start()
    queue = RunQueue(store, schema=schema)
    workflows = WorkflowStore(pool, schema=schema)
    registry = default_registry()
    w = (
        Worker(store, queue, workflows, registry, settings or WorkerSettings(lease_s=5, poll_s=0.2))
        if worker
        else None
    )
    task = asyncio.create_task(w.run()) if w else None
    try:
        yield Engine(store, queue, workflows, registry, w)
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await registry.aclose()
        await store.close()


def node_events(events: list[EventEnvelope], node_id: str) -> list[str]:
    """The event types of one node, in order (with attempt for execution events)."""
    out = []
    for e in events:
        if getattr(e.data, "node_id", None) == node_id:
            attempt = getattr(e.data, "attempt", None)
            out.append(f"{e.type}#{attempt}" if attempt is not None and e.type != "node_skipped" else e.type)
    return out
