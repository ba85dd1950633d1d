"""Helpers for relay tests: write events, wait for the relay, read the whole stream back."""

from __future__ import annotations

import asyncio
import time
import uuid

from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from schemas.envelope import RawEnvelope
from schemas.events import NodeExecuteBefore, RunQueued
from service.followers.relay import Relay
from service.infra.nats import HEADER_POSITION, HEADER_SEQ
from service.store.event_store import EventStore


async def write_runs(store: EventStore, runs: int, events_per_run: int) -> list[RawEnvelope]:
    async def one() -> list[RawEnvelope]:
        run = uuid.uuid4()
        out = await store.append(run, [RunQueued(workflow_version="v")], 0, tenant="acme", workflow_id="wf-1")
        for seq in range(1, events_per_run):
            out += await store.append(
                run,
                [NodeExecuteBefore(node_id=f"n{seq}", node_type="noop")],
                seq,
                tenant="acme",
                workflow_id="wf-1",
            )
        return out

    batches = await asyncio.gather(*[one() for _ in range(runs)])
    return [e for b in batches for e in b]


async def wait_relayed(relays: list[Relay], store: EventStore, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    head = await store.head_position()
    while max(r.status.published_position for r in relays) < head:
        if time.monotonic() > deadline:
            statuses = [r.status for r in relays]
            raise AssertionError(f"relay did not reach position {head}: {statuses}")
        await asyncio.sleep(0.05)


async def stream_messages(nc: NATS, stream: str) -> list[tuple[str, dict[str, str], bytes]]:
    """Every message in the stream, in stream order."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq=seq)
        except NotFoundError:
            continue
        out.append((msg.subject or "", dict(msg.headers or {}), msg.data or b""))
    return out


def assert_exactly_once_in_order(
    messages: list[tuple[str, dict[str, str], bytes]], events: list[RawEnvelope], prefix: str
) -> None:
    expected = sorted(events, key=lambda e: e.global_position)
    assert len(messages) == len(expected), f"{len(messages)} messages for {len(expected)} events"
    for (subject, headers, data), event in zip(messages, expected, strict=True):
        assert headers["Nats-Msg-Id"] == str(event.event_id)
        assert headers[HEADER_POSITION] == str(event.global_position)
        assert headers[HEADER_SEQ] == str(event.seq)
        assert subject == f"{prefix}.{event.tenant}.{event.workflow_id}.{event.run_id}.{event.type}"
        from schemas.codec import raw_envelope_decoder

        assert raw_envelope_decoder.decode(data) == event
