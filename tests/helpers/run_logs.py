"""Reading back what real service processes wrote: runs from the log (typed), the worker that
ran them, and the whole JetStream stream's message ids, for the crash tests and the chaos drill."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TypeVar
from uuid import UUID

import asyncpg
import nats

from schemas.codec import to_typed
from schemas.envelope import EventEnvelope, RawEnvelope
from service.infra.nats import HEADER_POSITION
from service.store.event_store import EventStore

E = TypeVar("E")


async def read_runs(pool: asyncpg.Pool, run_ids: list[UUID]) -> dict[UUID, list[RawEnvelope]]:
    """Each run's stored events, in seq order (schema ``flowledger``)."""
    store = EventStore(pool)  # reads only: no committer needed
    return {run_id: await store.read_run(run_id) for run_id in run_ids}


def typed(events: list[RawEnvelope]) -> list[EventEnvelope]:
    return [to_typed(e) for e in events]


def bodies(events: list[EventEnvelope], kind: type[E]) -> list[E]:
    """The bodies of ``events`` that are of event type ``kind``, in seq order."""
    return [e.data for e in events if isinstance(e.data, kind)]


def pid_of(worker_id: str) -> int:
    """Worker ids are ``host:pid:suffix``."""
    return int(worker_id.split(":")[-2])


@dataclass(frozen=True)
class StreamContents:
    """What a whole JetStream stream holds, as the relay's headers tell."""

    messages: int
    """The stream's message count (its state)."""
    ids: Counter[str]
    """``Nats-Msg-Id`` of every message read, with how often each occurs."""
    in_order: bool
    """The ``Flowledger-Global-Position`` headers increase strictly in stream order."""


async def read_stream(nats_url: str, stream: str, subjects: str) -> StreamContents:
    """Read every message of ``stream`` (filter ``subjects``) with an ephemeral pull consumer."""
    nc = await nats.connect(nats_url.split(","), allow_reconnect=False)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        sub = await js.pull_subscribe(subjects, durable=None, stream=stream)
        ids: Counter[str] = Counter()
        last, in_order = -1, True
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=2)
            except TimeoutError:  # nats.errors.TimeoutError, or asyncio's from deeper in fetch
                break
            for m in msgs:
                headers = m.headers or {}
                ids[headers.get("Nats-Msg-Id", "")] += 1
                position = int(headers.get(HEADER_POSITION, "-1"))
                in_order = in_order and position > last
                last = position
                await m.ack()
        await sub.unsubscribe()
        return StreamContents(messages=info.state.messages, ids=ids, in_order=in_order)
    finally:
        await nc.close()
