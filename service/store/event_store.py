"""The run event log in PostgreSQL: every SQL statement of the event store lives here.

Guarantees:
- ``append`` is all-or-nothing per call; a stale ``expected_seq`` raises
  ``ConcurrencyError`` and writes nothing of that call.
- ``seq`` is 0-based and contiguous per run; every event carries the SHA-256
  chain link of ``schemas.canonical``.
- A reader tailing ``global_position`` (``read_all``) sees every committed event
  exactly once and in order, with any number of writers on any number of
  connections (see ``_write_batch_txn`` for why).
- Concurrent ``append`` calls are group-committed: one transaction carries the
  events of many callers, and each caller resumes only after its events are
  durable (the transaction committed).
- The log is partitioned by ranges of ``global_position`` (migration 0011): the
  store makes the ranges ahead of its appends (``ensure_partitions``: at start, then
  whenever its appends pass the point the last call returned), and an append that
  finds no range for its positions has them made and is retried once.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import msgspec
import structlog
import uuid_utils.compat as uuid_compat

from schemas.canonical import canonical_header, chain_hash
from schemas.codec import encode_event, event_decoder
from schemas.envelope import Envelope, LogEvent, RawEnvelope
from schemas.events import SCHEMA_VERSION, Event, event_tag
from schemas.names import DB_SCHEMA
from service.infra.db import Conn, is_usable
from service.store.blobs import Blob, insert_blobs_txn

log = structlog.get_logger(__name__)

BodyT = TypeVar("BodyT")

Clock = Callable[[], datetime]
IdFactory = Callable[[], UUID]


def utc_now() -> datetime:
    return datetime.now(UTC)


class UnknownRun(LookupError):
    """No events exist for that run id."""


class RunArchived(LookupError):
    """The run's first events were archived (``flowledger archive`` detached their partition):
    reading it from the start, or past a gap, would silently skip them."""

    def __init__(self, run_id: UUID, first_seq: int) -> None:
        super().__init__(
            f"run {run_id} was archived: its events before seq {first_seq} are no longer in the log; "
            "import its archive bundle (`flowledger import`) to read them"
        )
        self.run_id = run_id
        self.first_seq = first_seq


class ConcurrencyError(Exception):
    """``expected_seq`` did not match the run's next seq: someone appended first."""

    def __init__(self, run_id: UUID, expected_seq: int, actual_seq: int) -> None:
        super().__init__(
            f"run {run_id}: expected next seq {expected_seq} but the stream is at {actual_seq}; "
            "re-read the run and retry"
        )
        self.run_id = run_id
        self.expected_seq = expected_seq
        self.actual_seq = actual_seq


class StreamMismatch(ValueError):
    """An append names a tenant/workflow other than the run's own."""


class EmptyAppend(ValueError):
    """``append`` was called with no events."""


class StoreClosed(RuntimeError):
    """The store is closed; nothing more can be appended."""


@dataclass(slots=True)
class _PreparedEvent:
    type: str
    data: bytes


WithTxn = Callable[[Conn], Awaitable[None]]
"""Work that must commit with a request's events (e.g. its queue row). Raising refuses the request;
it must then not have changed anything (it runs in the batch's transaction, without a savepoint)."""

_Pending = tuple[UUID, int, str, str | None, str, bytes]
"""An event hashed but not yet inserted: (event_id, seq, type, prev_hash hex, hash hex, data)."""


@dataclass(slots=True)
class _AppendRequest:
    run_id: UUID
    tenant: str
    workflow_id: str
    expected_seq: int
    events: list[_PreparedEvent]
    future: asyncio.Future[list[RawEnvelope]] | None = None
    recorded: list[RawEnvelope] = field(default_factory=list)
    pending: list[_Pending] = field(default_factory=list)
    recorded_at: datetime | None = None
    with_txn: WithTxn | None = None
    blobs: Sequence[Blob] = ()


@dataclass(slots=True)
class _Head:
    next_seq: int
    hash: bytes | None
    tenant: str
    workflow_id: str


def _lock_key(schema: str) -> int:
    """The advisory-lock key that serializes appends to one schema's log."""
    return int.from_bytes(
        hashlib.sha256(f"flowledger-append:{schema}".encode()).digest()[:8], "big", signed=True
    )


def prepare_events(events: Sequence[Event]) -> list[_PreparedEvent]:
    """Validate and encode event bodies; raises ``InvalidEvent`` before anything is written."""
    if not events:
        raise EmptyAppend("append needs at least one event")
    return [_PreparedEvent(event_tag(e), encode_event(e)) for e in events]


def _recorded_columns(events: Sequence[RawEnvelope]) -> tuple[list[Any], ...]:
    """The insert statements' column arrays (after ``global_position``) for events recorded
    elsewhere, with their ids, seqs, times and hashes as they were."""
    return (
        [e.event_id for e in events],
        [e.run_id for e in events],
        [e.seq for e in events],
        [e.type for e in events],
        [e.tenant for e in events],
        [e.workflow_id for e in events],
        [e.recorded_at for e in events],
        [e.schema_version for e in events],
        [bytes.fromhex(e.prev_hash) if e.prev_hash else None for e in events],
        [bytes.fromhex(e.hash) for e in events],
        [bytes(e.data) for e in events],
    )


class EventStore:
    """Append-only run streams with optimistic concurrency and group commit.

    ``start()`` launches the committer task; ``close()`` drains and stops it.
    The clock and id factory are injected so tests can pin them.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        schema: str = DB_SCHEMA,
        clock: Clock = utc_now,
        new_id: IdFactory = uuid_compat.uuid7,
        max_batch_events: int = 2000,
    ) -> None:
        self.pool = pool
        self.schema = schema
        self.clock = clock
        self.new_id = new_id
        self.max_batch_events = max_batch_events
        self.notify_channel = f"{schema}_events"
        self._lock_key = _lock_key(schema)
        self._queue: asyncio.Queue[_AppendRequest] = asyncio.Queue()
        self._committer: asyncio.Task[None] | None = None
        self._closed = False
        self._ensure_at = 0
        """The position from which the partitions ahead must be made again (0: never made yet)."""
        self._ensuring: asyncio.Task[None] | None = None
        s = f'"{schema}"'
        self._sql_heads = f"""
            SELECT r.run_id, h.seq, h.hash, h.tenant, h.workflow_id
            FROM unnest($1::uuid[]) AS r(run_id)
            CROSS JOIN LATERAL (
                SELECT e.seq, e.hash, e.tenant, e.workflow_id FROM {s}.events e
                WHERE e.run_id = r.run_id ORDER BY e.seq DESC LIMIT 1
            ) h"""
        self._sql_insert = f"""
            WITH ins AS (
                INSERT INTO {s}.events (event_id, run_id, seq, type, tenant, workflow_id,
                                        recorded_at, schema_version, prev_hash, hash, data)
                SELECT event_id, run_id, seq, type, tenant, workflow_id,
                       recorded_at, schema_version, prev_hash, hash, data
                FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::text[], $6::text[],
                            $7::timestamptz[], $8::smallint[], $9::bytea[], $10::bytea[], $11::json[])
                     WITH ORDINALITY
                     AS t(event_id, run_id, seq, type, tenant, workflow_id,
                          recorded_at, schema_version, prev_hash, hash, data, ord)
                ORDER BY ord
                RETURNING global_position
            )
            SELECT global_position FROM ins
            CROSS JOIN (SELECT pg_notify($12, '')) AS wake
            ORDER BY global_position"""
        # Columns in envelope field order; hashes hex-encoded by the server (cheaper than in Python).
        cols = (
            "event_id, run_id, seq, global_position, type, tenant, workflow_id, recorded_at, "
            "schema_version, encode(prev_hash, 'hex'), encode(hash, 'hex'), data"
        )
        self._sql_read_run = (
            f"SELECT {cols} FROM {s}.events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        )
        self._sql_read_all = (
            f"SELECT {cols} FROM {s}.events WHERE global_position > $1 ORDER BY global_position LIMIT $2"
        )
        # What a rebuild's folds read (``LogEvent``, in field order): no ids, version or hashes.
        fold_cols = "run_id::text, seq, global_position, type, tenant, workflow_id, recorded_at, data"
        self._sql_read_folded = (
            f"SELECT {fold_cols} FROM {s}.events WHERE global_position > $1 ORDER BY global_position LIMIT $2"
        )
        # One share of the runs (by a hash of the run id), up to a fixed position: a rebuild
        # may fold the log in several processes, each reading the runs of its share.
        self._sql_read_share = (
            f"SELECT {fold_cols} FROM {s}.events WHERE global_position > $1 AND global_position <= $3 "
            "AND (uuid_hash(run_id) & 2147483647) % $4 = $5 ORDER BY global_position LIMIT $2"
        )
        self._sql_read_run_types = (
            f"SELECT {cols} FROM {s}.events WHERE run_id = $1 AND seq > $2 AND type = ANY($3) "
            "ORDER BY seq LIMIT $4"
        )
        self._sql_run_tenant = f"SELECT tenant FROM {s}.events WHERE run_id = $1 AND seq = 0"
        self._sql_read_filtered = (
            f"SELECT {cols} FROM {s}.events WHERE global_position > $1 AND tenant = $2 "
            "AND ($3::text IS NULL OR workflow_id = $3) AND ($4::text[] IS NULL OR type = ANY($4)) "
            "ORDER BY global_position LIMIT $5"
        )
        self._sql_head_position = f"SELECT coalesce(max(global_position), 0) FROM {s}.events"
        self._sql_ensure_partitions = f"SELECT {s}.ensure_event_partitions($1)"
        # A restored archive's events go back to their own positions (behind every reader).
        self._sql_insert_at = f"""
            INSERT INTO {s}.events (global_position, event_id, run_id, seq, type, tenant, workflow_id,
                                    recorded_at, schema_version, prev_hash, hash, data)
            OVERRIDING SYSTEM VALUE
            SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::uuid[], $4::int[], $5::text[], $6::text[],
                                 $7::text[], $8::timestamptz[], $9::smallint[], $10::bytea[],
                                 $11::bytea[], $12::json[])"""

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._committer is None:
            await self.ensure_partitions()
            self._committer = asyncio.create_task(self._commit_loop(), name="event-store-committer")

    async def close(self) -> None:
        """Stop accepting appends, finish those already queued, stop the committer."""
        self._closed = True
        if self._committer is not None:
            await self._queue.join()
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
            self._committer = None
        if self._ensuring is not None:
            with contextlib.suppress(Exception):
                await self._ensuring
            self._ensuring = None

    # -- partitions ------------------------------------------------------------------------------

    async def ensure_partitions(self, ahead: int = 0) -> None:
        """Make the ranges of the log that cover every position drawn so far plus ``ahead`` plus
        half a partition (idempotent; one caller at a time across processes)."""
        async with self.pool.acquire() as conn:
            await self.ensure_partitions_conn(conn, ahead)

    async def ensure_partitions_conn(self, conn: Conn, ahead: int = 0) -> None:
        """``ensure_partitions`` on a connection the caller holds, outside any transaction of its
        (the ranges must commit on their own: a rolled back append must not take them along)."""
        self._ensure_at = int(await conn.fetchval(self._sql_ensure_partitions, ahead))

    def _ensure_soon(self, position: int) -> None:
        """Make the next ranges in the background once ``position`` passed the point to."""
        if position < self._ensure_at or (self._ensuring is not None and not self._ensuring.done()):
            return

        async def ensure() -> None:
            try:
                await self.ensure_partitions()
            except Exception as exc:  # the next append past the point tries again
                log.warning("event_partitions_not_made", error=f"{type(exc).__name__}: {exc}")

        self._ensuring = asyncio.create_task(ensure(), name="event-store-partitions")

    # -- writing ---------------------------------------------------------------------------------

    async def append(
        self,
        run_id: UUID,
        events: Sequence[Event],
        expected_seq: int,
        *,
        tenant: str,
        workflow_id: str,
        with_txn: WithTxn | None = None,
        blobs: Sequence[Blob] = (),
    ) -> list[RawEnvelope]:
        """Append ``events`` to run ``run_id`` as seq ``expected_seq``, ``expected_seq + 1``, ...

        ``expected_seq`` is the seq the first event must take: 0 for a new run,
        otherwise the number of events already in the run. Returns the stored
        envelopes once they are durable. Raises ``ConcurrencyError`` when the
        run moved on, ``StreamMismatch`` when tenant/workflow differ from the
        run's, ``InvalidEvent`` for a malformed body (nothing is written then).
        ``with_txn`` runs inside the group-commit transaction, before the events
        are written; whatever it raises refuses this append alone. ``blobs`` (large
        outputs the events reference) are written in the same transaction.
        """
        if self._closed:
            raise StoreClosed("the event store is closed")
        if self._committer is None:
            raise StoreClosed("the event store was not started")
        if self._committer.done():  # never expected: the loop survives every error of a batch
            raise StoreClosed("the event store's committer has stopped")
        request = _AppendRequest(run_id, tenant, workflow_id, expected_seq, prepare_events(events))
        request.with_txn = with_txn
        request.blobs = blobs
        request.future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(request)
        return await request.future

    async def append_txn(
        self,
        conn: Conn,
        run_id: UUID,
        events: Sequence[Event],
        expected_seq: int,
        *,
        tenant: str,
        workflow_id: str,
    ) -> list[RawEnvelope]:
        """Like ``append`` but inside the caller's open transaction on ``conn``.

        For writes that must commit together with the events (e.g. a queue row);
        the events are durable only when the caller's transaction commits.
        """
        request = _AppendRequest(run_id, tenant, workflow_id, expected_seq, prepare_events(events))
        failures = await self._write_batch_txn(conn, [request])
        if failures:
            raise failures[0][1]
        if request.recorded:
            self._ensure_soon(request.recorded[-1].global_position)
        return request.recorded

    async def _commit_loop(self) -> None:
        conn: Conn | None = None
        try:
            while True:
                first = await self._queue.get()
                batch = [first]
                size = len(first.events)
                while size < self.max_batch_events and not self._queue.empty():
                    nxt = self._queue.get_nowait()
                    batch.append(nxt)
                    size += len(nxt.events)
                try:
                    if conn is None or not is_usable(conn):
                        conn = await self.pool.acquire()
                    await self._commit_batch(conn, batch)
                    await self._ensure_after_conn(conn, batch)
                except Exception as exc:
                    # The batch fails (its callers see why and may retry); the committer goes on,
                    # with a new connection when this one died (server restart, terminated session).
                    log.warning(
                        "append_batch_failed", requests=len(batch), error=f"{type(exc).__name__}: {exc}"
                    )
                    if conn is not None and not is_usable(conn):
                        await self._release(conn)
                        conn = None
                    for request in batch:
                        _settle(request, _own_copy(exc))
                finally:
                    for _ in batch:
                        self._queue.task_done()
        finally:
            if conn is not None:
                await self._release(conn)

    async def _release(self, conn: Conn) -> None:
        with contextlib.suppress(Exception):
            await self.pool.release(conn)  # type: ignore[arg-type]

    async def _ensure_after_conn(self, conn: Conn, batch: list[_AppendRequest]) -> None:
        """After a committed batch: make the next ranges when its last position passed the point."""
        last = max((r.recorded[-1].global_position for r in batch if r.recorded), default=0)
        if last >= self._ensure_at:
            try:
                await self.ensure_partitions_conn(conn, 0)
            except asyncpg.PostgresError as exc:  # the batch is durable; the next one tries again
                log.warning("event_partitions_not_made", error=f"{type(exc).__name__}: {exc}")

    async def _commit_batch(self, conn: Conn, batch: list[_AppendRequest], *, retried: bool = False) -> None:
        try:
            async with conn.transaction():
                failures = await self._write_batch_txn(conn, batch)
        except asyncpg.PostgresError as exc:
            if _no_partition(exc) and not retried and is_usable(conn):
                # No range of the log for these positions (the appends outran the ranges made
                # ahead): make them and write the batch again; nothing of it was written.
                for request in batch:
                    request.recorded = []
                await self.ensure_partitions_conn(conn, sum(len(r.events) for r in batch))
                await self._commit_batch(conn, batch, retried=True)
                return
            # One request can make the database refuse the whole transaction: text it cannot
            # store (a NUL character) in a with_txn hook's row, a writer that bypassed the append
            # lock (unique violation). Retry one request per transaction so that only the
            # request at fault fails and its batch mates are written.
            if len(batch) == 1 or not is_usable(conn):
                raise
            for request in batch:
                request.recorded = []
                try:
                    await self._commit_batch(conn, [request])
                except Exception as exc:
                    _settle(request, exc)
            return
        failed = {id(r): exc for r, exc in failures}
        for request in batch:
            _settle(request, failed.get(id(request)))

    async def _write_batch_txn(
        self, conn: Conn, batch: list[_AppendRequest]
    ) -> list[tuple[_AppendRequest, Exception]]:
        """Write every acceptable request of ``batch`` inside the open transaction.

        Global order: the transaction first takes a transaction-scoped advisory
        lock, so appends are serialized across all connections and processes.
        Identity values are therefore drawn in lock order, and PostgreSQL makes a
        transaction visible before it releases its locks, so a transaction with
        higher positions can only become visible after every lower one did. A
        reader that tails ``global_position > last_seen`` can thus never skip an
        event that commits later with a smaller position (the "commit order vs
        sequence order" trap). Gaps (rolled back transactions) are harmless: no
        later commit can fill them. We chose this over reading below the
        ``pg_snapshot_xmin`` horizon because group commit already funnels each
        process's appends through one transaction at a time, so the lock costs
        little, and readers stay simple and latency-free.

        Returns the requests refused (stale seq, wrong stream) with their error.

        The batch's blobs are written first, before the lock: copying a large output can take
        a while, and other processes' appends need not wait for it. A blob of a request that
        is then refused stays, unreferenced (harmless: content-addressed, and the refused
        writer's retry references the same key).
        """
        await insert_blobs_txn(conn, (b for r in batch for b in r.blobs), schema=self.schema)
        await conn.execute("SELECT pg_advisory_xact_lock($1)", self._lock_key)
        heads: dict[UUID, _Head] = {
            row["run_id"]: _Head(row["seq"] + 1, row["hash"], row["tenant"], row["workflow_id"])
            for row in await conn.fetch(self._sql_heads, list({r.run_id for r in batch}))
        }
        failures: list[tuple[_AppendRequest, Exception]] = []
        accepted: list[_AppendRequest] = []
        columns: tuple[list, ...] = tuple([] for _ in range(11))
        for request in batch:
            head = heads.get(request.run_id)
            refusal = _refusal(request, head)
            if refusal is None and request.with_txn is not None:
                refusal = await _run_hook(conn, request.with_txn)
            if refusal is not None:
                failures.append((request, refusal))
                continue
            heads[request.run_id] = self._chain(request, head, columns)
            accepted.append(request)
        if not accepted:
            return failures
        rows = await conn.fetch(self._sql_insert, *columns, self.notify_channel)
        _set_recorded(accepted, (row[0] for row in rows))
        return failures

    def _chain(self, request: _AppendRequest, head: _Head | None, columns: tuple[list, ...]) -> _Head:
        """Give the request's events ids, seqs and chain hashes after ``head`` (its run's last event).

        Appends them to the insert statement's ``columns`` and keeps them on the request
        (``pending``, ``recorded_at``); returns the run's head after them.
        """
        (c_id, c_run, c_seq, c_type, c_tenant, c_wf, c_at, c_ver, c_prev, c_hash, c_data) = columns
        next_seq = head.next_seq if head else 0
        prev = head.hash if head else None
        recorded_at = _utc(self.clock())
        pending: list[_Pending] = []
        for offset, event in enumerate(request.events):
            seq = next_seq + offset
            event_id = self.new_id()
            header = canonical_header(
                event_id,
                request.run_id,
                seq,
                event.type,
                request.tenant,
                request.workflow_id,
                recorded_at,
                SCHEMA_VERSION,
            )
            digest = chain_hash(prev, header, event.data)
            c_id.append(event_id)
            c_run.append(request.run_id)
            c_seq.append(seq)
            c_type.append(event.type)
            c_tenant.append(request.tenant)
            c_wf.append(request.workflow_id)
            c_at.append(recorded_at)
            c_ver.append(SCHEMA_VERSION)
            c_prev.append(prev)
            c_hash.append(digest)
            c_data.append(event.data)
            pending.append(
                (event_id, seq, event.type, prev.hex() if prev else None, digest.hex(), event.data)
            )
            prev = digest
        request.pending = pending
        request.recorded_at = recorded_at
        return _Head(next_seq + len(request.events), prev, request.tenant, request.workflow_id)

    async def lock_txn(self, conn: Conn) -> None:
        """Take the append lock in the caller's transaction (see ``_write_batch_txn`` for why)."""
        await conn.execute("SELECT pg_advisory_xact_lock($1)", self._lock_key)

    async def insert_recorded_txn(self, conn: Conn, events: Sequence[RawEnvelope]) -> None:
        """Insert events exactly as they were recorded elsewhere (an imported bundle: ids, seqs,
        times and hashes kept), in the caller's transaction, which must hold ``lock_txn``.
        The caller has checked that they continue their runs' chains. The ranges of the log
        that their new positions need are made first (on another connection: they must not
        roll back with this transaction)."""
        await self.ensure_partitions(len(events))
        for start in range(0, len(events), 5000):
            chunk = events[start : start + 5000]
            await conn.fetch(self._sql_insert, *_recorded_columns(chunk), self.notify_channel)

    async def restore_recorded_txn(self, conn: Conn, events: Sequence[RawEnvelope]) -> None:
        """Insert events of a restored archive at the ``global_position`` they had (their range's
        partition made again by the caller), everything else as ``insert_recorded_txn``. Readers
        tailing the log are past those positions: the events are not delivered again."""
        for start in range(0, len(events), 5000):
            chunk = events[start : start + 5000]
            await conn.execute(
                self._sql_insert_at, [e.global_position for e in chunk], *_recorded_columns(chunk)
            )

    # -- reading ---------------------------------------------------------------------------------

    async def run_tenant(self, run_id: UUID) -> str | None:
        """The tenant of a run (from its first event); None when no such run exists."""
        async with self.pool.acquire() as conn:
            tenant: str | None = await conn.fetchval(self._sql_run_tenant, run_id)
        return tenant

    async def read_run(
        self, run_id: UUID, after_seq: int = -1, limit: int = 1_000_000, *, archived_ok: bool = False
    ) -> list[RawEnvelope]:
        """The run's events with ``seq > after_seq``, in seq order.

        Raises ``RunArchived`` when the first of them is not ``after_seq + 1`` (an archive took
        the events before it), unless ``archived_ok``: then what the log still holds."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self._sql_read_run, run_id, after_seq, limit)
        if rows and rows[0][2] != max(after_seq + 1, 0) and not archived_ok:
            raise RunArchived(run_id, rows[0][2])
        return [_envelope(row, msgspec.Raw) for row in rows]

    async def read_run_types(
        self, run_id: UUID, types: frozenset[str], after_seq: int = -1, limit: int = 1000
    ) -> list[RawEnvelope]:
        """The run's events of ``types`` with ``seq > after_seq``, in seq order (one run's
        events are indexed by run and seq: this reads no other run's rows)."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self._sql_read_run_types, run_id, after_seq, sorted(types), limit)
        return [_envelope(row, msgspec.Raw) for row in rows]

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[RawEnvelope]:
        """Events of all runs with ``global_position > after_position``, in log order."""
        async with self.pool.acquire() as conn:
            return await self.read_all_conn(conn, after_position, limit)

    async def read_all_conn(self, conn: Conn, after_position: int, limit: int) -> list[RawEnvelope]:
        """``read_all`` on a connection the caller holds."""
        rows = await conn.fetch(self._sql_read_all, after_position, limit)
        return [_envelope(row, msgspec.Raw) for row in rows]

    async def read_folded(
        self, after_position: int, limit: int, types: frozenset[str]
    ) -> tuple[int, int, list[LogEvent]]:
        """Read like ``read_all``; return only the events of ``types``, as ``LogEvent``s.

        Returns (the last position read, the number of events read, the decoded events).
        """
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self._sql_read_folded, after_position, limit)
        return _log_events(rows, after_position, types)

    async def read_folded_share(
        self, after_position: int, limit: int, types: frozenset[str], *, upto: int, share: int, shares: int
    ) -> tuple[int, int, list[LogEvent]]:
        """``read_folded`` of the events up to ``upto`` of the runs in ``share`` (0 to
        ``shares - 1``): every run is in exactly one share, with all its events."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self._sql_read_share, after_position, limit, upto, shares, share)
        return _log_events(rows, after_position, types)

    async def read_filtered(
        self,
        after_position: int,
        *,
        tenant: str,
        workflow_id: str | None = None,
        types: frozenset[str] | None = None,
        limit: int = 1000,
    ) -> list[RawEnvelope]:
        """One tenant's events past ``after_position`` in log order, optionally of one workflow / some types."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                self._sql_read_filtered,
                after_position,
                tenant,
                workflow_id,
                sorted(types) if types else None,
                limit,
            )
        return [_envelope(row, msgspec.Raw) for row in rows]

    async def head_position(self) -> int:
        """The highest committed ``global_position`` (0 for an empty log)."""
        async with self.pool.acquire() as conn:
            value = await conn.fetchval(self._sql_head_position)
        return int(value)


def _no_partition(error: asyncpg.PostgresError) -> bool:
    """Whether PostgreSQL refused a row because no partition of the log covers its position."""
    return isinstance(error, asyncpg.CheckViolationError) and str(error).startswith(
        "no partition of relation"
    )


def _refusal(request: _AppendRequest, head: _Head | None) -> Exception | None:
    """Why ``request`` cannot follow its run's last event ``head`` (None: it can)."""
    next_seq = head.next_seq if head else 0
    if request.expected_seq != next_seq:
        return ConcurrencyError(request.run_id, request.expected_seq, next_seq)
    if head and (head.tenant, head.workflow_id) != (request.tenant, request.workflow_id):
        return StreamMismatch(
            f"run {request.run_id} belongs to tenant {head.tenant!r}, workflow "
            f"{head.workflow_id!r}, not {request.tenant!r}, {request.workflow_id!r}"
        )
    return None


async def _run_hook(conn: Conn, hook: WithTxn) -> Exception | None:
    """Run a request's ``with_txn`` hook; returns what it raised to refuse the request."""
    # No savepoint (one round trip less per request, and the rows keep the top-level
    # transaction id): a hook that refuses must do so before changing anything.
    try:
        await hook(conn)
    except (asyncpg.PostgresError, asyncpg.InterfaceError):
        raise  # the transaction is unusable: the whole batch fails
    except Exception as exc:
        return exc
    return None


def _set_recorded(accepted: list[_AppendRequest], positions: Iterator[int]) -> None:
    """Set each accepted request's stored envelopes, its events taking ``positions`` in order."""
    for request in accepted:
        run_id, tenant, workflow_id, at = (
            request.run_id,
            request.tenant,
            request.workflow_id,
            request.recorded_at,
        )
        assert at is not None  # set together with pending
        request.recorded = [
            Envelope(  # the bare generic: its typed alias costs ~0.7 us per call
                event_id,
                run_id,
                seq,
                next(positions),
                type_,
                tenant,
                workflow_id,
                at,
                SCHEMA_VERSION,
                prev,
                digest,
                msgspec.Raw(data),
            )
            for event_id, seq, type_, prev, digest, data in request.pending
        ]


def _utc(moment: datetime) -> datetime:
    """The clock's reading in UTC: hashed exactly as PostgreSQL will hand it back."""
    if moment.tzinfo is None:
        raise ValueError("the event store's clock must return timezone-aware datetimes")
    return moment.astimezone(UTC)


def _own_copy(error: Exception) -> Exception:
    """``error`` for one caller of a failed batch: a copy of the same type (callers still match
    on it) with its own traceback. Raising one shared object from every run that was in the
    batch would pile all their frames onto its traceback."""
    try:
        own = copy.copy(error)
    except Exception:
        return error
    own.__cause__ = error
    return own


def _settle(request: _AppendRequest, error: BaseException | None) -> None:
    future = request.future
    if future is None or future.done():
        return
    if error is None:
        future.set_result(request.recorded)
    else:
        future.set_exception(error)


def _log_events(
    rows: list[asyncpg.Record], after_position: int, types: frozenset[str]
) -> tuple[int, int, list[LogEvent]]:
    """(last position, count, the ``LogEvent``s of ``types``) of rows in ``LogEvent`` field order."""
    if not rows:
        return after_position, 0, []
    decode = event_decoder.decode
    # Positional, unpacked in the comprehension: this runs once per event of a rebuild.
    events = [
        LogEvent(run_id, seq, position, type_, tenant, workflow_id, at, decode(data))
        for run_id, seq, position, type_, tenant, workflow_id, at, data in rows
        if type_ in types
    ]
    return rows[-1][2], len(rows), events


def _envelope(row: asyncpg.Record, body: Callable[[bytes], BodyT]) -> Envelope[BodyT]:
    """The envelope of an events row, its body made by ``body`` (``msgspec.Raw``: kept as bytes)."""
    # Positional: this runs once per event read, on the relay's and every reader's hot path.
    event_id, run_id, seq, position, type_, tenant, workflow_id, recorded_at, version, prev, digest, data = (
        row
    )
    return Envelope(  # the bare generic: its typed alias costs ~0.7 us per call
        event_id,
        run_id,
        seq,
        position,
        type_,
        tenant,
        workflow_id,
        recorded_at,
        version,
        prev,
        digest,
        body(data),
    )
