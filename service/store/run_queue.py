"""The run queue in ``flowledger.run_queue``: every SQL statement of enqueueing, claiming and leases.

Guarantees:
- a run's queue row and its ``run_queued`` event commit in one transaction;
- a run is held by at most one worker at a time: claims take unleased or
  expired rows with ``FOR UPDATE SKIP LOCKED`` and set a lease the holder renews;
- a run's terminal event is appended (group-committed with other runs' events)
  before its row is marked ended; a worker that crashes in between leaves a row
  that the next claimer closes as soon as it sees the terminal event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import uuid_utils.compat as uuid_compat

from schemas.envelope import RawEnvelope
from schemas.events import Event, ForkOrigin, RunQueued
from schemas.names import DB_SCHEMA
from service.infra.db import Conn
from service.store.event_store import EventStore


class LeaseLost(RuntimeError):
    """This worker no longer holds the run (its lease expired and another worker may have it)."""


class _AlreadyQueued(Exception):
    def __init__(self, run_id: UUID) -> None:
        super().__init__(f"run {run_id} has this idempotency key")
        self.run_id = run_id


@dataclass(frozen=True)
class Claim:
    run_id: UUID
    tenant: str
    workflow_id: str
    workflow_version: str
    claims: int
    lease_expired: bool = False
    """The run was taken from a holder whose lease expired (it died without giving the run
    back), not new or handed back; recorded in ``run_recovered`` (it counts toward ``poison_run``)."""
    woke: bool = False
    """The run was parked (every unfinished node waiting) and its wake time has passed."""


@dataclass(frozen=True)
class Enqueued:
    run_id: UUID
    created: bool
    """False when an earlier run had the same idempotency key (that run is returned)."""


class RunQueue:
    """Enqueue, claim, renew, end. ``notify_channel`` wakes idle workers on new runs and cancels."""

    def __init__(self, store: EventStore, *, schema: str = DB_SCHEMA) -> None:
        self.store = store
        self.pool = store.pool
        self.notify_channel = f"{schema}_runs"
        s = f'"{schema}"'
        self._sql_enqueue = (
            f"INSERT INTO {s}.run_queue (run_id, tenant, workflow_id, workflow_version, idempotency_key) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING run_id"
        )
        self._sql_by_key = f"SELECT run_id FROM {s}.run_queue WHERE tenant = $1 AND workflow_id = $2 AND idempotency_key = $3"
        self._sql_by_key_any = (
            f"SELECT run_id FROM {s}.run_queue WHERE tenant = $1 AND idempotency_key = $2 LIMIT 1"
        )
        # A row with a lease that is not NULL but past was held by a worker that stopped renewing
        # it without releasing it (release and new rows have a NULL lease). A parked row
        # ('waiting') is taken once its wake_at has passed; it has no lease and no owner.
        self._sql_claim = f"""
            WITH ready AS (
                   SELECT run_id, queued_at, lease_expires_at IS NOT NULL AS lease_expired,
                          parked AS woke FROM {s}.run_queue
                    WHERE status IN ('queued', 'running')
                      AND (lease_expires_at IS NULL OR lease_expires_at < clock_timestamp())
                    ORDER BY queued_at
                    LIMIT $3
                    FOR UPDATE SKIP LOCKED),
                 due AS (
                   SELECT run_id, queued_at, false AS lease_expired, true AS woke FROM {s}.run_queue
                    WHERE status = 'waiting' AND wake_at <= clock_timestamp()
                    ORDER BY wake_at
                    LIMIT $3
                    FOR UPDATE SKIP LOCKED),
                 picked AS (
                   SELECT * FROM (SELECT * FROM ready UNION ALL SELECT * FROM due) both_kinds
                    ORDER BY queued_at LIMIT $3)
            UPDATE {s}.run_queue q
               SET lease_owner = $1, lease_expires_at = clock_timestamp() + make_interval(secs => $2),
                   status = 'running', claims = q.claims + 1, wake_at = NULL, parked = false,
                   poked = false
              FROM picked
             WHERE q.run_id = picked.run_id
            RETURNING q.run_id, q.tenant, q.workflow_id, q.workflow_version, q.claims,
                      picked.lease_expired, picked.woke"""
        # Parking checks, under the row's lock, that nothing was appended since the parker last
        # read the log: a signal (or cancel) locks the row before it appends (``lock_row``), so
        # either the parker sees its events and stays, or the signal sees the parked row and
        # wakes it. Either way no signal is left behind on a parked run.
        self._sql_lock = f"SELECT status FROM {s}.run_queue WHERE run_id = $1 FOR UPDATE"
        self._sql_poked = (
            f"UPDATE {s}.run_queue SET poked = false WHERE run_id = $1 AND poked RETURNING run_id"
        )
        self._sql_head = f"SELECT coalesce(max(seq), -1) FROM {s}.events WHERE run_id = $1"
        self._sql_park = (
            f"UPDATE {s}.run_queue SET status = 'waiting', wake_at = $3, lease_expires_at = NULL, "
            "lease_owner = NULL, parked = true WHERE run_id = $1 AND lease_owner = $2 AND status = 'running'"
        )
        self._sql_wake = (
            f"UPDATE {s}.run_queue SET status = 'queued', wake_at = NULL "
            "WHERE run_id = $1 AND status = 'waiting'"
        )
        self._sql_poke = f"UPDATE {s}.run_queue SET poked = true WHERE run_id = $1 AND status <> 'ended'"
        self._sql_waiting_count = f"SELECT count(*) FROM {s}.run_queue WHERE status = 'waiting'"
        # Ended rows count as held (their runs are just finishing) but keep no lease.
        self._sql_renew = (
            f"UPDATE {s}.run_queue SET lease_expires_at = CASE WHEN status = 'ended' THEN NULL "
            "ELSE clock_timestamp() + make_interval(secs => $2) END "
            "WHERE lease_owner = $1 AND run_id = ANY($3::uuid[]) RETURNING run_id"
        )
        self._sql_end = (
            f"UPDATE {s}.run_queue SET status = 'ended', ended_at = clock_timestamp(), lease_expires_at = NULL "
            "WHERE run_id = $1 AND lease_owner = $2 AND status <> 'ended'"
        )
        self._sql_release = (
            f"UPDATE {s}.run_queue SET lease_expires_at = NULL WHERE lease_owner = $1 AND run_id = ANY($2::uuid[]) "
            "AND status <> 'ended'"
        )
        self._sql_release_all_but = (
            f"UPDATE {s}.run_queue SET lease_expires_at = NULL WHERE lease_owner = $1 "
            "AND NOT (run_id = ANY($2::uuid[])) AND status <> 'ended' AND lease_expires_at IS NOT NULL"
        )
        self._sql_depth = (
            f"SELECT count(*) FILTER (WHERE status = 'queued'), count(*) FILTER (WHERE status = 'running'), "
            f"count(*) FILTER (WHERE status = 'waiting') FROM {s}.run_queue"
        )

    async def enqueue(
        self,
        *,
        tenant: str,
        workflow_id: str,
        workflow_version: str,
        inputs: dict[str, Any],
        idempotency_key: str | None = None,
        parent_run_id: str | None = None,
        parent_node_id: str | None = None,
        depth: int = 0,
        run_id: UUID | None = None,
        node_count: int = 0,
        fork: ForkOrigin | None = None,
        actor: str = "",
    ) -> Enqueued:
        """Queue a run: its row and its ``run_queued`` event commit together.

        A repeated ``idempotency_key`` (per tenant and workflow) returns the first run.
        """
        run_id = run_id or uuid_compat.uuid7()
        event = RunQueued(
            workflow_version=workflow_version,
            inputs=inputs,
            idempotency_key=idempotency_key,
            parent_run_id=parent_run_id,
            parent_node_id=parent_node_id,
            depth=depth,
            node_count=node_count,
            fork=fork,
            actor=actor,
        )

        async def queue_row_txn(conn: Conn) -> None:
            inserted = await conn.fetchval(
                self._sql_enqueue, run_id, tenant, workflow_id, workflow_version, idempotency_key
            )
            if inserted is None:
                existing = await conn.fetchval(self._sql_by_key, tenant, workflow_id, idempotency_key)
                if existing is None:  # a run_id collision, not a key: never expected with uuid7
                    raise RuntimeError(f"run {run_id} already exists")
                raise _AlreadyQueued(existing)
            await conn.execute("SELECT pg_notify($1, $2)", self.notify_channel, f"queued:{run_id}")

        # The row and run_queued commit together, in the group commit with other appends.
        try:
            await self.store.append(
                run_id, [event], 0, tenant=tenant, workflow_id=workflow_id, with_txn=queue_row_txn
            )
        except _AlreadyQueued as hit:
            return Enqueued(hit.run_id, created=False)
        return Enqueued(run_id, created=True)

    async def run_by_key(self, tenant: str, idempotency_key: str) -> UUID | None:
        """The run of ``tenant`` with this idempotency key, in any workflow (None: none)."""
        async with self.pool.acquire() as conn:
            found: UUID | None = await conn.fetchval(self._sql_by_key_any, tenant, idempotency_key)
        return found

    async def claim(self, worker_id: str, limit: int, lease_s: float) -> list[Claim]:
        """Take up to ``limit`` runs that nobody holds (new, or whose lease expired)."""
        if limit <= 0:
            return []
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self._sql_claim, worker_id, lease_s, limit)
        return [
            Claim(
                r["run_id"],
                r["tenant"],
                r["workflow_id"],
                r["workflow_version"],
                r["claims"],
                lease_expired=r["lease_expired"],
                woke=r["woke"],
            )
            for r in rows
        ]

    async def renew(self, worker_id: str, run_ids: list[UUID], lease_s: float) -> set[UUID]:
        """Extend the leases this worker still holds; returns those it holds."""
        if not run_ids:
            return set()
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self._sql_renew, worker_id, lease_s, run_ids)
        return {r["run_id"] for r in rows}

    async def release(self, worker_id: str, run_ids: list[UUID]) -> None:
        """Give runs back at once (graceful shutdown) so another worker need not wait for the lease."""
        if run_ids:
            async with self.pool.acquire() as conn:
                await conn.execute(self._sql_release, worker_id, run_ids)

    async def release_all_but(self, worker_id: str, keep: list[UUID]) -> int:
        """Release every run this worker holds except ``keep``; returns how many.

        After a claim whose answer was lost (the session died after the UPDATE
        committed), runs are leased to this worker that it never started; this hands
        them back instead of leaving them until their leases expire.
        """
        async with self.pool.acquire() as conn:
            status = await conn.execute(self._sql_release_all_but, worker_id, keep)
        return int(status.split()[-1])

    async def end_with(
        self,
        worker_id: str,
        run_id: UUID,
        events: list[Event],
        expected_seq: int,
        *,
        tenant: str,
        workflow_id: str,
        wake: UUID | None = None,
    ) -> list[RawEnvelope]:
        """Append the terminal event(s), then mark the run's row ended (and wake ``wake``, the
        parent run of a child run, in the same transaction).

        The append goes through group commit (it does not hold the log's append
        lock for a transaction of its own); ``expected_seq`` already protects the
        log from a worker that lost the run, and a row left open by a crash
        between the two steps is closed by ``mark_ended`` on the next claim.
        """
        stored = await self.store.append(run_id, events, expected_seq, tenant=tenant, workflow_id=workflow_id)
        await self.mark_ended(worker_id, run_id, wake=wake)
        return stored

    async def mark_ended(self, worker_id: str, run_id: UUID, *, wake: UUID | None = None) -> bool:
        """Close the row of a run whose log has ended; False when another worker holds it.

        ``wake``: a parent run waiting for this (child) run, woken in the same transaction, so
        a crash cannot leave the parent parked after its child ended."""
        async with self.pool.acquire() as conn:
            if wake is None:  # the plain path: one statement, no transaction of its own
                return await conn.execute(self._sql_end, run_id, worker_id) == "UPDATE 1"
            async with conn.transaction():
                ended = await conn.execute(self._sql_end, run_id, worker_id) == "UPDATE 1"
                if ended:
                    await self.lock_row(conn, wake)
                    await self.wake(conn, wake)
                return ended

    async def park(self, worker_id: str, run_id: UUID, last_seq: int, wake_at: datetime | None) -> bool:
        """Give the run back as waiting until ``wake_at`` (None: until a signal, a cancel or its
        child's end wakes it). False, and nothing changes, when the log has events after
        ``last_seq`` (someone signalled or cancelled meanwhile), the run was poked (a child of
        it ended: look again) or this worker lost the run."""
        async with self.pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(self._sql_lock, run_id) != "running":
                return False
            if await conn.fetchval(self._sql_poked, run_id) is not None:
                return False
            if await conn.fetchval(self._sql_head, run_id) != last_seq:
                return False
            return await conn.execute(self._sql_park, run_id, worker_id, wake_at) == "UPDATE 1"

    async def lock_row(self, conn: Conn, run_id: UUID) -> str | None:
        """Lock the run's queue row in the caller's transaction, before appending to a run this
        process does not execute (a signal, a cancel): see ``park``. Returns its status."""
        status: str | None = await conn.fetchval(self._sql_lock, run_id)
        return status

    async def wake(self, conn: Conn, run_id: UUID) -> None:
        """Make a parked run claimable now and tell the workers (inside the caller's transaction,
        after ``lock_row``). A run that is held is poked and told: its executor looks again, and
        will not park before it has."""
        if await conn.execute(self._sql_wake, run_id) == "UPDATE 1":
            await conn.execute("SELECT pg_notify($1, $2)", self.notify_channel, f"queued:{run_id}")
        else:
            await conn.execute(self._sql_poke, run_id)
            await conn.execute("SELECT pg_notify($1, $2)", self.notify_channel, f"wake:{run_id}")

    async def waiting(self) -> int:
        """How many runs are parked."""
        async with self.pool.acquire() as conn:
            return int(await conn.fetchval(self._sql_waiting_count))

    async def notify_cancel(self, conn: Conn, run_id: UUID) -> None:
        """Tell every worker that ``run_id`` has a cancel request (inside the caller's transaction)."""
        await conn.execute("SELECT pg_notify($1, $2)", self.notify_channel, f"cancel:{run_id}")

    async def depth(self) -> tuple[int, int, int]:
        """(queued, running, waiting) run counts; waiting runs are parked (no lease, no slot)."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(self._sql_depth)
        assert row is not None  # an aggregate always yields one row
        return int(row[0]), int(row[1]), int(row[2])


async def queue_statuses_conn(
    conn: Conn, schema: str, *, workflow_id: str | None = None, run_ids: list[UUID] | None = None
) -> list[tuple[UUID, str]]:
    """``(run_id, status)`` of the queue rows of a workflow or of some runs (all when neither),
    read on the caller's connection (inside its snapshot)."""
    rows = await conn.fetch(
        f'SELECT run_id, status FROM "{schema}".run_queue '
        "WHERE ($1::text IS NULL OR workflow_id = $1) AND ($2::uuid[] IS NULL OR run_id = ANY($2))",
        workflow_id,
        run_ids,
    )
    return [(r[0], r[1]) for r in rows]
