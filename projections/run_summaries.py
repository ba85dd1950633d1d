"""Run summaries: one row per run (status, progress, node lists, times, error).

``apply`` is pure: no I/O, clock or randomness; an event at or below the row's
``last_seq`` changes nothing, so replays and restarts are harmless.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from schemas.envelope import FoldEvent
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


class RunSummary(msgspec.Struct, frozen=True, gc=False):
    run_id: str
    tenant: str
    workflow_id: str
    workflow_version: str = ""
    status: str = "queued"
    progress: int = 0
    node_count: int = 0
    current_nodes: tuple[str, ...] = ()
    waiting_nodes: tuple[str, ...] = ()
    """Those of ``current_nodes`` that wait (a signal, a timer, a child run); the run is
    ``waiting`` while any does."""
    executed_nodes: tuple[str, ...] = ()
    failed_nodes: tuple[str, ...] = ()
    skipped_nodes: tuple[str, ...] = ()
    halted_nodes: tuple[str, ...] = ()
    """Those of ``skipped_nodes`` skipped because the run halted (stop on failure, cancel)."""
    retries: int = 0
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    error: str | None = None
    parent_run_id: str | None = None
    parent_node_id: str | None = None
    """For a child run: the parent's ``workflow`` node that started it (a fork has none)."""
    last_seq: int = -1


def _without(items: tuple[str, ...], item: str) -> tuple[str, ...]:
    return tuple(i for i in items if i != item) if item in items else items


def _with(items: tuple[str, ...], item: str) -> tuple[str, ...]:
    return items if item in items else (*items, item)


def _progress_of(view: RunSummary) -> int:
    """The share (0-100) of the workflow's nodes whose fate the run has settled: executed
    (succeeded or failed) or skipped by the workflow's own logic (a branch not taken, an
    upstream failure under ``on_failure: continue``). Nodes skipped because the run halted
    (``halted_nodes``: a stop on failure, a cancel) and nodes never reached do not count,
    so a run that failed or was cancelled half-way stays at its real share; a succeeded run
    is at 100."""
    if view.status == "succeeded":
        return 100
    if not view.node_count:
        return 0
    settled = len(view.executed_nodes) + len(view.failed_nodes) + len(view.skipped_nodes)
    done = settled - len(view.halted_nodes)
    return min(100, (100 * done) // view.node_count)


def _ended(view: RunSummary, seq: int, at: datetime, status: str, error: str | None) -> RunSummary:
    duration = (at - view.started_at).total_seconds() * 1000 if view.started_at else view.duration_ms
    return msgspec.structs.replace(
        view, last_seq=seq, status=status, error=error, finished_at=at, current_nodes=(), duration_ms=duration
    )


def key(event: FoldEvent) -> str:
    return str(event.run_id)


def apply(view: RunSummary | None, event: FoldEvent) -> RunSummary:
    """The summary right after ``event`` (a new row for a run's first event)."""
    if view is None:
        view = RunSummary(run_id=str(event.run_id), tenant=event.tenant, workflow_id=event.workflow_id)
    seq = event.seq
    if seq <= view.last_seq or event.type not in TYPES:
        return view
    body = event.data
    replace = msgspec.structs.replace  # one copy per event: this runs for every event
    match body:
        case NodeExecuteBefore():
            new = replace(
                view,
                last_seq=seq,
                current_nodes=_with(view.current_nodes, body.node_id),
                failed_nodes=_without(view.failed_nodes, body.node_id),
            )
        case NodeExecuteAfter():
            current = _without(view.current_nodes, body.node_id)
            if body.status == "succeeded":
                executed = _with(view.executed_nodes, body.node_id)
                new = replace(view, last_seq=seq, current_nodes=current, executed_nodes=executed)
            else:
                failed = _with(view.failed_nodes, body.node_id)
                new = replace(view, last_seq=seq, current_nodes=current, failed_nodes=failed)
        case NodeSkipped():
            new = replace(
                view,
                last_seq=seq,
                current_nodes=_without(view.current_nodes, body.node_id),
                skipped_nodes=_with(view.skipped_nodes, body.node_id),
                halted_nodes=_with(view.halted_nodes, body.node_id) if body.halted else view.halted_nodes,
            )
        case NodeRetryScheduled():
            failed = _without(view.failed_nodes, body.node_id)
            new = replace(view, last_seq=seq, failed_nodes=failed, retries=view.retries + 1)
        case RunQueued():
            new = replace(
                view,
                last_seq=seq,
                workflow_version=body.workflow_version,
                node_count=body.node_count,
                parent_run_id=body.parent_run_id,
                parent_node_id=body.parent_node_id,
                queued_at=event.recorded_at,
            )
        case RunStarted():
            new = replace(view, last_seq=seq, status="running", started_at=event.recorded_at)
        case RunWaiting(node_id=str(node_id)):
            waiting = _with(view.waiting_nodes, node_id)
            new = replace(view, last_seq=seq, status="waiting", waiting_nodes=waiting)
        case RunResumed(node_id=str(node_id)):
            waiting = _without(view.waiting_nodes, node_id)
            new = replace(
                view, last_seq=seq, status="waiting" if waiting else "running", waiting_nodes=waiting
            )
        case RunRecovered() | RunResumed():
            new = replace(view, last_seq=seq, status="waiting" if view.waiting_nodes else "running")
        case RunWaiting():
            new = replace(view, last_seq=seq, status="waiting")
        case RunFinished():
            new = _ended(view, seq, event.recorded_at, body.status, body.error)
        case RunCancelled():
            new = _ended(view, seq, event.recorded_at, "cancelled", body.reason)
        case _:
            return view
    # Every change above can move the progress; `new` is our own fresh copy until returned.
    msgspec.structs.force_setattr(new, "progress", _progress_of(new))
    return new
