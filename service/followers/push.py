"""Live push: one NATS subscription per process feeds every local SSE / WebSocket client.

A client's stream is always "stored, then live": it subscribes to the hub
first, reads what is stored after its resume point from PostgreSQL, then
forwards live events, skipping any seq it already sent and filling any gap from
PostgreSQL. So the switch-over neither loses nor repeats an event, and a live
message that never arrives (NATS restart, relay retry) is recovered from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from uuid import UUID

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas.envelope import RawEnvelope
from schemas.events import TERMINAL_TYPES
from service.infra.nats import HEADER_POSITION, HEADER_SEQ, SUBJECT_PREFIX, capped_payload, payload_cap
from service.store.event_store import EventStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PushEvent:
    """One event as a push client receives it: routing fields and the envelope JSON."""

    run_id: str
    seq: int
    global_position: int
    type: str
    workflow_id: str
    tenant: str
    payload: bytes
    sse_frame: bytes = b""
    """The SSE frame with ``id: <seq>``, built once per event and shared by every client of the run."""


def sse_frame(event_id: int, type_: str, payload: bytes) -> bytes:
    """One Server-Sent Events message (the envelope JSON is one line: compact JSON has no newline)."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, type_.encode(), payload)


def push_event(
    run_id: str, seq: int, position: int, type_: str, workflow_id: str, tenant: str, payload: bytes
) -> PushEvent:
    return PushEvent(
        run_id, seq, position, type_, workflow_id, tenant, payload, sse_frame(seq, type_, payload)
    )


def from_envelope(event: RawEnvelope, cap: int) -> PushEvent:
    """A stored event as pushed: trimmed over ``cap`` exactly as the relay trims it on NATS, so a
    client sees the same message whether it was live or caught up from the log."""
    payload, _trimmed = capped_payload(event, cap)
    return push_event(
        str(event.run_id),
        event.seq,
        event.global_position,
        event.type,
        event.workflow_id,
        event.tenant,
        payload,
    )


class Overflow(Exception):
    """A client fell too far behind: its bounded queue is full."""


class HubClosing(Exception):
    """The service is shutting down: live streams end (clients resume elsewhere or later)."""


@dataclass(eq=False)
class Subscription:
    """A client's bounded inbox. The hub never waits on it: when full, the client is cut off.

    A deque and one waiter future, not an ``asyncio.Queue``: the hub's offer to a
    thousand clients of one run is an append each, and a client takes all that is
    queued at once.
    """

    run_id: str | None
    matches: Callable[[PushEvent], bool]
    maxsize: int = 1000
    overflowed: bool = False
    generation: int = 0
    closed: bool = False
    pending: deque[PushEvent] = field(default_factory=deque)
    _waiter: asyncio.Future[None] | None = None

    def offer(self, event: PushEvent) -> None:
        if self.overflowed or not self.matches(event):
            return
        if len(self.pending) >= self.maxsize:
            self.overflowed = True
        else:
            self.pending.append(event)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_batch(self, timeout: float) -> list[PushEvent] | None:
        """Every live event queued now (waiting up to ``timeout`` seconds for the first), or None
        after that long in silence. Taking them all at once lets a client write them in one go."""
        if not self.pending and not self.overflowed and not self.closed:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout, self._wake)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        if self.overflowed:
            raise Overflow(f"more than {self.maxsize} events queued for a client that is not reading")
        if not self.pending:
            if self.closed:
                raise HubClosing("the service is shutting down")
            return None
        batch = list(self.pending)
        self.pending.clear()
        return batch  # events offered before a close still go out; the next call ends the stream

    def close(self) -> None:
        self.closed = True
        self._wake()


class PushHub:
    """Routes live events from one NATS subscription to every local subscription."""

    def __init__(self, nc: NATS, *, subject_prefix: str = SUBJECT_PREFIX, queue_size: int = 1000) -> None:
        self.nc = nc
        self.subject_prefix = subject_prefix
        self.queue_size = queue_size
        self._by_run: dict[str, set[Subscription]] = {}
        self._all: set[Subscription] = set()
        self._sub: object | None = None
        self.generation = 0
        """Bumped when the NATS connection was re-established: live messages may have been missed."""
        self.delivered = 0
        self.closing = asyncio.Event()
        """Set by ``close_streams`` when the service starts shutting down."""

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(f"{self.subject_prefix}.>", cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()  # type: ignore[attr-defined]

    def close_streams(self) -> None:
        """End every live stream now (and any opened later): the HTTP server waits for open
        streams before it stops, and a run-less ``/v1/stream`` never ends by itself."""
        self.closing.set()
        for sub in [*self._all, *(s for subs in self._by_run.values() for s in subs)]:
            sub.close()

    def reconnected(self) -> None:
        self.generation += 1

    @property
    def clients(self) -> int:
        return len(self._all) + sum(len(s) for s in self._by_run.values())

    def subscribe(
        self, run_id: str | None, matches: Callable[[PushEvent], bool] = lambda _e: True
    ) -> Subscription:
        sub = Subscription(run_id, matches, self.queue_size, generation=self.generation)
        if self.closing.is_set():
            sub.close()
        if run_id is None:
            self._all.add(sub)
        else:
            self._by_run.setdefault(run_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.run_id is None:
            self._all.discard(sub)
            return
        subs = self._by_run.get(sub.run_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_run[sub.run_id]

    async def _on_msg(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")
        if len(tokens) < 4:
            return
        headers = msg.headers or {}
        try:
            event = push_event(
                tokens[-2],
                int(headers[HEADER_SEQ]),
                int(headers[HEADER_POSITION]),
                tokens[-1],
                tokens[-3],
                tokens[-4],
                msg.data,
            )
        except (KeyError, ValueError):
            return  # not one of ours
        for sub in self._by_run.get(event.run_id, ()):
            sub.offer(event)
        for sub in self._all:
            sub.offer(event)
        self.delivered += 1


def _ends_run(batch: list[PushEvent]) -> bool:
    """A run's terminal event is its last, so it can only end a batch."""
    return batch[-1].type in TERMINAL_TYPES


async def run_events(
    hub: PushHub,
    store: EventStore,
    run_id: UUID,
    after_seq: int,
    *,
    heartbeat_s: float = 15.0,
    poll_s: float = 5.0,
    stop_at_end: bool = True,
) -> AsyncIterator[list[PushEvent] | None]:
    """Every event of ``run_id`` after ``after_seq``, exactly once and in seq order, in batches.

    A batch is what is ready at once (a page of stored events, or the live events queued
    while the client was writing), so a busy client writes several events in one go.
    Yields None as a heartbeat when nothing happened for ``heartbeat_s``. Ends after
    the run's terminal event (when ``stop_at_end``). Raises ``Overflow`` when the
    consumer does not keep up.
    """
    key = str(run_id)
    cap = payload_cap(hub.nc)
    sub = hub.subscribe(key)
    last = after_seq
    try:

        async def catch_up(until: int | None = None) -> AsyncIterator[list[PushEvent]]:
            nonlocal last
            while True:
                stored = await store.read_run(run_id, after_seq=last, limit=500)
                page = [from_envelope(event, cap) for event in stored if until is None or event.seq <= until]
                if page:
                    last = page[-1].seq
                    yield page
                if len(stored) < 500 or len(page) < len(stored):
                    return

        resumed_from_end = after_seq >= 0
        async for page in catch_up():
            resumed_from_end = False
            yield page
            if stop_at_end and _ends_run(page):
                return
        if resumed_from_end and stop_at_end:
            # Resuming at or past the run's last event: if that was its end, there is nothing more.
            at = await store.read_run(run_id, after_seq=after_seq - 1, limit=1)
            if at and at[0].type in TERMINAL_TYPES:
                return
        quiet = 0.0
        while True:
            live = await sub.next_batch(min(poll_s, heartbeat_s))
            if live is None or sub.generation != hub.generation:
                sub.generation = hub.generation
                # Silence or a NATS reconnect: anything stored but not (yet) pushed comes from the
                # log, so a stalled relay delays a client by at most ``poll_s``.
                caught = False
                async for page in catch_up():
                    caught = True
                    yield page
                    if stop_at_end and _ends_run(page):
                        return
                if live is None:
                    quiet = 0.0 if caught else quiet + min(poll_s, heartbeat_s)
                    if quiet >= heartbeat_s:
                        quiet = 0.0
                        yield None
                    continue
            quiet = 0.0
            batch: list[PushEvent] = []
            for event in live:
                if event.seq <= last:
                    continue
                if event.seq > last + 1:
                    async for page in catch_up(until=event.seq - 1):
                        batch.extend(page)
                if event.seq != last + 1:
                    continue  # the gap could not be filled yet (not visible); the log catch-up will deliver it
                last = event.seq
                batch.append(event)
            if batch:
                yield batch
                if stop_at_end and _ends_run(batch):
                    return
    finally:
        hub.unsubscribe(sub)


async def all_events(
    hub: PushHub,
    store: EventStore,
    *,
    tenant: str,
    after_position: int,
    workflow_id: str | None,
    types: frozenset[str] | None,
    heartbeat_s: float = 15.0,
) -> AsyncIterator[list[PushEvent] | None]:
    """Every event of the tenant (optionally one workflow / some types) after a global position,
    in log order, in batches of what is ready at once."""

    def matches(event: PushEvent) -> bool:
        return (
            event.tenant == tenant
            and (workflow_id is None or event.workflow_id == workflow_id)
            and (types is None or event.type in types)
        )

    cap = payload_cap(hub.nc)
    sub = hub.subscribe(None, matches)
    last = after_position
    try:

        async def catch_up() -> AsyncIterator[list[PushEvent]]:
            nonlocal last
            while True:
                stored = await store.read_filtered(
                    last, tenant=tenant, workflow_id=workflow_id, types=types, limit=500
                )
                if stored:
                    last = stored[-1].global_position
                    yield [from_envelope(event, cap) for event in stored]
                if len(stored) < 500:
                    return

        async for page in catch_up():
            yield page
        while True:
            live = await sub.next_batch(heartbeat_s)
            if live is None or sub.generation != hub.generation:
                sub.generation = hub.generation
                async for page in catch_up():
                    yield page
                if live is None:
                    yield None
                    continue
            # The relay publishes in log order, so everything matching before these events
            # was already offered to this subscription (a reconnect is caught up above).
            batch = [event for event in live if event.global_position > last]
            if batch:
                last = batch[-1].global_position
                yield batch
    finally:
        hub.unsubscribe(sub)
