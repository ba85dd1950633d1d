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
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
import structlog

from projections.run_state import RunState, apply
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
    OutputMarker,
    ReuseRef,
    RunCancelled,
    RunFinished,
    RunRecovered,
    RunStarted,
)
from schemas.workflow import NodeSpec, RetryPolicy
from service.domain.planner import POISON_LIMIT, Plan, plan
from service.domain.run_document import node_document
from service.domain.workflow_spec import WorkflowGraph
from service.engine.nodes.config_values import (
    SECRET_KEY,
    dynamic_values,
    redact,
    redact_output,
    resolve_config,
)
from service.engine.nodes.node_logs import NodeLogCollector, flush_periodically
from service.engine.nodes.registry import NodeContext, NodeFailure, NodeRegistry
from service.store.event_store import ConcurrencyError, EventStore
from service.store.run_queue import Claim, LeaseLost, RunQueue

log = structlog.get_logger(__name__)

SecretReader = Callable[[str, set[str]], Awaitable[dict[str, str]]]
"""(tenant, names) -> values: the run's tenant's secrets, decrypted (``SecretStore.reveal``)."""

DEFAULT_OUTPUT_CAP_BYTES = 5 * 1024 * 1024


@dataclass(frozen=True)
class ExecutionLimits:
    max_parallel_nodes: int = 16
    output_cap_bytes: int = DEFAULT_OUTPUT_CAP_BYTES


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


def output_event(node_id: str, attempt: int, output: Any, cap_bytes: int) -> NodeExecuteAfterData:
    """The recorded output: JSON-normalised, or a marker with size and SHA-256 when over the cap."""
    try:
        encoded = msgspec.json.encode(output)
    except (TypeError, msgspec.EncodeError) as exc:
        raise NodeFailure(
            "bad_output", f"node {node_id} returned a value that is not JSON: {exc}", retryable=False
        ) from exc
    digest = hashlib.sha256(encoded).hexdigest()
    if len(encoded) > cap_bytes:
        return NodeExecuteAfterData(
            node_id=node_id,
            attempt=attempt,
            output=None,
            output_bytes=len(encoded),
            output_sha256=digest,
            marker=OutputMarker(size_bytes=len(encoded), sha256=digest),
        )
    return NodeExecuteAfterData(
        node_id=node_id,
        attempt=attempt,
        output=msgspec.json.decode(encoded),
        output_bytes=len(encoded),
        output_sha256=digest,
    )


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
    ) -> None:
        self.store = store
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
        self._log = log.bind(run_id=str(self.run_id), workflow_id=claim.workflow_id)

    # -- the run loop ----------------------------------------------------------------------------

    async def execute(self) -> None:
        """Run to the end. Raises ``LeaseLost`` when another worker took the run over."""
        raw = await self.store.read_run(self.run_id)
        self._fold(raw)
        if self.state.ended:  # ended, but the row was left open (a crash right after the end)
            await self.queue.mark_ended(self.worker_id, self.run_id)
            return
        if self.state.fork is not None:
            self._reused = await self._reuse_events(self.state.fork)
        if self.state.started:
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
            await self._append([RunStarted(worker_id=self.worker_id)])
        try:
            await self._loop()
        finally:
            await self._stop_tasks()

    async def _loop(self) -> None:
        while True:
            self._changed.clear()
            self._reap()
            step = plan(self.graph, self.state, self._tasks.keys())
            if step.skip:
                await self._append([NodeSkipped(node_id=n, reason=r) for n, r in step.skip])
            for node_id in step.cancel:
                if node_id not in self._record_cancel:
                    self._record_cancel[node_id] = (
                        "run cancelled" if self.state.cancel_requested else "run stopped"
                    )
                    self._tasks[node_id].cancel()
            if step.finish is not None and not self._tasks:
                if await self._finish(step):
                    return
                continue
            for node_id in step.start:
                if len(self._tasks) >= self.limits.max_parallel_nodes:
                    break
                if node_id not in self._tasks:
                    self._tasks[node_id] = asyncio.create_task(
                        self._run_node(node_id), name=f"node:{node_id}"
                    )
            if step.skip:
                continue
            await self._wait_for_change()

    async def _wait_for_change(self) -> None:
        waiters: list[asyncio.Future[Any]] = list(self._tasks.values())
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait([*waiters, changed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()

    def _reap(self) -> None:
        for node_id, task in list(self._tasks.items()):
            if task.done():
                del self._tasks[node_id]
                if not task.cancelled() and (exc := task.exception()) is not None:
                    raise exc

    async def _finish(self, step: Plan) -> bool:
        """Append the terminal event and end the queue row together; False if the log moved on."""
        now = datetime.now(UTC)
        started = self.state.started_at or now
        duration = (now - started).total_seconds() * 1000
        event: Event
        if step.finish == "cancelled":
            event = RunCancelled(reason=step.error or "cancel requested")
        else:
            assert step.finish is not None
            event = RunFinished(status=step.finish, error=step.error, duration_ms=duration)
        async with self._lock:
            try:
                stored = await self.queue.end_with(
                    self.worker_id,
                    self.run_id,
                    [event],
                    self.next_seq,
                    tenant=self.claim.tenant,
                    workflow_id=self.claim.workflow_id,
                )
            except ConcurrencyError:
                await self._catch_up_locked()
                return False
            self._fold(stored)
        self._log.info("run_ended", status=self.state.status, error=self.state.error)
        return True

    async def _stop_tasks(self) -> None:
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
            recorded = output_event(node_id, 1, output, self.limits.output_cap_bytes)
            out[node_id] = [
                NodeExecuteBefore(
                    node_id=node_id, node_type=self.graph.nodes[node_id].type, reused_from=reuse
                ),
                NodeExecuteAfter(
                    node_id=node_id,
                    node_type=self.graph.nodes[node_id].type,
                    status="succeeded",
                    item_count=item_count(recorded.output if recorded.marker is None else [None]),
                    reused_from=reuse,
                ),
                msgspec.structs.replace(recorded, reused_from=reuse),
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
            async with self.node_slots:
                while True:
                    await self._append(
                        [NodeExecuteBefore(node_id=node_id, node_type=spec.type, attempt=attempt)]
                    )
                    logs = NodeLogCollector(node_id, attempt)
                    ctx = NodeContext(
                        run_id=str(self.run_id),
                        node_id=node_id,
                        node_type=spec.type,
                        attempt=attempt,
                        document=node_document(self.graph, self.state, node_id),
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
                            item_count=item_count(data.output if data.marker is None else [None]),
                        )
                        await self._append([*last_lines, after, data])  # lines just before their result
                        return
                    assert failure is not None
                    if last_lines:
                        await self._append(last_lines, only_if_running=node_id)
                    if not await self._record_failure(node_id, spec.type, policy, attempt, duration, failure):
                        return
                    attempt += 1
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

    async def _call_handler(
        self, node_id: str, spec: NodeSpec, attempt: int, ctx: NodeContext
    ) -> tuple[NodeExecuteAfterData | None, NodeFailure | None]:
        """One attempt of the node's handler, within its timeout: its recorded output, or why it failed.

        Meanwhile the lines it logs are recorded every second (``node_logs.flush_periodically``);
        the rest are the caller's, to record with the attempt's result."""
        failure: NodeFailure | None = None
        data: NodeExecuteAfterData | None = None
        stop_flushing = asyncio.Event()
        flusher = asyncio.ensure_future(
            flush_periodically(
                ctx.log_sink, lambda batch: self._append([batch], only_if_running=node_id), stop_flushing
            )
        )
        try:
            async with asyncio.timeout(spec.timeout_ms / 1000 if spec.timeout_ms else None):
                config, secrets = await self._config(node_id, ctx.document)
                if secrets:
                    ctx = msgspec.structs.replace(ctx, secrets=secrets)
                output = await self.registry.execute(spec.type, config, ctx)
            data = output_event(
                node_id, attempt, redact_output(output, ctx.secrets), self.limits.output_cap_bytes
            )
        except NodeFailure as exc:
            failure = exc
        except TimeoutError:
            failure = NodeFailure("timeout", f"node {node_id} did not finish within {spec.timeout_ms} ms")
        finally:
            stop_flushing.set()
            await flusher  # an append in flight lands before the caller's last lines
        if failure is not None and ctx.secrets:
            failure = NodeFailure(
                failure.kind, redact(failure.message, ctx.secrets), retryable=failure.retryable
            )
        return data, failure

    async def _record_failure(
        self,
        node_id: str,
        node_type: str,
        policy: RetryPolicy,
        attempt: int,
        duration: float,
        failure: NodeFailure,
    ) -> bool:
        """Record a failed attempt; True when a retry was scheduled (its delay has passed then)."""
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
            )
            await self._append([*failed, retry])
            self._log.info("node_retry_scheduled", node_id=node_id, attempt=attempt, delay_ms=delay)
            await asyncio.sleep(delay / 1000)
            return True
        await self._append(failed)
        return False

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

    async def _append_now(self, events: list[Event], only_if_running: str | None) -> list[RawEnvelope]:
        async with self._lock:
            while True:
                if only_if_running is not None and self.state.node(only_if_running).status != "running":
                    return []
                try:
                    stored = await self.store.append(
                        self.run_id,
                        events,
                        self.next_seq,
                        tenant=self.claim.tenant,
                        workflow_id=self.claim.workflow_id,
                    )
                except ConcurrencyError:
                    await self._catch_up_locked()
                    continue
                self._fold(stored)
                return stored

    async def refresh(self) -> None:
        """Read events others appended (e.g. a cancel request) and wake the run loop."""
        async with self._lock:
            await self._catch_up_locked()

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
