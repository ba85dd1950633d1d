"""Commands on existing runs, shared by the HTTP API, the CLI and tests."""

from __future__ import annotations

from uuid import UUID

__all__ = ["RunAlreadyEnded", "UnknownRun", "request_cancel"]

from projections.run_state import RunState
from schemas.events import RunCancelRequested
from service.domain.run_document import fold_raw
from service.store.event_store import ConcurrencyError, UnknownRun
from service.store.run_queue import RunQueue


class RunAlreadyEnded(RuntimeError):
    """The run has a terminal event; it can no longer change."""

    def __init__(self, run_id: UUID, status: str) -> None:
        super().__init__(f"run {run_id} already ended with status {status}")
        self.status = status


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
        events = await store.read_run(run_id)
        if not events:
            raise UnknownRun(f"no run {run_id}")
        state = fold_raw(events)
        if tenant is not None and state.tenant != tenant:
            raise UnknownRun(f"no run {run_id}")
        if state.ended:
            raise RunAlreadyEnded(run_id, state.status)
        if state.cancel_requested:
            return state
        try:
            async with queue.pool.acquire() as conn, conn.transaction():
                await store.append_txn(
                    conn,
                    run_id,
                    [RunCancelRequested(reason=reason, requested_by=requested_by)],
                    len(events),
                    tenant=state.tenant,
                    workflow_id=state.workflow_id,
                )
                await queue.notify_cancel(conn, run_id)
        except ConcurrencyError:
            continue  # the run moved on meanwhile (the worker appended): look again
        return state
