"""Republish: send a run's stored events again, to NATS core subjects of their own.

For consumers that want to see one past run again (a test harness, a new
subscriber catching up on one run) without touching the live stream. Each
event goes to ``<prefix>.<tenant>.<workflow_id>.<run_id>.<type>`` (default
prefix ``flowledger.replay``) as the relay would publish it: payload = the
envelope JSON (trimmed to a pointer when too large, exactly like the relay),
headers ``Flowledger-Seq``, ``Flowledger-Global-Position``, ``Flowledger-Source``
(when the log has an installation id) and ``Flowledger-Replay: true``.

Deliberately no ``Nats-Msg-Id``: these are copies, and a JetStream stream that
happens to capture the replay subjects must not deduplicate them against the
originals. Publishing is core NATS, in seq order, on one connection, so one
subscriber receives them in order; the prefix may not be the live one.
"""

from __future__ import annotations

from uuid import UUID

import asyncpg
from nats.aio.client import Client as NATS

from schemas.codec import json_encoder
from service.infra.nats import (
    HEADER_POSITION,
    HEADER_REPLAY,
    HEADER_SEQ,
    HEADER_SOURCE,
    HEADER_TRIMMED,
    PAYLOAD_HEADROOM,
    REPLAY_SUBJECT_PREFIX,
    SUBJECT_PREFIX,
    event_subject,
    trimmed_payload,
)
from service.store.event_store import EventStore, UnknownRun
from service.store.installation import event_source

__all__ = ["DEFAULT_REPLAY_PREFIX", "HEADER_REPLAY", "InvalidPrefix", "check_prefix", "republish"]

DEFAULT_REPLAY_PREFIX = REPLAY_SUBJECT_PREFIX


class InvalidPrefix(ValueError):
    """A replay prefix that is not a literal NATS subject prefix; the message says why."""


def check_prefix(prefix: str) -> str:
    """``prefix`` unchanged when it is a literal subject prefix, else ``InvalidPrefix``.

    Literal means dot-separated non-empty tokens without whitespace or the
    wildcards ``*`` and ``>``: NATS rejects whitespace at publish time and
    silently drops or misroutes the others (``a..b``, ``x.*``, ``>``).
    """
    if not prefix:
        raise InvalidPrefix("the replay prefix must not be empty")
    if any(ch.isspace() for ch in prefix):
        raise InvalidPrefix(f"replay prefix {prefix!r} contains whitespace (not allowed in NATS subjects)")
    tokens = prefix.split(".")
    if "" in tokens:
        raise InvalidPrefix(
            f"replay prefix {prefix!r} has an empty token (a leading, trailing or double dot)"
        )
    wild = next((t for t in tokens if "*" in t or ">" in t), None)
    if wild is not None:
        raise InvalidPrefix(
            f"replay prefix {prefix!r} contains the wildcard token {wild!r}; "
            "messages are published to literal subjects only"
        )
    return prefix


def _overlaps(prefix: str, live_prefix: str) -> bool:
    return (
        prefix == live_prefix or prefix.startswith(live_prefix + ".") or live_prefix.startswith(prefix + ".")
    )


async def _source(store: EventStore) -> str | None:
    """The relay's ``Flowledger-Source`` of this log (installation id / schema), if it has one."""
    try:
        async with store.pool.acquire() as conn:
            return await event_source(conn, store.schema)
    except asyncpg.PostgresError:
        return None


async def republish(
    store: EventStore,
    nc: NATS,
    run_id: UUID,
    prefix: str = DEFAULT_REPLAY_PREFIX,
    *,
    live_prefix: str = SUBJECT_PREFIX,
    max_payload: int | None = None,
) -> int:
    """Publish every stored event of ``run_id`` in seq order; returns how many.

    Raises ``UnknownRun`` when the run has no events, ``InvalidPrefix`` when
    ``prefix`` is not a literal subject prefix and ``ValueError`` when it would
    publish into the live subjects (``live_prefix``).
    ``max_payload`` (default: the server's) decides which events are trimmed.
    Returns once NATS has received every message (a flush).
    """
    check_prefix(prefix)
    if _overlaps(prefix, live_prefix):
        raise ValueError(
            f"replay prefix {prefix!r} overlaps the live event subjects {live_prefix}.>; "
            f"use a prefix of its own such as {DEFAULT_REPLAY_PREFIX}"
        )
    events = await store.read_run(run_id)
    if not events:
        raise UnknownRun(f"no run {run_id}")
    source = await _source(store)
    limit = (nc.max_payload if max_payload is None else max_payload) - PAYLOAD_HEADROOM
    for event in events:
        headers = {
            HEADER_SEQ: str(event.seq),
            HEADER_POSITION: str(event.global_position),
            HEADER_REPLAY: "true",
        }
        if source is not None:
            headers[HEADER_SOURCE] = source
        payload = json_encoder.encode(event)
        if len(payload) > limit:
            payload, headers[HEADER_TRIMMED] = trimmed_payload(event), "true"
        await nc.publish(event_subject(prefix, event), payload, headers=headers)
    await nc.flush()
    return len(events)
