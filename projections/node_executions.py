"""Node executions: one row per (run, node) — the run's lineage nodes and each node's history.

``apply`` is pure and idempotent per row (``last_seq``).
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from schemas.envelope import FoldEvent
from schemas.events import (
    NodeExecuteAfter,
    NodeExecuteAfterData,
    NodeExecuteBefore,
    NodeRetryScheduled,
    NodeSkipped,
    RunResumed,
    RunWaiting,
)

NAME = "node_executions"
TABLES = ("node_executions",)
NODE_EVENTS = (
    NodeExecuteBefore,
    NodeExecuteAfter,
    NodeExecuteAfterData,
    NodeRetryScheduled,
    NodeSkipped,
    RunWaiting,
    RunResumed,
)
TYPES = frozenset(
    {
        "run_waiting",
        "run_resumed",
        "node_execute_before",
        "node_execute_after",
        "node_execute_after_data",
        "node_retry_scheduled",
        "node_skipped",
    }
)
"""The event types this view reads."""


class NodeExecution(msgspec.Struct, frozen=True, gc=False):
    run_id: str
    node_id: str
    tenant: str
    workflow_id: str
    node_type: str = ""
    status: str = "pending"
    attempts: int = 0
    retries: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    output_bytes: int = 0
    item_count: int = 0
    branch_label: str | None = None
    error_kind: str | None = None
    error_message: str | None = None
    skip_reason: str | None = None
    signal: str | None = None
    """The signal a ``waiting`` node waits for."""
    child_run_id: str | None = None
    """The child run a ``workflow`` node started."""
    last_seq: int = -1


def key(event: FoldEvent) -> tuple[str, str] | None:
    """Rows are per node; run-level events (a ``run_waiting`` without a node) touch no row."""
    if isinstance(event.data, NODE_EVENTS) and event.data.node_id is not None:
        return (str(event.run_id), event.data.node_id)
    return None


def apply(view: NodeExecution | None, event: FoldEvent) -> NodeExecution | None:
    body = event.data
    if not isinstance(body, NODE_EVENTS) or body.node_id is None:
        return view
    if view is None:
        view = NodeExecution(
            run_id=str(event.run_id), node_id=body.node_id, tenant=event.tenant, workflow_id=event.workflow_id
        )
    seq = event.seq
    if seq <= view.last_seq:
        return view
    replace = msgspec.structs.replace  # one copy per event: this runs for every node event
    match body:
        case NodeExecuteBefore():
            return replace(
                view,
                last_seq=seq,
                node_type=body.node_type,
                status="running",
                attempts=max(view.attempts, body.attempt),
                started_at=view.started_at or event.recorded_at,
            )
        case NodeExecuteAfter():
            error = body.error
            return replace(
                view,
                last_seq=seq,
                node_type=body.node_type or view.node_type,
                status=body.status,
                duration_ms=body.duration_ms,
                item_count=body.item_count,
                finished_at=event.recorded_at,
                error_kind=error.kind if error else None,
                error_message=error.message if error else None,
            )
        case NodeExecuteAfterData():
            label = body.output.get("branch") if isinstance(body.output, dict) else None
            return replace(
                view,
                last_seq=seq,
                output_bytes=body.output_bytes,
                branch_label=label if isinstance(label, str) else None,
            )
        case NodeRetryScheduled():
            return replace(view, last_seq=seq, status="retry_wait", retries=view.retries + 1)
        case NodeSkipped():
            return replace(
                view, last_seq=seq, status="skipped", skip_reason=body.reason, finished_at=event.recorded_at
            )
        case RunWaiting():
            child = body.child_run_id or view.child_run_id
            return replace(view, last_seq=seq, status="waiting", signal=body.signal, child_run_id=child)
        case RunResumed():
            return replace(view, last_seq=seq, status="running", signal=None)
    return view
