"""The relay: tails the event log and publishes every event to JetStream, exactly once, in order.

The log is the outbox. Guarantees:
- one relay is active at a time across processes (a session advisory lock held
  on the relay's own connection; a standby polls and takes over when the
  active relay's connection dies);
- the stream holds every event exactly once and in global order. Each publish
  carries ``Nats-Expected-Last-Sequence``: the server stores a message only if
  the stream's last sequence is the one the relay expects, so when NATS dies
  mid-pipeline nothing after a lost message can be stored out of order (every
  later publish of that pipeline is refused too). After any failure the relay
  reads the stream's last message, resumes right after its
  ``Flowledger-Global-Position``, and ``Nats-Msg-Id`` deduplication covers the
  rest;
- publishes are pipelined: a whole batch is in flight before the first ack is
  awaited, and the next batch is sent while the previous one's acks are on
  their way. A batch's acks arrive on one inbox and complete one future
  (``AckInbox``), not a future per message.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from dataclasses import dataclass

import structlog
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from schemas.codec import json_encoder
from schemas.envelope import RawEnvelope
from service.infra.db import Conn, drop
from service.infra.nats import (
    HEADER_POSITION,
    HEADER_SEQ,
    HEADER_SOURCE,
    HEADER_TRIMMED,
    STREAM_NAME,
    SUBJECT_PREFIX,
    event_subject,
    payload_cap,
    trimmed_payload,
)
from service.infra.publish_acks import REFUSED, AckInbox, BatchAcks
from service.retry import Backoff
from service.store.checkpoints import read_checkpoint, write_checkpoint
from service.store.event_store import EventStore
from service.store.installation import event_source, try_session_lock
from service.waiting import wait_set

log = structlog.get_logger(__name__)


@dataclass
class RelayStatus:
    """What the relay has done so far (read by /ready, /metrics and tests)."""

    active: bool = False
    published_position: int = 0
    stream_sequence: int = 0
    published: int = 0
    failures: int = 0
    last_error: str | None = None
    last_publish_at: float | None = None
    backend_pid: int | None = None


class RelayConflict(RuntimeError):
    """The stream's last message came from another Flowledger log: relaying would corrupt both."""


class _PublishFailed(Exception):
    """Part of a pipelined batch was not stored; the relay must reconcile."""


class Relay:
    """Publishes the log to JetStream stream ``stream`` under ``subject_prefix``.

    ``run()`` loops until cancelled: waits for the relay lock, then relays.
    Errors (NATS down, Postgres connection lost) are logged and retried with
    backoff (0.1 s doubling to 5 s; straight to 5 s for a ``RelayConflict``;
    from 0.1 s again after a minute without failing); nothing is skipped.
    """

    def __init__(
        self,
        store: EventStore,
        nc: NATS,
        *,
        stream: str = STREAM_NAME,
        subject_prefix: str = SUBJECT_PREFIX,
        name: str = "relay",
        batch_size: int = 1000,
        idle_poll_s: float = 1.0,
        ack_timeout_s: float = 5.0,
        standby_poll_s: float = 0.5,
        max_batches_in_flight: int = 2,
    ) -> None:
        self.store = store
        self.nc = nc
        self.js = nc.jetstream(timeout=ack_timeout_s)
        self.stream = stream
        self.subject_prefix = subject_prefix
        self.name = name
        self.batch_size = batch_size
        self.idle_poll_s = idle_poll_s
        self.ack_timeout_s = ack_timeout_s
        self.standby_poll_s = standby_poll_s
        self.max_batches_in_flight = max_batches_in_flight
        self._acks = AckInbox(nc)
        self.status = RelayStatus()
        self._lock_key = int.from_bytes(
            hashlib.sha256(f"flowledger-relay:{store.schema}:{stream}".encode()).digest()[:8],
            "big",
            signed=True,
        )
        self._wakeup = asyncio.Event()
        self._source = ""

    async def run(self) -> None:
        # _run_once returns only by failing: the sequence restarts after a healthy minute instead.
        backoff = Backoff(first_s=0.1, max_s=5.0, healthy_after_s=60.0)
        while True:
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.status.failures += 1
                self.status.last_error = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, RelayConflict):
                    backoff.to_cap()  # needs an operator: no point in retrying fast
                    delay = backoff.next_delay()
                    log.error("relay_conflict", error=str(exc), retry_in_s=round(delay, 3))
                else:
                    delay = backoff.next_delay()
                    log.warning("relay_error", error=self.status.last_error, retry_in_s=round(delay, 3))
                await asyncio.sleep(delay)
            finally:
                self.status.active = False

    async def _run_once(self) -> None:
        async with self.store.pool.acquire() as conn:
            try:
                await self._hold_lock_and_relay(conn)
            finally:
                await self._acks.close()
                # Dropping the session ends its advisory lock and LISTEN at once, with
                # no await that a cancellation could interrupt; the pool reconnects.
                self.status.backend_pid = None
                drop(conn)

    async def _hold_lock_and_relay(self, conn: Conn) -> None:
        waiting_logged = False
        while not await try_session_lock(conn, self._lock_key):
            if not waiting_logged:
                log.info("relay_standby", reason="another relay is active")
                waiting_logged = True
            await asyncio.sleep(self.standby_poll_s)
        self.status.active = True
        self.status.backend_pid = conn.get_server_pid()
        self._source = await event_source(conn, self.store.schema) or ""  # migration 0003 writes the row
        log.info("relay_active", stream=self.stream)
        await conn.add_listener(self.store.notify_channel, self._on_notify)
        await self._acks.open()
        read_position, stream_seq = await self._reconcile(conn)
        # Two-stage pipeline: batch N+1 is sent while batch N's acks are still on their way.
        in_flight: deque[_InFlight] = deque()
        next_seq = stream_seq
        while True:
            self._wakeup.clear()
            events = []
            if len(in_flight) < self.max_batches_in_flight:
                events = await self.store.read_all_conn(conn, read_position, self.batch_size)
            if events:
                in_flight.append(await self._send(events, next_seq))
                next_seq += len(events)
                read_position = events[-1].global_position
                if len(in_flight) < self.max_batches_in_flight and in_flight[-1].sent_all:
                    continue
            if in_flight:
                batch = in_flight.popleft()
                try:
                    await self._await_acks(batch)
                except _PublishFailed as exc:
                    for later in in_flight:
                        self._acks.forget(later.acks)
                    in_flight.clear()
                    self.status.failures += 1
                    self.status.last_error = str(exc)
                    log.warning("relay_publish_incomplete", error=str(exc))
                    await asyncio.sleep(0.2)
                    read_position, next_seq = await self._reconcile(conn)
                    continue
                self.status.published_position = batch.events[-1].global_position
                self.status.stream_sequence = batch.first_seq + len(batch.events)
                await write_checkpoint(conn, self.name, self.status.published_position, self.store.schema)
                continue
            await wait_set(self._wakeup, self.idle_poll_s)

    def _on_notify(self, *_: object) -> None:
        self._wakeup.set()

    async def _reconcile(self, conn: Conn) -> tuple[int, int]:
        """Where to resume: after the stream's last relayed event, or the checkpoint."""
        checkpoint = await read_checkpoint(conn, self.name, self.store.schema)
        info = await self.js.stream_info(self.stream)
        last_seq = info.state.last_seq
        stream_position = 0
        if last_seq:
            try:
                msg = await self.js.get_msg(self.stream, seq=last_seq)
                headers = msg.headers or {}
                source = headers.get(HEADER_SOURCE)
                if source != self._source:
                    raise RelayConflict(
                        f"stream {self.stream} ends with a message from another Flowledger log "
                        f"({source or 'not Flowledger'}, this log is {self._source}); "
                        "give each log its own stream and subject prefix (FLOWLEDGER_NATS_STREAM, "
                        "FLOWLEDGER_NATS_SUBJECT_PREFIX), or delete the stream if that log is gone"
                    )
                stream_position = int(headers.get(HEADER_POSITION, 0))
            except NotFoundError:
                stream_position = 0  # last message removed by limits; the checkpoint decides
        position = max(checkpoint, stream_position)
        if position != checkpoint:
            await write_checkpoint(conn, self.name, position, self.store.schema)
        log.info("relay_resume", position=position, stream_sequence=last_seq, checkpoint=checkpoint)
        # Everything up to here is already on the stream: lag is measured from it, not from 0.
        self.status.published_position = position
        self.status.stream_sequence = last_seq
        return position, last_seq

    async def _send(self, events: list[RawEnvelope], first_seq: int) -> _InFlight:
        """Send a batch without waiting for acks; event i expects stream sequence first_seq + i."""
        acks = self._acks.batch(len(events))
        reply_prefix = acks.reply_prefix
        prefix = self.subject_prefix
        encode = json_encoder.encode
        publish = self.nc.publish
        source = self._source
        cap = payload_cap(self.nc)
        sent = 0
        try:
            for i, event in enumerate(events):
                headers = {
                    "Nats-Msg-Id": str(event.event_id),
                    HEADER_SEQ: str(event.seq),
                    HEADER_POSITION: str(event.global_position),
                    HEADER_SOURCE: source,
                    "Nats-Expected-Last-Sequence": str(first_seq + i),
                }
                payload = encode(event)
                if len(payload) > cap:
                    payload, headers[HEADER_TRIMMED] = trimmed_payload(event), "true"
                await publish(
                    event_subject(prefix, event), payload, reply=f"{reply_prefix}{i}", headers=headers
                )
                sent += 1
        except (NatsError, OSError) as exc:
            # Not all were sent: the acks of those that were decide (nothing later was sent).
            log.warning("relay_send_failed", error=f"{type(exc).__name__}: {exc}")
            for i in range(sent, len(events)):
                acks.record(i, REFUSED, "send failed")
            return _InFlight(events, acks, first_seq, sent_all=False)
        return _InFlight(events, acks, first_seq)

    async def _await_acks(self, batch: _InFlight) -> None:
        """Wait for a batch's acks; raises ``_PublishFailed`` unless every event was stored in order."""
        acks = batch.acks
        await acks.wait(self.ack_timeout_s)
        self._acks.forget(acks)
        stored = acks.stored_in_order()
        self.status.published += stored
        self.status.last_publish_at = time.time()
        if stored < len(batch.events):
            raise _PublishFailed(
                f"{stored} of {len(batch.events)} stored; then {acks.failure_reason(stored)}"
            )


@dataclass
class _InFlight:
    """A sent batch whose acks are outstanding."""

    events: list[RawEnvelope]
    acks: BatchAcks
    first_seq: int
    sent_all: bool = True
