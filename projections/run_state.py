"""The one pure fold of a run's events into its state.

Used by the engine (live execution and crash recovery), time travel, forks and
the audit legality check. ``apply`` has no I/O, clock or randomness; an event
whose seq was already applied changes nothing, so folding is idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

import msgspec

from schemas.envelope import EventEnvelope
from schemas.events import (
    WORKER_CRASHED,
    ForkOrigin,
    NodeError,
    NodeExecuteAfter,
    NodeExecuteAfterData,
    NodeExecuteBefore,
    NodeLog,
    NodeRetryScheduled,
    NodeSkipped,
    OutputMarker,
    ReuseRef,
    RunCancelled,
    RunCancelRequested,
    RunFinished,
    RunQueued,
    RunRecovered,
    RunResumed,
    RunStarted,
    RunWaiting,
)

NodeStatus = Literal["pending", "running", "retry_wait", "waiting", "succeeded", "failed", "skipped"]
RunStatus = Literal["queued", "running", "waiting", "succeeded", "failed", "cancelled"]
TERMINAL_NODE = frozenset({"succeeded", "failed", "skipped"})
TERMINAL_RUN = frozenset({"succeeded", "failed", "cancelled"})


class NodeState(msgspec.Struct, frozen=True, gc=False):
    """A node as its events left it. ``failures`` counts failed attempts (retry budget)."""

    node_id: str
    node_type: str = ""
    status: NodeStatus = "pending"
    attempts: int = 0
    failures: int = 0
    output: Any = None
    output_bytes: int = 0
    output_sha256: str = ""
    marker: OutputMarker | None = None
    error: NodeError | None = None
    duration_ms: float = 0.0
    item_count: int = 0
    skip_reason: str | None = None
    retry_delay_ms: int | None = None
    retry_due_at: datetime | None = None
    """When a ``retry_wait`` node's next attempt may start (None: at once, or not recorded)."""
    reused_from: ReuseRef | None = None
    first_seq: int | None = None
    last_seq: int | None = None
    started_at: datetime | None = None
    """When the node's latest attempt began (its ``node_execute_before``)."""
    signal: str | None = None
    """The signal a ``waiting`` node waits for."""
    wake_at: datetime | None = None
    """When a ``waiting`` node stops waiting on its own (a delay's end, a wait's timeout)."""
    child_run_id: str | None = None
    """The child run a ``workflow`` node started (it waits while the child runs)."""


class RunState(msgspec.Struct, frozen=True, gc=False):
    """A run as its events left it, right after event ``seq`` (-1: no event yet)."""

    run_id: str | None = None
    tenant: str = ""
    workflow_id: str = ""
    workflow_version: str = ""
    inputs: dict[str, Any] = {}
    parent_run_id: str | None = None
    parent_node_id: str | None = None
    depth: int = 0
    idempotency_key: str | None = None
    fork: ForkOrigin | None = None
    status: RunStatus = "queued"
    nodes: dict[str, NodeState] = {}
    seq: int = -1
    started: bool = False
    cancel_requested: bool = False
    cancel_reason: str | None = None
    recoveries: int = 0
    crashed_workers: int = 0
    """Attempts that failed with ``worker_crashed``: the node's code took its worker process down."""
    crashed_executors: int = 0
    """Recoveries after an expired lease (``run_recovered`` with ``lease_expired``): the process
    or executor running the run died. A graceful hand-back does not count."""
    error: str | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_RUN

    @property
    def crashes(self) -> int:
        """How many times executing this run took down a worker process or its executor."""
        return self.crashed_workers + self.crashed_executors

    def node(self, node_id: str) -> NodeState:
        return self.nodes.get(node_id) or NodeState(node_id)


class IllegalEvent(ValueError):
    """An event that cannot follow the history before it (e.g. a node finishing before it started)."""

    def __init__(self, seq: int, message: str) -> None:
        super().__init__(f"seq {seq}: {message}")
        self.seq = seq


def _with_node(state: RunState, node: NodeState, **changes: Any) -> dict[str, NodeState]:
    nodes = dict(state.nodes)
    nodes[node.node_id] = msgspec.structs.replace(node, **changes)
    return nodes


def apply(state: RunState, event: EventEnvelope, *, strict: bool = False) -> RunState:
    """The state right after ``event``. Events at or below ``state.seq`` are ignored.

    ``node_log`` changes nothing but ``seq``: log lines are read from the log, not folded.

    With ``strict`` an event that is not a legal continuation raises ``IllegalEvent``
    (the audit uses this); otherwise the fold is lenient and keeps going.
    """
    if event.seq <= state.seq:
        return state
    if strict:
        _check_legal(state, event)
    base: dict[str, Any] = {"seq": event.seq}
    if state.run_id is None:
        base.update(run_id=str(event.run_id), tenant=event.tenant, workflow_id=event.workflow_id)
    nodes = _apply_to_node(state, event.data, event.seq, event.recorded_at)
    if nodes is not None:
        base["nodes"] = nodes
        body = event.data
        if isinstance(body, RunWaiting | RunResumed | NodeSkipped) and state.status in ("running", "waiting"):
            waiting = any(n.status == "waiting" for n in nodes.values())
            base["status"] = "waiting" if waiting else "running"
        if (
            isinstance(body, NodeExecuteAfter)
            and body.error is not None
            and body.error.kind == WORKER_CRASHED
        ):
            base["crashed_workers"] = state.crashed_workers + 1
    else:
        base.update(_run_changes(state, event))
    return msgspec.structs.replace(state, **base)


def _run_changes(state: RunState, event: EventEnvelope) -> dict[str, Any]:
    """The run fields a run-level event changes (none for a node event)."""
    body = event.data
    match body:
        case RunQueued():
            return {
                "workflow_version": body.workflow_version,
                "inputs": body.inputs,
                "parent_run_id": body.parent_run_id,
                "parent_node_id": body.parent_node_id,
                "depth": body.depth,
                "idempotency_key": body.idempotency_key,
                "fork": body.fork,
                "queued_at": event.recorded_at,
            }
        case RunStarted():
            return {"status": "running", "started": True, "started_at": event.recorded_at}
        case RunRecovered():
            return {
                "status": "waiting"
                if any(n.status == "waiting" for n in state.nodes.values())
                else "running",
                "started": True,
                "recoveries": state.recoveries + 1,
                "crashed_executors": state.crashed_executors + (1 if body.lease_expired else 0),
            }
        case RunWaiting():
            return {"status": "waiting"}
        case RunResumed():
            return {"status": "running"}
        case RunCancelRequested():
            return {"cancel_requested": True, "cancel_reason": body.reason or "cancel requested"}
        case RunCancelled():
            return {
                "status": "cancelled",
                "finished_at": event.recorded_at,
                "error": body.reason or state.cancel_reason,
            }
        case RunFinished():
            return {"status": body.status, "finished_at": event.recorded_at, "error": body.error}
    return {}


def _apply_to_node(
    state: RunState, body: Any, seq: int, recorded_at: datetime
) -> dict[str, NodeState] | None:
    """The run's nodes after a node event ``body`` at ``seq``; None when it is not a node event."""
    match body:
        case NodeExecuteBefore():
            node = state.node(body.node_id)
            return _with_node(
                state,
                node,
                node_type=body.node_type,
                status="running",
                attempts=max(node.attempts, body.attempt),
                first_seq=node.first_seq if node.first_seq is not None else seq,
                last_seq=seq,
                retry_delay_ms=None,
                retry_due_at=None,
                started_at=recorded_at,
            )
        case NodeExecuteAfter():
            node = state.node(body.node_id)
            failed = body.status == "failed"
            return _with_node(
                state,
                node,
                node_type=body.node_type or node.node_type,
                status="failed" if failed else "succeeded",
                failures=node.failures + (1 if failed else 0),
                error=body.error,
                duration_ms=body.duration_ms,
                item_count=body.item_count,
                last_seq=seq,
            )
        case NodeExecuteAfterData():
            node = state.node(body.node_id)
            return _with_node(
                state,
                node,
                output=body.output,
                output_bytes=body.output_bytes,
                output_sha256=body.output_sha256,
                marker=body.marker,
                reused_from=body.reused_from,
                last_seq=seq,
            )
        case NodeRetryScheduled():
            node = state.node(body.node_id)
            return _with_node(
                state,
                node,
                status="retry_wait",
                retry_delay_ms=body.delay_ms,
                retry_due_at=body.due_at,
                last_seq=seq,
            )
        case RunWaiting(node_id=str(node_id)):
            node = state.node(node_id)
            return _with_node(
                state,
                node,
                status="waiting",
                signal=body.signal,
                wake_at=body.wake_at,
                child_run_id=body.child_run_id or node.child_run_id,
                last_seq=seq,
            )
        case RunResumed(node_id=str(node_id)):
            node = state.node(node_id)
            return _with_node(state, node, status="running", signal=None, wake_at=None, last_seq=seq)
        case NodeSkipped():
            node = state.node(body.node_id)
            return _with_node(state, node, status="skipped", skip_reason=body.reason, last_seq=seq)
    return None


def fold(events: Iterable[EventEnvelope], state: RunState | None = None, *, strict: bool = False) -> RunState:
    """Fold events (in seq order) onto ``state`` (a fresh run by default)."""
    current = state or RunState()
    for event in events:
        current = apply(current, event, strict=strict)
    return current


def _check_legal(state: RunState, event: EventEnvelope) -> None:
    body = event.data
    seq = event.seq
    if seq != state.seq + 1:
        raise IllegalEvent(seq, f"expected seq {state.seq + 1}")
    if state.ended:
        raise IllegalEvent(seq, f"{event.type} after the run ended ({state.status})")
    if seq == 0 and not isinstance(body, RunQueued):
        raise IllegalEvent(seq, f"a run must begin with run_queued, not {event.type}")
    if seq > 0 and isinstance(body, RunQueued):
        raise IllegalEvent(seq, "run_queued may only be the first event")
    node_id = getattr(body, "node_id", None)
    if node_id is None:
        return
    node = state.node(node_id)
    match body:
        case RunWaiting():
            if node.status != "running":
                raise IllegalEvent(seq, f"node {node_id} waits but was not running ({node.status})")
        case RunResumed():
            if node.status != "waiting":
                raise IllegalEvent(seq, f"node {node_id} resumed but was not waiting ({node.status})")
        case NodeExecuteBefore():
            if node.status not in ("pending", "retry_wait", "running"):
                raise IllegalEvent(seq, f"node {node_id} started again after it ended ({node.status})")
        case NodeExecuteAfter():
            if node.status != "running":
                raise IllegalEvent(seq, f"node {node_id} finished but was not running ({node.status})")
        case NodeExecuteAfterData():
            if node.status not in ("succeeded", "failed") or node.last_seq != seq - 1:
                raise IllegalEvent(
                    seq, f"node {node_id} output does not directly follow its node_execute_after"
                )
        case NodeRetryScheduled():
            if node.status != "failed":
                raise IllegalEvent(
                    seq, f"retry of node {node_id} scheduled but its last attempt did not fail"
                )
        case NodeLog():
            # Lines are recorded while the attempt runs and, at its end, in the same append
            # just before its node_execute_after: never for an attempt that is not running.
            if node.status != "running" or node.attempts != body.attempt:
                raise IllegalEvent(
                    seq,
                    f"log lines of node {node_id} attempt {body.attempt} but that attempt is not running "
                    f"({node.status}, attempt {node.attempts})",
                )
        case NodeSkipped():
            # "running" here means an attempt interrupted by a crash that recovery chose not to re-run.
            if node.status not in ("pending", "retry_wait", "running"):
                raise IllegalEvent(seq, f"node {node_id} skipped after it {node.status}")
