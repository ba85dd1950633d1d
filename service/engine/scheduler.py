"""The scheduler: starts the runs of due schedules, in every instance at once without doubles.

Each pass takes the due schedules with ``FOR UPDATE SKIP LOCKED`` (another instance skips them
meanwhile), starts a run per fire time through the run queue exactly as ``POST
/v1/workflows/{id}/runs`` does (the latest version, the schedule's inputs, actor
``schedule:<id>``) with the idempotency key ``schedule:<id>:<fire time>``, and advances
``next_fire_at`` in the same transaction. A pass that dies after starting a run but before its
commit is repeated by the next one, and the key returns the run already started: a fire time
starts at most one run, whatever crashes.

Between passes it sleeps until the earliest next fire time (at most ``max_sleep_s``), and wakes
at once on a NOTIFY from a new schedule. Database errors never end it: a failed connection
fails the pass, which is retried with backoff; a run the database refuses for itself is logged
(``schedule_fire_failed``) and that fire time skipped, so one bad schedule cannot stop the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from uuid import UUID

import structlog

from service.domain.schedules import InvalidSchedule, Timing, fire_key, parse_every, plan_firing
from service.infra.db import is_retryable
from service.infra.listen import listen
from service.retry import Backoff
from service.store.run_queue import RunQueue
from service.store.schedules import DueSchedule, ScheduleStore
from service.store.workflow_store import UnknownWorkflow, WorkflowStore
from service.waiting import wait_set

log = structlog.get_logger(__name__)

MAX_SLEEP_S = 5.0
"""The longest sleep between passes: a schedule added while a NOTIFY was lost fires this late at worst."""
MIN_SLEEP_S = 0.05
"""The shortest: a due schedule another instance holds (locked) is looked at again after this."""
BATCH = 50
UNUSABLE_RETRY = timedelta(hours=1)
"""A schedule whose timing no longer reads (its time zone left the system's database) is tried
again this much later."""


def timing_of(due: DueSchedule) -> Timing:
    s = due.schedule
    return Timing(s.cron, parse_every(s.every) if s.every is not None else None, s.timezone)


class Scheduler:
    def __init__(
        self,
        schedules: ScheduleStore,
        queue: RunQueue,
        workflows: WorkflowStore,
        *,
        max_sleep_s: float = MAX_SLEEP_S,
    ) -> None:
        self.schedules = schedules
        self.queue = queue
        self.workflows = workflows
        self.max_sleep_s = max_sleep_s
        self._wake = asyncio.Event()
        self.started = 0
        """Runs this scheduler started (not counting fire times another instance took)."""

    async def run(self) -> None:
        """Fire due schedules until cancelled."""
        listener = asyncio.create_task(
            listen(
                self.schedules.pool,
                {self.schedules.notify_channel: lambda *_: self._wake.set()},
                on_restored=self._wake.set,
            ),
            name="scheduler-listener",
        )
        backoff = Backoff(first_s=0.5, max_s=10.0)
        log.info("scheduler_started")
        try:
            while True:
                self._wake.clear()
                try:
                    handled = await self.fire_due()
                    until = await self.schedules.seconds_until_next() if handled < BATCH else 0.0
                except Exception as exc:  # an outage, a dropped session: never the end of the loop
                    delay = backoff.next_delay()
                    log.warning(
                        "scheduler_pass_failed",
                        error=f"{type(exc).__name__}: {exc}",
                        retry_in_s=round(delay, 3),
                    )
                    await asyncio.sleep(delay)
                    continue
                backoff.reset()
                if handled >= BATCH:
                    continue  # more are due
                sleep = self.max_sleep_s if until is None else min(max(until, MIN_SLEEP_S), self.max_sleep_s)
                await wait_set(self._wake, sleep)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener

    async def fire_due(self) -> int:
        """One pass: start the runs of the due schedules this instance could lock; returns how many
        schedules it handled."""
        async with self.schedules.pool.acquire() as conn, conn.transaction():
            now, due = await self.schedules.due_txn(conn, BATCH)
            for item in due:
                assert now is not None
                next_fire_at, last_fire_at, last_run_id = await self._fire(item, now)
                await self.schedules.advance_txn(
                    conn,
                    item.schedule.schedule_id,
                    next_fire_at=next_fire_at,
                    last_fire_at=last_fire_at,
                    last_run_id=last_run_id,
                )
        return len(due)

    async def _fire(self, due: DueSchedule, now: datetime) -> tuple[datetime, datetime | None, UUID | None]:
        s = due.schedule
        last_fire_at, last_run_id = s.last_fire_at, s.last_run_id
        try:
            timing = timing_of(due)
            plan = plan_firing(timing, s.next_fire_at, now, s.catchup)  # type: ignore[arg-type]
        except (InvalidSchedule, ValueError) as exc:  # checked when created: a zone database changed?
            log.error("schedule_unusable", schedule_id=str(s.schedule_id), error=str(exc))
            return now + UNUSABLE_RETRY, last_fire_at, last_run_id
        starts = plan.starts
        skipped = plan.skipped
        if s.overlap == "skip" and starts:
            # at most one run of the schedule at a time: the latest fire time, once the last run ended
            skipped += len(starts) - (0 if due.last_run_active else 1)
            starts = [] if due.last_run_active else starts[-1:]
        if skipped:
            log.info(
                "schedule_fire_times_skipped",
                schedule_id=str(s.schedule_id),
                skipped=skipped,
                catchup=s.catchup,
                overlap=s.overlap,
                previous_run_running=due.last_run_active,
            )
        for fire in starts:
            try:
                stored = await self.workflows.get(s.workflow_id, tenant=s.tenant)
            except UnknownWorkflow as exc:
                log.warning("schedule_workflow_missing", schedule_id=str(s.schedule_id), error=str(exc))
                break
            try:
                enqueued = await self.queue.enqueue(
                    actor=f"schedule:{s.schedule_id}",
                    tenant=s.tenant,
                    workflow_id=s.workflow_id,
                    workflow_version=stored.version,
                    inputs=s.inputs,
                    idempotency_key=fire_key(s.schedule_id, fire),
                    node_count=len(stored.spec.nodes),
                )
            except Exception as exc:
                if is_retryable(exc):
                    raise  # the connection failed: the whole pass is repeated
                # The database refused this run itself: one bad schedule must not stop the others.
                log.error(
                    "schedule_fire_failed",
                    schedule_id=str(s.schedule_id),
                    fire_at=fire.isoformat(),
                    error=f"{type(exc).__name__}: {exc}",
                )
                break
            if enqueued.created:
                self.started += 1
                log.info(
                    "schedule_fired",
                    schedule_id=str(s.schedule_id),
                    fire_at=fire.isoformat(),
                    run_id=str(enqueued.run_id),
                )
            last_fire_at, last_run_id = fire, enqueued.run_id
        return plan.next_fire_at, last_fire_at, last_run_id
