"""Executes one claimed run: every transition is an appended event, folded into the live state.

The live state is never changed except by folding events that were appended,
so folding the log after the fact gives exactly the state the engine acted on.
Guarantees:
- a node's ``node_execute_before`` is durable before its handler runs, and its
  ``node_execute_after`` + ``node_execute_after_data`` (one atomic append) are
  durable before any dependent node is planned;
- independent branches run concurrently, at most ``max_parallel_nodes`` per run
  and at most the worker's node slots overall;
- a node whose ``node_execute_after`` is in the log is never executed again
  (recovery folds the log and plans with the same pure planner).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
import structlog

from projections.run_state import NodeState, RunState, apply
from schemas.codec import to_typed
from schemas.envelope import RawEnvelope
from schemas.events import (
    WORKER_CRASHED,
    Event,
    ForkOrigin,
    NodeError,
    NodeExecuteAfter,
    NodeExecuteAfterData,
    NodeExecuteBefore,
    NodeRetryScheduled,
    NodeSkipped,
    ReuseRef,
    RunCancelled,
    RunFinished,
    RunRecovered,
    RunResumed,
    RunStarted,
    RunWaiting,
)
from schemas.workflow import NodeSpec, RetryPolicy
from service.domain.outputs import state_blob_refs
from service.domain.planner import POISON_LIMIT, Plan, plan
from service.domain.run_document import fold_raw, node_document, run_outputs, sink_nodes
from service.domain.workflow_spec import WorkflowGraph
from service.engine.nodes.config_values import (
    SECRET_KEY,
    dynamic_values,
    redact,
    redact_encoded_output,
    resolve_config,
)
from service.engine.nodes.node_logs import FLUSH_INTERVAL_S, NodeLogCollector
from service.engine.nodes.registry import NodeContext, NodeFailure, NodeRegistry
from service.engine.outputs import (
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_OUTPUT_CAP_BYTES,
    RecordedOutput,
    RunOutputs,
    record_output,
)
from service.store.blobs import BlobStore
from service.store.event_store import ConcurrencyError, EventStore
from service.store.run_queue import Claim, LeaseLost, RunQueue

log = structlog.get_logger(__name__)

SecretReader = Callable[[str, set[str]], Awaitable[dict[str, str]]]
"""(tenant, names) -> values: the run's tenant's secrets, decrypted (``SecretStore.reveal``)."""


@dataclass(frozen=True)
class ChildRequest:
    """A ``workflow`` node's child run: started once per (parent, node, retry) by its key."""

    tenant: str
    workflow_id: str
    version: str | None
    inputs: dict[str, Any]
    parent_run_id: str
    parent_node_id: str
    idempotency_key: str
    depth: int = 1


@dataclass(frozen=True)
class Children:
    """What the engine needs from the service to run ``workflow`` nodes."""

    start: Callable[[ChildRequest], Awaitable[UUID]]
    """Queue the child (idempotent by its key); ``LookupError`` for an unknown workflow."""
    cancel: Callable[[UUID, str], Awaitable[None]]
    """Ask a child to cancel (it may have ended already)."""
    graph: Callable[[str, str, str], Awaitable[WorkflowGraph]]
    """(tenant, workflow_id, version) -> the graph a child ran (for its outputs)."""


MAX_RUN_DEPTH = 16
"""Child runs nest at most this deep (a workflow that starts itself stops there)."""
CHILD_ERROR_CHARS = 500
"""How much of a failed child's error its parent's node error quotes."""

WAITING_NODE_TYPES = frozenset({"delay", "wait", "workflow"})
"""Node types the executor runs itself: they wait (a timer, a signal, a child run) without
holding a node slot, and a run whose every unfinished node waits is parked."""


@dataclass(frozen=True)
class ExecutionLimits:
    max_parallel_nodes: int = 16
    output_cap_bytes: int = DEFAULT_OUTPUT_CAP_BYTES
    """Outputs whose JSON is larger are stored as blobs, referenced by their event."""
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    """Larger outputs fail their node with ``output_too_large``."""
    park_after_s: float = 2.0
    """A run whose every unfinished node waits longer than this gives its slot and lease back."""


DEFERRABLE_LEASE_S = 1.0
"""``run_started`` and ``node_execute_before`` may wait for the next append only while the lease
surely holds this long: 200 times ``DEFER_BEFORE_S``, so no other worker can claim the run (and
start the node again) before the start is written, unless an append takes over a second."""
DEFER_BEFORE_S = 0.005
"""How long they wait at most: a node still running by then has its start written on its own."""


def backoff_ms(policy: RetryPolicy, failures: int) -> int:
    """Delay before the attempt after the ``failures``-th failure (exponential, capped)."""
    delay = policy.initial_backoff_ms * (policy.multiplier ** max(0, failures - 1))
    return int(min(delay, policy.max_backoff_ms))


def item_count(output: Any) -> int:
    if output is None:
        return 0
    if isinstance(output, list):
        return len(output)
    return 1


def output_event(
    node_id: str, attempt: int, output: Any, limits: ExecutionLimits, encoded: bytes | None = None
) -> RecordedOutput:
    """The recorded output: inline, or a blob reference plus its blob when over the event cap
    (``service.engine.outputs``); ``NodeFailure`` when it is not JSON or over the hard limit.
    ``encoded``: the output's JSON, when the registry made it (then it is not encoded again)."""
    return record_output(node_id, attempt, output, limits.output_cap_bytes, limits.max_output_bytes, encoded)


def _clip(text: str | None) -> str:
    """A child's error as its parent quotes it: the first ``CHILD_ERROR_CHARS`` characters."""
    text = text or ""
    return text if len(text) <= CHILD_ERROR_CHARS else text[:CHILD_ERROR_CHARS] + "…"


def _since(started: datetime | None, now: datetime) -> float:
    """Milliseconds from ``started`` (a node attempt's start) to ``now``."""
    return max(0.0, (now - started).total_seconds() * 1000) if started is not None else 0.0


def _failed_attempt(
    node_id: str, node_type: str, attempt: int, duration_ms: float, error: NodeError
) -> list[Event]:
    """The events that record a failed attempt: its ``node_execute_after`` and an empty output."""
    return [
        NodeExecuteAfter(
            node_id=node_id,
            node_type=node_type,
            status="failed",
            attempt=attempt,
            duration_ms=duration_ms,
            error=error,
        ),
        NodeExecuteAfterData(node_id=node_id, attempt=attempt),
    ]


class RunExecutor:
    """Drives one run to a terminal event while this worker holds its lease."""

    def __init__(
        self,
        *,
        store: EventStore,
        queue: RunQueue,
        registry: NodeRegistry,
        graph: WorkflowGraph,
        claim: Claim,
        worker_id: str,
        node_slots: asyncio.Semaphore,
        limits: ExecutionLimits = ExecutionLimits(),
        secrets: SecretReader | None = None,
        children: Children | None = None,
        lease_left: Callable[[], float] | None = None,
    ) -> None:
        self.store = store
        self.lease_left = lease_left
        """Seconds this worker's lease on the run surely still holds (None: unknown)."""
        self._deferred: list[Event] = []
        """Events to write with the next append (``run_started``, ``node_execute_before``: ``_record_soon``)."""
        self.children = children
        self._check_children = True
        self.parked_until: datetime | None = None
        self._log_sinks: dict[str, NodeLogCollector] = {}
        self._log_flusher: asyncio.Task[None] | None = None
        """Set when the run was parked: when it is due (None: it waits for a signal or a child)."""
        self.secrets = secrets
        self.queue = queue
        self.registry = registry
        self.graph = graph
        self.claim = claim
        self.run_id: UUID = claim.run_id
        self.worker_id = worker_id
        self.node_slots = node_slots
        self.limits = limits
        self.state = RunState()
        self.next_seq = 0
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._record_cancel: dict[str, str] = {}
        self._configs: dict[str, Any] = {}
        self._reused: dict[str, list[Event]] = {}
        self._outputs = RunOutputs(BlobStore(store.pool, schema=store.schema).load)
        self._log = log.bind(run_id=str(self.run_id), workflow_id=claim.workflow_id)

    # -- the run loop ----------------------------------------------------------------------------

    async def execute(self) -> None:
        """Run to the end. Raises ``LeaseLost`` when another worker took the run over."""
        raw = await self.store.read_run(self.run_id)
        self._fold(raw)
        if self.state.ended:  # ended, but the row was left open (a crash right after the end)
            await self.queue.mark_ended(self.worker_id, self.run_id, wake=self._parent())
            return
        if self.state.fork is not None:
            self._reused = await self._reuse_events(self.state.fork)
        if self.state.started and self.claim.woke:
            self._log.info(
                "run_woke", waiting=sorted(n for n, s in self.state.nodes.items() if s.status == "waiting")
            )
        elif self.state.started:
            completed = [
                n for n, s in self.state.nodes.items() if s.status in ("succeeded", "failed", "skipped")
            ]
            recovered = RunRecovered(
                worker_id=self.worker_id,
                completed_nodes=sorted(completed),
                lease_expired=self.claim.lease_expired,
            )
            await self._append([recovered])
            self._log.info("run_recovered", completed=len(completed), lease_expired=recovered.lease_expired)
        else:
            await self._record_soon(RunStarted(worker_id=self.worker_id))
        try:
            await self._loop()
        finally:
            await self._stop_tasks()

    async def _loop(self) -> None:
        while True:
            self._changed.clear()
            self._reap()
            step = plan(self.graph, self.state, self._tasks.keys())
            if step.interrupt:
                await self._interrupt(step.interrupt)
                continue
            if step.skip:
                await self._cancel_orphans([n for n, _ in step.skip])
                await self._append([NodeSkipped(node_id=n, reason=r) for n, r in step.skip])
            for node_id in step.cancel:
                if self.graph.nodes[node_id].type in WAITING_NODE_TYPES:
                    # Starting a wait is short and must complete: a child run it queued must be
                    # recorded (run_waiting) so the halt can cancel it, never left behind.
                    continue
                if node_id not in self._record_cancel:
                    self._record_cancel[node_id] = (
                        "run cancelled" if self.state.cancel_requested else "run stopped"
                    )
                    self._tasks[node_id].cancel()
            if step.finish is not None and not self._tasks:
                if await self._finish(step):
                    return
                continue
            if step.skip or await self._resume_due(datetime.now(UTC)):
                continue
            now = datetime.now(UTC)
            for node_id in step.start:
                if len(self._tasks) >= self.limits.max_parallel_nodes:
                    break
                due = self.state.node(node_id).retry_due_at
                if node_id not in self._tasks and (due is None or due <= now):
                    self._tasks[node_id] = asyncio.create_task(
                        self._run_node(node_id), name=f"node:{node_id}"
                    )
            wake = self._next_wake()
            wait_s = max(0.0, (wake - now).total_seconds()) if wake is not None else None
            if (
                not self._tasks
                and step.finish is None
                and (wait_s is None or wait_s > self.limits.park_after_s)
            ):
                # Every unfinished node waits (a signal, a timer, a child run): give the run back.
                if await self._park(wake):
                    return
                continue
            await self._wait_for_change(wait_s)

    def _next_wake(self) -> datetime | None:
        """The earliest timer of the run's nodes: a delay's end, a wait's timeout, a retry's due time."""
        times = [
            t
            for node_id, n in self.state.nodes.items()
            if node_id not in self._tasks
            for t in (
                n.wake_at if n.status == "waiting" else None,
                n.retry_due_at if n.status == "retry_wait" else None,
            )
            if t is not None
        ]
        return min(times, default=None)

    async def _park(self, wake: datetime | None) -> bool:
        """Give the run back as waiting until ``wake``; False when the log moved on meanwhile."""
        async with self._lock:
            await self._write_deferred_locked()
            parked = await self.queue.park(self.worker_id, self.run_id, self.next_seq - 1, wake)
            if not parked:  # a signal, a cancel, or a child's end came meanwhile: look again
                self._check_children = True
                await self._catch_up_locked()
                return False
        self.parked_until = wake
        self._log.info("run_parked", wake_at=wake.isoformat() if wake else None)
        return True

    async def _wait_for_change(self, timeout_s: float | None = None) -> None:
        waiters: list[asyncio.Future[Any]] = list(self._tasks.values())
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait([*waiters, changed], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()

    def _reap(self) -> None:
        for node_id, task in list(self._tasks.items()):
            if task.done():
                del self._tasks[node_id]
                if not task.cancelled() and (exc := task.exception()) is not None:
                    raise exc

    async def _resume_due(self, now: datetime) -> bool:
        """Record the end of every wait that is over: a delay or a timeout that has passed, a
        child run that has ended. True when something was appended."""
        if self.state.status != "waiting":  # the fold's status: no node waits (the plain path)
            return False
        appended = False
        for node_id in self.graph.topo_order:
            node = self.state.node(node_id)
            if node.status == "waiting" and node.wake_at is not None and node.wake_at <= now:
                await self._wake_node(node_id, node, now)
                appended = True
        if self._check_children and self.children is not None:
            self._check_children = False
            for node_id in self.graph.topo_order:
                node = self.state.node(node_id)
                if node.status == "waiting" and node.child_run_id is not None:
                    appended = (
                        await self._resume_from_child(node_id, UUID(node.child_run_id), now) or appended
                    )
        return appended

    async def _wake_node(self, node_id: str, node: NodeState, now: datetime) -> None:
        """A waiting node's wake time has come: a delay has ended, or a timeout has passed (the
        ``wait`` node's own ``timeout_ms``, or the node's ``timeout_ms`` for any waiting node)."""
        spec = self.graph.nodes[node_id]
        policy = spec.retry or RetryPolicy()
        duration = _since(node.started_at, now)
        started = node.started_at or now
        try:
            config, _secrets = await self._config(node_id, await self._document(node_id))
        except NodeFailure as invalid:
            resumed = RunResumed(reason="timer", node_id=node_id, cause="timer")
            await self._record_failure(
                node_id, spec.type, policy, node.attempts, duration, invalid, prefix=[resumed]
            )
            return
        assert node.wake_at is not None
        if spec.type == "delay" and node.wake_at >= started + timedelta(milliseconds=config.ms):
            resumed = RunResumed(reason="timer", node_id=node_id, cause="timer")
            await self._resume_with_output(resumed, node, {"delayed_ms": config.ms}, duration)
            return
        own = getattr(config, "timeout_ms", None) if spec.type == "wait" else None
        if own is not None and node.wake_at >= started + timedelta(milliseconds=own):
            failure = NodeFailure(
                "wait_timeout",
                f"node {node_id} got no signal {node.signal!r} within {own} ms",
                retryable=False,
            )
        else:
            failure = NodeFailure("timeout", f"node {node_id} did not finish within {spec.timeout_ms} ms")
        if node.child_run_id is not None and self.children is not None:
            await self.children.cancel(UUID(node.child_run_id), f"parent node {node_id} timed out")
        resumed = RunResumed(reason="timeout", node_id=node_id, cause="timeout")
        await self._record_failure(
            node_id, spec.type, policy, node.attempts, duration, failure, prefix=[resumed]
        )

    async def _resume_with_output(
        self, resumed: RunResumed, node: NodeState, output: Any, duration_ms: float
    ) -> None:
        """A waiting node's wait is over and it succeeded with ``output``: one append of its
        ``run_resumed``, ``node_execute_after`` and output."""
        data = self._outputs.keep(output_event(node.node_id, node.attempts, output, self.limits))
        after = NodeExecuteAfter(
            node_id=node.node_id,
            node_type=self.graph.nodes[node.node_id].type,
            status="succeeded",
            attempt=node.attempts,
            duration_ms=duration_ms,
            item_count=item_count(self._outputs.value_of(data)),
        )
        await self._append([resumed, after, data])

    async def _resume_from_child(self, node_id: str, child_id: UUID, now: datetime) -> bool:
        """Record a ``workflow`` node's result once its child run has ended: the child's outputs,
        or a failure (retried per the node's policy when the child failed)."""
        assert self.children is not None
        events = await self.store.read_run(child_id)
        child = fold_raw(events) if events else None
        if child is not None and not child.ended:
            return False
        node = self.state.node(node_id)
        spec = self.graph.nodes[node_id]
        duration = _since(node.started_at, now)
        resumed = RunResumed(reason=f"child run {child_id} ended", node_id=node_id, cause="child")
        if child is not None and child.status == "succeeded":
            graph = await self.children.graph(child.tenant, child.workflow_id, child.workflow_version)
            values = await self._outputs.values(state_blob_refs(child, sink_nodes(graph)))
            await self._resume_with_output(resumed, node, run_outputs(graph, child, values), duration)
            return True
        if child is None:
            failure = NodeFailure("child_failed", f"child run {child_id} does not exist", retryable=False)
        elif child.status == "cancelled":
            failure = NodeFailure(
                "child_cancelled",
                f"child run {child_id} was cancelled: {_clip(child.error)}",
                retryable=False,
            )
        else:
            failure = NodeFailure("child_failed", f"child run {child_id} failed: {_clip(child.error)}")
        await self._record_failure(
            node_id,
            spec.type,
            spec.retry or RetryPolicy(),
            node.attempts,
            duration,
            failure,
            prefix=[resumed],
        )
        return True

    def _child_key(self, node_id: str, node: NodeState) -> str:
        """The idempotency key of the child run of ``node_id``'s current try."""
        return f"parent:{self.run_id}:{node_id}:{node.failures + 1}"

    async def _cancel_orphans(self, node_ids: Sequence[str]) -> None:
        """A ``workflow`` node skipped while ``running`` (its executor died after queueing the
        child, before recording ``run_waiting``): find the child by its idempotency key and
        cancel it, so it does not outlive a parent that will never wait for it."""
        if self.children is None:
            return
        for node_id in node_ids:
            node = self.state.node(node_id)
            if node.status != "running" or self.graph.nodes[node_id].type != "workflow":
                continue
            key = self._child_key(node_id, node)
            child = await self.queue.run_by_key(self.claim.tenant, key)
            if child is not None:
                await self.children.cancel(
                    child, f"parent run {self.run_id} stopped before it recorded its child"
                )

    async def _interrupt(self, node_ids: Sequence[str]) -> None:
        """The run halted while these nodes waited: each ends as a cancelled attempt (a child run
        it waits for is asked to cancel first)."""
        reason = "run cancelled" if self.state.cancel_requested else "run stopped"
        now = datetime.now(UTC)
        events: list[Event] = []
        for node_id in node_ids:
            node = self.state.node(node_id)
            if node.child_run_id is not None and self.children is not None:
                await self.children.cancel(UUID(node.child_run_id), f"parent run {self.run_id}: {reason}")
            error = NodeError(
                kind="cancelled", message=f"node {node_id} was cancelled: {reason}", retryable=False
            )
            events += [
                RunResumed(reason=reason, node_id=node_id, cause="halt"),
                *_failed_attempt(node_id, node.node_type, node.attempts, _since(node.started_at, now), error),
            ]
        await self._append(events)

    async def _finish(self, step: Plan) -> bool:
        """Append the terminal event and end the queue row together; False if the log moved on."""
        async with self._lock:
            await self._write_deferred_locked()  # run_started, when nothing else was recorded yet
            now = datetime.now(UTC)
            started = self.state.started_at or now
            duration = (now - started).total_seconds() * 1000
            event: Event
            if step.finish == "cancelled":
                event = RunCancelled(reason=step.error or "cancel requested")
            else:
                assert step.finish is not None
                event = RunFinished(status=step.finish, error=step.error, duration_ms=duration)
            try:
                stored = await self.queue.end_with(
                    self.worker_id,
                    self.run_id,
                    [event],
                    self.next_seq,
                    tenant=self.claim.tenant,
                    workflow_id=self.claim.workflow_id,
                    wake=self._parent(),
                )
            except ConcurrencyError:
                await self._catch_up_locked()
                return False
            self._fold(stored)
        self._log.info("run_ended", status=self.state.status, error=self.state.error)
        return True

    def _parent(self) -> UUID | None:
        """The parent run waiting for this one (a child run of a ``workflow`` node)."""
        if self.state.parent_node_id is None or self.state.parent_run_id is None:
            return None
        return UUID(self.state.parent_run_id)

    async def _stop_tasks(self) -> None:
        if self._log_flusher is not None:
            self._log_flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._log_flusher
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    # -- one node ----------------------------------------------------------------------------------

    async def _config(self, node_id: str, document: dict[str, Any]) -> tuple[Any, dict[str, str]]:
        """The node's typed config for this attempt, and the secrets it named (name -> value).

        A static config is parsed once; one with ``$expr`` / ``$secret`` values is resolved over
        this attempt's document (and the run's tenant's secrets) and parsed each time, and is
        never stored. A config that does not resolve or parse fails the attempt
        (``invalid_config``, or ``unknown_secret``; not retried) instead of the run's executor."""
        spec = self.graph.nodes[node_id]
        if node_id in self._configs:
            return self._configs[node_id], {}
        try:
            dynamic = dynamic_values(spec.config)
            if not dynamic:
                self._configs[node_id] = self.registry.parse_config(spec.type, spec.config)
                return self._configs[node_id], {}
            names = {argument for _where, kind, argument in dynamic if kind == SECRET_KEY}
            secrets = await self._reveal(names) if names else {}
            resolved = resolve_config(spec.config, document, secrets)
            return self.registry.parse_config(spec.type, resolved), secrets
        except (ValueError, LookupError) as exc:  # InvalidNodeConfig, ExpressionError, UnknownNodeType
            raise NodeFailure("invalid_config", f"node {node_id}: {exc}", retryable=False) from None

    async def _reveal(self, names: set[str]) -> dict[str, str]:
        if self.secrets is None:
            raise NodeFailure("unknown_secret", "this service has no secret store", retryable=False)
        try:
            return await self.secrets(self.claim.tenant, names)
        except LookupError as exc:  # UnknownSecret: the message names it, never a value
            raise NodeFailure("unknown_secret", str(exc), retryable=False) from None

    async def _reuse_events(self, fork: ForkOrigin) -> dict[str, list[Event]]:
        """For a fork: the events that record each reused (or overridden) node's parent result."""
        parent = await self.store.read_run(UUID(fork.parent_run_id))
        last: dict[str, dict[str, RawEnvelope]] = {}
        for raw in parent:
            body = to_typed(raw).data
            node_id = getattr(body, "node_id", None)
            if node_id is None:
                continue
            if isinstance(body, NodeExecuteBefore):
                last[node_id] = {"before": raw}
            elif isinstance(body, NodeExecuteAfter) and body.status == "succeeded":
                last.setdefault(node_id, {})["after"] = raw
            elif isinstance(body, NodeExecuteAfterData) and "after" in last.get(node_id, {}):
                last[node_id]["data"] = raw

        def ref(raw: RawEnvelope, overridden: bool = False) -> ReuseRef:
            return ReuseRef(
                run_id=fork.parent_run_id, seq=raw.seq, event_id=str(raw.event_id), overridden=overridden
            )

        out: dict[str, list[Event]] = {}
        for node_id in fork.reuse:
            found = last.get(node_id, {})
            if not {"before", "after", "data"} <= found.keys() or node_id not in self.graph.nodes:
                continue  # nothing usable recorded: the node runs
            after = to_typed(found["after"]).data
            data = to_typed(found["data"]).data
            assert isinstance(after, NodeExecuteAfter) and isinstance(data, NodeExecuteAfterData)
            node_type = self.graph.nodes[node_id].type
            out[node_id] = [
                NodeExecuteBefore(node_id=node_id, node_type=node_type, reused_from=ref(found["before"])),
                msgspec.structs.replace(after, attempt=1, reused_from=ref(found["after"])),
                msgspec.structs.replace(data, attempt=1, reused_from=ref(found["data"])),
            ]
        for node_id, output in fork.overrides.items():
            if node_id not in self.graph.nodes:
                continue
            found = last.get(node_id, {})
            source = found.get("data") or found.get("before")
            reuse = (
                ref(source, overridden=True)
                if source
                else ReuseRef(fork.parent_run_id, -1, "", overridden=True)
            )
            recorded = output_event(node_id, 1, output, self.limits)
            self._outputs.keep(recorded)  # a blob is written with the reused events
            out[node_id] = [
                NodeExecuteBefore(
                    node_id=node_id, node_type=self.graph.nodes[node_id].type, reused_from=reuse
                ),
                NodeExecuteAfter(
                    node_id=node_id,
                    node_type=self.graph.nodes[node_id].type,
                    status="succeeded",
                    item_count=item_count(recorded.value),
                    reused_from=reuse,
                ),
                msgspec.structs.replace(recorded.data, reused_from=reuse),
            ]
        return out

    async def _run_node(self, node_id: str) -> None:
        """Run one node to its recorded result, attempt after attempt as its retry policy allows.

        A fork's reused node records the parent's result instead. When the run loop cancels
        the node (``_record_cancel``), the attempt is recorded as failed with that reason.
        """
        reused = self._reused.get(node_id)
        if reused is not None and self.state.node(node_id).status == "pending":
            await self._append(reused)  # a fork: the parent's result, recorded as reused
            return
        spec = self.graph.nodes[node_id]
        policy = spec.retry or RetryPolicy()
        attempt = self.state.node(node_id).attempts + 1
        started = 0.0
        logs: NodeLogCollector | None = None
        try:
            if spec.type in WAITING_NODE_TYPES:
                await self._start_waiting(node_id, spec, policy, attempt)
                return
            async with self.node_slots:
                await self._record_soon(
                    NodeExecuteBefore(node_id=node_id, node_type=spec.type, attempt=attempt)
                )
                logs = NodeLogCollector(node_id, attempt)
                ctx = NodeContext(
                    run_id=str(self.run_id),
                    node_id=node_id,
                    node_type=spec.type,
                    attempt=attempt,
                    document=await self._document(node_id),
                    tenant=self.claim.tenant,
                    log_sink=logs,
                )
                started = time.perf_counter()
                data, failure = await self._call_handler(node_id, spec, attempt, ctx)
                duration = (time.perf_counter() - started) * 1000
                last_lines = [batch] if (batch := logs.take(final=True)) is not None else []
                if failure is None and data is not None:
                    after = NodeExecuteAfter(
                        node_id=node_id,
                        node_type=spec.type,
                        status="succeeded",
                        attempt=attempt,
                        duration_ms=duration,
                        item_count=item_count(self._outputs.value_of(data)),
                    )
                    await self._append([*last_lines, after, data])  # lines just before their result
                    return
                assert failure is not None
                await self._record_failure(
                    node_id, spec.type, policy, attempt, duration, failure, prefix=last_lines
                )
        except asyncio.CancelledError:
            reason = self._record_cancel.get(node_id)
            if reason is None:
                raise  # shutdown or lost lease: recovery will deal with the node
            duration = (time.perf_counter() - started) * 1000 if started else 0.0
            error = NodeError(
                kind="cancelled", message=f"node {node_id} was cancelled: {reason}", retryable=False
            )
            # Checked under the append lock: a shielded append of this node's own result may
            # still be finishing, and a node that just succeeded must not also be "cancelled".
            last = logs.take(final=True) if logs is not None else None
            await self._append(
                [*([last] if last else []), *_failed_attempt(node_id, spec.type, attempt, duration, error)],
                only_if_running=node_id,
            )

    async def _document(self, node_id: str) -> dict[str, Any]:
        """What ``node_id`` sees, its upstream blob outputs as their values."""
        values = await self._outputs.document_values(self.graph, self.state, node_id)
        return node_document(self.graph, self.state, node_id, values)

    async def _start_waiting(self, node_id: str, spec: NodeSpec, policy: RetryPolicy, attempt: int) -> None:
        """Start a node that waits (``delay``, ``wait``, ``workflow``): record its start and what
        it waits for, then end the task; the run loop resumes it (``_resume_due``) or a signal does."""
        await self._append([NodeExecuteBefore(node_id=node_id, node_type=spec.type, attempt=attempt)])
        try:
            config, _secrets = await self._config(node_id, await self._document(node_id))
            waiting = await self._waiting_event(node_id, spec, config)
        except NodeFailure as failure:
            await self._record_failure(node_id, spec.type, policy, attempt, 0.0, failure)
            return
        await self._append([waiting])
        if waiting.child_run_id is not None:
            self._check_children = True  # the child may have ended already
            self._changed.set()

    async def _waiting_event(self, node_id: str, spec: NodeSpec, config: Any) -> RunWaiting:
        """What the node waits for, and until when: its own end (a delay), its own timeout (a
        wait), or the node's ``timeout_ms`` when that is sooner."""
        node = self.state.node(node_id)
        started = node.started_at or datetime.now(UTC)
        deadline = started + timedelta(milliseconds=spec.timeout_ms) if spec.timeout_ms else None

        def sooner(wake: datetime | None) -> datetime | None:
            return min((t for t in (wake, deadline) if t is not None), default=None)

        if spec.type == "delay":
            return RunWaiting(
                reason=f"delay {config.ms} ms",
                node_id=node_id,
                wake_at=sooner(started + timedelta(milliseconds=config.ms)),
            )
        if spec.type == "wait":
            timeout = config.timeout_ms
            return RunWaiting(
                reason=f"signal {config.signal}",
                node_id=node_id,
                signal=config.signal,
                wake_at=sooner(started + timedelta(milliseconds=timeout) if timeout is not None else None),
            )
        if self.children is None:
            raise NodeFailure("unsupported", "this engine cannot start child runs", retryable=False)
        if self.state.depth + 1 > MAX_RUN_DEPTH:
            raise NodeFailure(
                "too_deep",
                f"node {node_id}: this run is nested {self.state.depth} deep; child runs nest at most "
                f"{MAX_RUN_DEPTH} deep (does the workflow start itself?)",
                retryable=False,
            )
        request = ChildRequest(
            tenant=self.claim.tenant,
            workflow_id=config.workflow_id,
            version=config.version,
            inputs=config.inputs,
            parent_run_id=str(self.run_id),
            parent_node_id=node_id,
            # One child per try of the node: a crash before the wait is recorded finds the same child.
            idempotency_key=self._child_key(node_id, node),
            depth=self.state.depth + 1,
        )
        try:
            child = await self.children.start(request)
        except LookupError as exc:
            raise NodeFailure("unknown_workflow", f"node {node_id}: {exc}", retryable=False) from None
        return RunWaiting(
            reason=f"child run {child}", node_id=node_id, child_run_id=str(child), wake_at=deadline
        )

    async def _call_handler(
        self, node_id: str, spec: NodeSpec, attempt: int, ctx: NodeContext
    ) -> tuple[NodeExecuteAfterData | None, NodeFailure | None]:
        """One attempt of the node's handler, within its timeout: its recorded output, or why it failed.

        Meanwhile the lines it logs are recorded every second (``_flush_logs``); the rest are
        the caller's, to record with the attempt's result."""
        failure: NodeFailure | None = None
        data: NodeExecuteAfterData | None = None
        self._watch_logs(node_id, ctx.log_sink)
        try:
            async with asyncio.timeout(spec.timeout_ms / 1000 if spec.timeout_ms else None):
                config, secrets = await self._config(node_id, ctx.document)
                if secrets:
                    ctx = msgspec.structs.replace(ctx, secrets=secrets)
                output = await self.registry.execute_json(spec.type, config, ctx)
            value, encoded = redact_encoded_output(output.value, output.encoded, ctx.secrets)
            data = self._outputs.keep(output_event(node_id, attempt, value, self.limits, encoded))
        except NodeFailure as exc:
            failure = exc
        except TimeoutError:
            failure = NodeFailure("timeout", f"node {node_id} did not finish within {spec.timeout_ms} ms")
        finally:
            # A batch the flusher took is already queued on the append lock (FIFO): it lands
            # before the caller's last lines.
            self._log_sinks.pop(node_id, None)
        if failure is not None and ctx.secrets:
            failure = NodeFailure(
                failure.kind, redact(failure.message, ctx.secrets), retryable=failure.retryable
            )
        return data, failure

    def _watch_logs(self, node_id: str, collector: NodeLogCollector | None) -> None:
        """Have the lines ``node_id``'s running attempt logs recorded every second (one flusher
        task per run, not per node: most nodes log nothing and end well within a second)."""
        if collector is None:
            return
        self._log_sinks[node_id] = collector
        if self._log_flusher is None or self._log_flusher.done():
            self._log_flusher = asyncio.create_task(self._flush_logs(), name=f"logs:{self.run_id}")

    async def _flush_logs(self) -> None:
        while self._log_sinks:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            for node_id, collector in list(self._log_sinks.items()):
                batch = collector.take()
                if batch is not None:
                    await self._append([batch], only_if_running=node_id)

    async def _record_failure(
        self,
        node_id: str,
        node_type: str,
        policy: RetryPolicy,
        attempt: int,
        duration: float,
        failure: NodeFailure,
        *,
        prefix: Sequence[Event] = (),
    ) -> None:
        """Record a failed attempt (after ``prefix``, e.g. the ``run_resumed`` of a wait that
        timed out), and a retry when the policy allows one. The retry's due time is in the log
        (a durable timer): the run loop starts the next attempt then, and a recovered run waits
        only what is left."""
        retryable = failure.retryable and failure.kind not in policy.non_retryable
        error = NodeError(kind=failure.kind, message=failure.message, retryable=retryable)
        failed = _failed_attempt(node_id, node_type, attempt, duration, error)
        failures = self.state.node(node_id).failures + 1
        # A crash that makes the run a poison run is not retried: the planner ends the run.
        poisoned = failure.kind == WORKER_CRASHED and self.state.crashes + 1 >= POISON_LIMIT
        if retryable and failures < policy.max_attempts and not self.state.cancel_requested and not poisoned:
            delay = backoff_ms(policy, failures)
            retry = NodeRetryScheduled(
                node_id=node_id,
                attempt=attempt,
                next_attempt=attempt + 1,
                delay_ms=delay,
                error=error,
                due_at=datetime.now(UTC) + timedelta(milliseconds=delay),
            )
            await self._append([*prefix, *failed, retry])
            self._log.info("node_retry_scheduled", node_id=node_id, attempt=attempt, delay_ms=delay)
            return
        await self._append([*prefix, *failed])

    # -- appending and folding ---------------------------------------------------------------------

    async def _append(
        self, events: Sequence[Event], *, only_if_running: str | None = None
    ) -> list[RawEnvelope]:
        """Append as this run's only writer; shielded so a cancelled caller never leaves a
        written-but-unfolded event behind. With ``only_if_running`` nothing is appended
        unless that node is still running once earlier appends have landed."""
        inner = asyncio.ensure_future(self._append_now(list(events), only_if_running))
        # If the caller is cancelled meanwhile, nobody awaits `inner`: mark its outcome as
        # retrieved so a failure (e.g. LeaseLost) is not reported as "never retrieved".
        inner.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(inner)

    async def _record_soon(self, event: Event) -> None:
        """Record ``run_started`` or a node's ``node_execute_before`` without waiting for it,
        while the lease surely holds for a while (so no other worker can have taken the run
        over): it is written with the next append (a quick node's result: one append instead
        of two), or on its own within ``DEFER_BEFORE_S``. Either way it is durable before
        anything recorded after it, so before any dependent node starts and before the run
        ends or parks. Without such a lease it is appended at once, as a fence."""
        if self.lease_left is None or self.lease_left() < DEFERRABLE_LEASE_S:
            await self._append([event])
            return
        self._deferred.append(event)
        asyncio.get_running_loop().call_later(DEFER_BEFORE_S, self._flush_deferred)

    async def _write_deferred_locked(self) -> None:
        if self._deferred:
            deferred, self._deferred = self._deferred, []
            await self._write_locked(deferred)

    def _flush_deferred(self) -> None:
        if self._deferred:
            flush = asyncio.ensure_future(self._append([]))
            flush.add_done_callback(
                lambda t: t.cancelled() or t.exception()
            )  # its node's append meets it too

    async def _append_now(self, events: list[Event], only_if_running: str | None) -> list[RawEnvelope]:
        async with self._lock:
            if only_if_running is None:
                events = [*self._deferred, *events]
                self._deferred = []
            else:  # the node's own before must be folded before its status is checked
                await self._write_deferred_locked()
            return await self._write_locked(events, only_if_running) if events else []

    async def _write_locked(
        self, events: list[Event], only_if_running: str | None = None
    ) -> list[RawEnvelope]:
        while True:
            if only_if_running is not None and self.state.node(only_if_running).status != "running":
                return []
            blobs = self._outputs.blobs_for(events)  # large outputs: same transaction
            try:
                stored = await self.store.append(
                    self.run_id,
                    events,
                    self.next_seq,
                    tenant=self.claim.tenant,
                    workflow_id=self.claim.workflow_id,
                    blobs=blobs,
                )
            except ConcurrencyError:
                await self._catch_up_locked()
                continue
            self._outputs.written(blobs)
            self._fold(stored)
            return stored

    async def refresh(self) -> None:
        """Read events others appended (a cancel request, a signal), look at child runs again,
        and wake the run loop."""
        async with self._lock:
            self._check_children = True
            await self._catch_up_locked()
            self._changed.set()

    async def _catch_up_locked(self) -> None:
        newer = await self.store.read_run(self.run_id, after_seq=self.next_seq - 1)
        for event in newer:
            if event.type in (
                "run_started",
                "run_recovered",
                "node_execute_before",
                "run_finished",
                "run_cancelled",
            ):
                raise LeaseLost(
                    f"run {self.run_id} was written by another worker ({event.type} at seq {event.seq})"
                )
        self._fold(newer)

    def _fold(self, stored: list[RawEnvelope]) -> None:
        if not stored:
            return
        state = self.state
        for raw in stored:
            state = apply(state, to_typed(raw))
        self.state = state
        self.next_seq = stored[-1].seq + 1
        self._changed.set()
