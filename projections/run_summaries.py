"""Run summaries: one row per run (status, progress, node lists, times, error).

``apply`` is pure: no I/O, clock or randomness; an event at or below the row's
``last_seq`` changes nothing, so replays and restarts are harmless.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from schemas.envelope import EventEnvelope
from schemas.events import (
    NodeExecuteAfter,
    NodeExecuteBefore,
    NodeRetryScheduled,
    NodeSkipped,
    RunCancelled,
    RunFinished,
    RunQueued,
    RunRecovered,
    RunResumed,
    RunStarted,
    RunWaiting,
)

NAME = "run_summaries"
TABLES = ("run_summaries",)
TYPES = frozenset(
    {
        "run_queued",
        "run_started",
        "run_recovered",
        "run_resumed",
        "run_waiting",
        "node_execute_before",
        "node_execute_after",
        "node_retry_scheduled",
        "node_skipped",
        "run_finished",
        "run_cancelled",
    }
)
"""The event types this view reads; the others (e.g. node outputs) never touch it, not even ``last_seq``."""


class RunSummary(msgspec.Struct, frozen=True):
    run_id: str
    tenant: str
    workflow_id: str
    workflow_version: str = ""
    status: str = "queued"
    progress: int = 0
    node_count: int = 0
    current_nodes: tuple[str, ...] = ()
    executed_nodes: tuple[str, ...] = ()
    failed_nodes: tuple[str, ...] = ()
    skipped_nodes: tuple[str, ...] = ()
    retries: int = 0
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    error: str | None = None
    parent_run_id: str | None = None
    last_seq: int = -1


def _without(items: tuple[str, ...], item: str) -> tuple[str, ...]:
    return tuple(i for i in items if i != item)


def _with(items: tuple[str, ...], item: str) -> tuple[str, ...]:
    return items if item in items else (*items, item)


_PROGRESS_INPUTS = frozenset({"status", "node_count", "executed_nodes", "failed_nodes", "skipped_nodes"})


def _progress_of(status: str, node_count: int, executed: int, failed: int, skipped: int) -> int:
    if status == "succeeded":
        return 100
    if not node_count:
        return 0
    return min(100, (100 * (executed + failed + skipped)) // node_count)


def key(event: EventEnvelope) -> str:
    return str(event.run_id)


def apply(view: RunSummary | None, event: EventEnvelope) -> RunSummary:
    """The summary right after ``event`` (a new row for a run's first event)."""
    if view is None:
        view = RunSummary(run_id=str(event.run_id), tenant=event.tenant, workflow_id=event.workflow_id)
    if event.seq <= view.last_seq or event.type not in TYPES:
        return view
    body = event.data
    changes: dict[str, object] = {"last_seq": event.seq}
    match body:
        case RunQueued():
            changes.update(
                workflow_version=body.workflow_version,
                node_count=body.node_count,
                parent_run_id=body.parent_run_id,
                queued_at=event.recorded_at,
            )
        case RunStarted():
            changes.update(status="running", started_at=event.recorded_at)
        case RunRecovered() | RunResumed():
            changes.update(status="running")
        case RunWaiting():
            changes.update(status="waiting")
        case NodeExecuteBefore():
            changes.update(
                current_nodes=_with(view.current_nodes, body.node_id),
                failed_nodes=_without(view.failed_nodes, body.node_id),
            )
        case NodeExecuteAfter():
            current = _without(view.current_nodes, body.node_id)
            if body.status == "succeeded":
                changes.update(current_nodes=current, executed_nodes=_with(view.executed_nodes, body.node_id))
            else:
                changes.update(current_nodes=current, failed_nodes=_with(view.failed_nodes, body.node_id))
        case NodeRetryScheduled():
            changes.update(failed_nodes=_without(view.failed_nodes, body.node_id), retries=view.retries + 1)
        case NodeSkipped():
            changes.update(
                current_nodes=_without(view.current_nodes, body.node_id),
                skipped_nodes=_with(view.skipped_nodes, body.node_id),
            )
        case RunFinished():
            changes.update(
                status=body.status, error=body.error, finished_at=event.recorded_at, current_nodes=()
            )
        case RunCancelled():
            changes.update(
                status="cancelled", error=body.reason, finished_at=event.recorded_at, current_nodes=()
            )
    if isinstance(body, RunFinished | RunCancelled) and view.started_at is not None:
        changes["duration_ms"] = (event.recorded_at - view.started_at).total_seconds() * 1000
    if _PROGRESS_INPUTS.intersection(changes):
        changes["progress"] = _progress_of(
            str(changes.get("status", view.status)),
            int(changes.get("node_count", view.node_count)),  # type: ignore[call-overload]
            len(changes.get("executed_nodes", view.executed_nodes)),  # type: ignore[arg-type]
            len(changes.get("failed_nodes", view.failed_nodes)),  # type: ignore[arg-type]
            len(changes.get("skipped_nodes", view.skipped_nodes)),  # type: ignore[arg-type]
        )
    return msgspec.structs.replace(view, **changes)  # one copy per event: this runs for every event
