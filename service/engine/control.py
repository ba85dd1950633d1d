"""Commands on existing runs, shared by the HTTP API, the CLI and tests."""

from __future__ import annotations

from uuid import UUID

__all__ = ["NotWaitingForSignal", "RunAlreadyEnded", "UnknownRun", "request_cancel", "send_signal"]

from datetime import UTC, datetime
from typing import Any

import msgspec

from projections.run_state import RunState
from schemas.envelope import RawEnvelope
from schemas.events import Event, NodeExecuteAfter, RunCancelRequested, RunResumed
from service.domain.run_document import fold_raw
from service.engine.executor import item_count
from service.engine.nodes.registry import NodeFailure
from service.engine.outputs import record_output
from service.store.event_store import ConcurrencyError, UnknownRun
from service.store.run_queue import RunQueue

MAX_SIGNAL_OUTPUT_BYTES = 1024 * 1024
"""A signal's payload becomes a node output recorded in the event itself: at most the event
payload cap (``FLOWLEDGER_OUTPUT_CAP_BYTES``, 1 MiB by default)."""


class RunAlreadyEnded(RuntimeError):
    """The run has a terminal event; it can no longer change."""

    def __init__(self, run_id: UUID, status: str) -> None:
        super().__init__(f"run {run_id} already ended with status {status}")
        self.status = status


async def _live_run(queue: RunQueue, run_id: UUID, tenant: str | None) -> tuple[list[RawEnvelope], RunState]:
    """The run's events and state, for a command on it: ``UnknownRun`` (also for another
    tenant's run than ``tenant``) or ``RunAlreadyEnded`` when there is nothing to command."""
    events = await queue.store.read_run(run_id)
    if not events:
        raise UnknownRun(f"no run {run_id}")
    state = fold_raw(events)
    if tenant is not None and state.tenant != tenant:
        raise UnknownRun(f"no run {run_id}")
    if state.ended:
        raise RunAlreadyEnded(run_id, state.status)
    return events, state


async def request_cancel(
    queue: RunQueue, run_id: UUID, reason: str, requested_by: str = "api", *, tenant: str | None = None
) -> RunState:
    """Append ``run_cancel_requested`` (once) and wake the worker holding the run.

    Idempotent: a second request for a run already being cancelled changes
    nothing. Raises ``UnknownRun`` (also for a run of another tenant than ``tenant``)
    or ``RunAlreadyEnded``.
    """
    store = queue.store
    while True:
        events, state = await _live_run(queue, run_id, tenant)
        if state.cancel_requested:
            return state
        try:
            async with queue.pool.acquire() as conn, conn.transaction():
                await queue.lock_row(conn, run_id)  # before appending: see RunQueue.park
                await store.append_txn(
                    conn,
                    run_id,
                    [RunCancelRequested(reason=reason, requested_by=requested_by)],
                    len(events),
                    tenant=state.tenant,
                    workflow_id=state.workflow_id,
                )
                await queue.notify_cancel(conn, run_id)
                await queue.wake(conn, run_id)  # a parked run must wake to end
        except ConcurrencyError:
            continue  # the run moved on meanwhile (the worker appended): look again
        return state


class NotWaitingForSignal(RuntimeError):
    """The run has no node waiting for this signal (now): a 409 at the edge."""

    def __init__(self, run_id: UUID, name: str, waiting_for: list[str]) -> None:
        if waiting_for:
            now = ", ".join(repr(n) for n in waiting_for)
            detail = f"it waits for {now}"
        else:
            detail = "no node of it waits for a signal now"
        super().__init__(f"run {run_id} is not waiting for signal {name!r}: {detail}")
        self.waiting_for = waiting_for


def signal_events(
    state: RunState,
    name: str,
    payload: Any,
    actor: str,
    now: datetime,
    max_bytes: int = MAX_SIGNAL_OUTPUT_BYTES,
) -> list[Event]:
    """The events that deliver signal ``name`` to every node of ``state`` waiting for it: each
    is resumed and succeeds with ``payload`` as its output (pure; raises ``NotWaitingForSignal``)."""
    nodes = sorted(
        (n for n in state.nodes.values() if n.status == "waiting" and n.signal == name),
        key=lambda n: n.first_seq or 0,
    )
    if not nodes:
        waiting = sorted({n.signal for n in state.nodes.values() if n.status == "waiting" and n.signal})
        raise NotWaitingForSignal(UUID(str(state.run_id)), name, waiting)
    out: list[Event] = []
    for node in nodes:
        started = node.started_at or now
        try:
            data = record_output(node.node_id, node.attempts, payload, max_bytes, max_bytes).data
        except NodeFailure:
            size = len(msgspec.json.encode(payload))
            raise ValueError(
                f"the signal's payload is {size} bytes of JSON; it is recorded in its event, so at most "
                f"{max_bytes} bytes (the event payload cap, FLOWLEDGER_OUTPUT_CAP_BYTES)"
            ) from None
        out += [
            RunResumed(
                reason=f"signal {name}", actor=actor, node_id=node.node_id, cause="signal", signal=name
            ),
            NodeExecuteAfter(
                node_id=node.node_id,
                node_type=node.node_type,
                status="succeeded",
                attempt=node.attempts,
                duration_ms=max(0.0, (now - started).total_seconds() * 1000),
                item_count=item_count(data.output),
            ),
            data,
        ]
    return out


async def send_signal(
    queue: RunQueue,
    run_id: UUID,
    name: str,
    payload: Any,
    actor: str,
    *,
    tenant: str | None = None,
    max_bytes: int = MAX_SIGNAL_OUTPUT_BYTES,
) -> tuple[RunState, list[str]]:
    """Deliver signal ``name`` to the nodes of ``run_id`` waiting for it, and wake the run.

    Appended under the run's queue-row lock (so a run that is parking cannot miss it), with
    the optimistic seq check (so an executor appending meanwhile makes us look again).
    Returns the state before and the resumed node ids. Raises ``UnknownRun`` (also for
    another tenant's run), ``RunAlreadyEnded`` or ``NotWaitingForSignal``."""
    store = queue.store
    while True:
        events, state = await _live_run(queue, run_id, tenant)
        body = signal_events(state, name, payload, actor, datetime.now(UTC), max_bytes)
        try:
            async with queue.pool.acquire() as conn, conn.transaction():
                await queue.lock_row(conn, run_id)
                await store.append_txn(
                    conn, run_id, body, len(events), tenant=state.tenant, workflow_id=state.workflow_id
                )
                await queue.wake(conn, run_id)
        except ConcurrencyError:
            continue
        resumed = [e.node_id for e in body if isinstance(e, RunResumed) and e.node_id]
        return state, resumed
