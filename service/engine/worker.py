"""The worker: claims queued runs, keeps their leases, and runs each in a ``RunExecutor``.

Any number of workers (in any number of processes) share one database; a run
is executed by one worker at a time (lease + ``FOR UPDATE SKIP LOCKED``). A
worker that dies stops renewing; once the lease expires another worker claims
the run and recovers it from its events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from functools import partial
from uuid import UUID

import structlog

from service.config import WorkerSettings
from service.domain.workflow_spec import WorkflowGraph, build_graph
from service.engine.control import RunAlreadyEnded, request_cancel
from service.engine.executor import Children, ChildRequest, ExecutionLimits, RunExecutor, SecretReader
from service.engine.nodes.registry import NodeRegistry
from service.infra.db import is_retryable
from service.infra.listen import listen
from service.retry import Backoff
from service.store.event_store import EventStore
from service.store.run_queue import Claim, LeaseLost, RunQueue
from service.store.workflow_store import WorkflowStore
from service.waiting import wait_set

log = structlog.get_logger(__name__)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(
        self,
        store: EventStore,
        queue: RunQueue,
        workflows: WorkflowStore,
        registry: NodeRegistry,
        settings: WorkerSettings | None = None,
        worker_id: str | None = None,
        secrets: SecretReader | None = None,
    ) -> None:
        self.store = store
        self.secrets = secrets
        self.queue = queue
        self.workflows = workflows
        self.registry = registry
        self.settings = settings = settings or WorkerSettings()
        self.worker_id = worker_id or new_worker_id()
        self.node_slots = asyncio.Semaphore(settings.max_node_tasks)
        self.limits = ExecutionLimits(
            settings.max_parallel_nodes,
            settings.output_cap_bytes,
            settings.max_output_bytes,
            park_after_s=settings.park_after_s,
        )
        self.children = Children(start=self._start_child, cancel=self._cancel_child, graph=self._graph_of)
        self.executors: dict[UUID, RunExecutor] = {}
        self._tasks: dict[UUID, asyncio.Task[None]] = {}
        self._lease_until: dict[UUID, float] = {}
        """Per run: the monotonic time until which its lease surely holds (``_lease_left``)."""
        self._wake = asyncio.Event()
        self._graphs: dict[tuple[str, str, str], WorkflowGraph] = {}
        self.completed = 0

    async def run(self) -> None:
        """Claim and execute until cancelled; on cancellation, give the runs back at once.

        Database errors (an outage, a dropped session) never end the worker: a failed
        claim is retried with backoff (0.1 s doubling to 5 s, reset by a claim that
        works), and the LISTEN for wake-ups and cancels is re-established
        (``service.infra.listen``).
        """
        listener = asyncio.create_task(
            listen(
                self.store.pool,
                {self.queue.notify_channel: self._on_notify},
                on_restored=self._missed_notifications,
            ),
            name="worker-listener",
        )
        heartbeat = asyncio.create_task(self._heartbeat(), name="worker-heartbeat")
        backoff = Backoff(first_s=0.1, max_s=5.0)
        claim_unsure = False
        try:
            log.info("worker_started", worker_id=self.worker_id, max_runs=self.settings.max_runs)
            while True:
                self._wake.clear()
                free = self.settings.max_runs - len(self._tasks)
                try:
                    if claim_unsure:
                        # A failed claim may have leased runs whose answer never arrived.
                        orphans = await self.queue.release_all_but(self.worker_id, list(self._tasks))
                        if orphans:
                            log.info("worker_released_unstarted_runs", runs=orphans)
                        claim_unsure = False
                    asked_at = time.monotonic()
                    claims = (
                        await self.queue.claim(self.worker_id, free, self.settings.lease_s)
                        if free > 0
                        else []
                    )
                except Exception as exc:  # whatever it is: the worker must go on claiming
                    delay = backoff.next_delay()
                    log.warning(
                        "worker_claim_failed",
                        error=f"{type(exc).__name__}: {exc}",
                        retry_in_s=round(delay, 3),
                    )
                    claim_unsure = True
                    await asyncio.sleep(delay)
                    continue
                backoff.reset()
                for claim in claims:
                    self._lease_until[claim.run_id] = asked_at + self.settings.lease_s
                    self._start(claim)
                if len(claims) < free or free <= 0:
                    await wait_set(self._wake, self.settings.poll_s)
        finally:
            heartbeat.cancel()
            listener.cancel()
            running = list(self._tasks)
            for task in self._tasks.values():
                task.cancel()
            for task in [heartbeat, listener, *self._tasks.values()]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await self.queue.release(self.worker_id, running)
            log.info("worker_stopped", worker_id=self.worker_id, released=len(running))

    def _missed_notifications(self) -> None:
        """The LISTEN was down: look for new runs, and let every run read cancels it missed."""
        self._wake.set()
        for run_id in list(self.executors):
            self._refresh(run_id)

    def _refresh(self, run_id: UUID) -> None:
        """Let the run's executor read events others appended (a cancel request, a signal)."""
        executor = self.executors.get(run_id)
        if executor is not None:
            asyncio.create_task(self._refresh_executor(run_id, executor))  # noqa: RUF006 - short, self-contained

    async def _refresh_executor(self, run_id: UUID, executor: RunExecutor) -> None:
        try:
            await executor.refresh()
        except LeaseLost as exc:
            # Someone else writes the run now: this executor must stop (its next append would
            # fail the same way).
            log.warning("run_lease_lost", run_id=str(run_id), error=str(exc))
            task = self._tasks.get(run_id)
            if task is not None and self.executors.get(run_id) is executor:
                task.cancel()
        except Exception as exc:  # a database error: the run loop meets it too, and handles it
            log.warning("run_refresh_failed", run_id=str(run_id), error=f"{type(exc).__name__}: {exc}")

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        kind, _, run = str(payload).partition(":")
        if kind in ("cancel", "wake"):
            with contextlib.suppress(ValueError):
                self._refresh(UUID(run))
            return
        self._wake.set()

    def _start(self, claim: Claim) -> None:
        self._tasks[claim.run_id] = asyncio.create_task(self._execute(claim), name=f"run:{claim.run_id}")

    async def _graph(self, claim: Claim) -> WorkflowGraph:
        return await self._graph_of(claim.tenant, claim.workflow_id, claim.workflow_version)

    async def _graph_of(self, tenant: str, workflow_id: str, version: str) -> WorkflowGraph:
        key = (tenant, workflow_id, version)
        graph = self._graphs.get(key)
        if graph is None:
            spec = await self.workflows.spec(workflow_id, version, tenant=tenant)
            graph = build_graph(spec)
            self._graphs[key] = graph
        return graph

    async def _start_child(self, request: ChildRequest) -> UUID:
        """Queue a ``workflow`` node's child run (once per key); ``LookupError`` for an unknown
        workflow or version."""
        stored = await self.workflows.get(request.workflow_id, request.version, tenant=request.tenant)
        enqueued = await self.queue.enqueue(
            tenant=request.tenant,
            workflow_id=request.workflow_id,
            workflow_version=stored.version,
            inputs=request.inputs,
            idempotency_key=request.idempotency_key,
            parent_run_id=request.parent_run_id,
            parent_node_id=request.parent_node_id,
            depth=request.depth,
            node_count=len(stored.spec.nodes),
            actor=f"run:{request.parent_run_id}",
        )
        return enqueued.run_id

    async def _cancel_child(self, run_id: UUID, reason: str) -> None:
        with contextlib.suppress(RunAlreadyEnded, LookupError):
            await request_cancel(self.queue, run_id, reason, requested_by="parent")

    async def _execute(self, claim: Claim) -> None:
        bound = log.bind(run_id=str(claim.run_id), workflow_id=claim.workflow_id)
        hand_back = False
        executor: RunExecutor | None = None
        me = asyncio.current_task()
        try:
            executor = RunExecutor(
                store=self.store,
                queue=self.queue,
                registry=self.registry,
                graph=await self._graph(claim),
                claim=claim,
                worker_id=self.worker_id,
                node_slots=self.node_slots,
                limits=self.limits,
                secrets=self.secrets,
                children=self.children,
                lease_left=partial(self._lease_left, claim.run_id),
            )
            self.executors[claim.run_id] = executor
            await executor.execute()
            if executor.state.ended:  # not parked: a parked run ends in a later claim
                self.completed += 1
            elif executor.parked_until is not None:  # be the one to claim it when it is due
                delay = (executor.parked_until - datetime.now(UTC)).total_seconds()
                asyncio.get_running_loop().call_later(max(0.0, delay), self._wake.set)
        except LeaseLost as exc:
            bound.warning("run_lease_lost", error=str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_retryable(exc):
                # The database failed under the run, not the run itself: hand it back (below), so
                # it is recovered as soon as claims work again instead of after its lease (~15 s).
                bound.warning("run_interrupted_by_database", error=f"{type(exc).__name__}: {exc}")
                hand_back = True
            else:
                # The lease is left to expire, so the run is retried by recovery later (not at
                # once: an error of the run itself would otherwise repeat in a tight loop).
                bound.exception("run_execution_error")
        finally:
            # A parked run may already be claimed again (woken at once): leave the new entries.
            if executor is not None and self.executors.get(claim.run_id) is executor:
                del self.executors[claim.run_id]
            if self._tasks.get(claim.run_id) is me:
                del self._tasks[claim.run_id]
                self._lease_until.pop(claim.run_id, None)
            # Released only once out of _tasks: the heartbeat must not renew the lease after it.
            if hand_back:
                await self._hand_back(claim.run_id)
            self._wake.set()

    async def _hand_back(self, run_id: UUID) -> None:
        """Release ``run_id`` now, retrying (0.1 s doubling to 5 s) while the database is still
        failing; if it stays down for a whole lease, the lease expires anyway and the run is
        recovered then."""
        deadline = time.monotonic() + self.settings.lease_s
        backoff = Backoff(first_s=0.1, max_s=5.0)
        while time.monotonic() < deadline:
            try:
                await self.queue.release(self.worker_id, [run_id])
                log.info("run_handed_back", run_id=str(run_id))
                return
            except Exception as exc:
                delay = backoff.next_delay()
                log.warning(
                    "run_hand_back_failed",
                    run_id=str(run_id),
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=round(delay, 3),
                )
                await asyncio.sleep(delay)

    def _lease_left(self, run_id: UUID) -> float:
        """Seconds the run's lease surely still holds: counted from before the claim or renewal
        was sent, so the database's expiry is never earlier (no other worker can claim it)."""
        return self._lease_until.get(run_id, 0.0) - time.monotonic()

    async def _heartbeat(self) -> None:
        interval = self.settings.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            owned = list(self._tasks)
            asked_at = time.monotonic()
            try:
                held = await self.queue.renew(self.worker_id, owned, self.settings.lease_s)
            except Exception as exc:
                log.warning("lease_renewal_failed", error=str(exc))
                continue
            for run_id in held:
                if run_id in self._lease_until:
                    self._lease_until[run_id] = asked_at + self.settings.lease_s
            for run_id in owned:
                if run_id not in held and run_id in self._tasks and run_id in self.executors:
                    log.warning("run_lease_lost", run_id=str(run_id))
                    self._tasks[run_id].cancel()
