"""Canonical bytes and the per-run SHA-256 hash chain (tamper evidence).

hash(event) = SHA-256(prev_hash || header || data) where ``prev_hash`` is the
previous event's 32-byte hash (empty for seq 0), ``header`` the compact JSON of
the envelope fields below in this fixed order, and ``data`` the exact stored JSON
bytes of the body. ``global_position`` is not covered: it is assigned by the log,
while the chain pins each run's own history. Any change to a covered field, a
removed (non-last) event or a reordered event breaks the chain from that point
on. A chain alone cannot reveal a truncated tail or a history re-hashed from
some event to its end: that takes an outside reference to the head (the copy on
the NATS stream, an exported bundle's digest).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

import msgspec

from schemas.envelope import RawEnvelope


class _HashHeader(msgspec.Struct, array_like=True):
    event_id: UUID
    run_id: UUID
    seq: int
    type: str
    tenant: str
    workflow_id: str
    recorded_at: datetime
    schema_version: int


_header_encoder = msgspec.json.Encoder()


def canonical_header(
    event_id: UUID,
    run_id: UUID,
    seq: int,
    type_tag: str,
    tenant: str,
    workflow_id: str,
    recorded_at: datetime,
    schema_version: int,
) -> bytes:
    """Canonical bytes of the envelope fields covered by the hash."""
    return _header_encoder.encode(
        _HashHeader(event_id, run_id, seq, type_tag, tenant, workflow_id, recorded_at, schema_version)
    )


def chain_hash(prev_hash: bytes | None, header: bytes, data: bytes) -> bytes:
    """SHA-256 of one link of a run's chain."""
    h = hashlib.sha256(prev_hash or b"")
    h.update(header)
    h.update(data)
    return h.digest()


def envelope_hash(event: RawEnvelope) -> bytes:
    """Recompute an envelope's hash from its own fields and stored prev_hash."""
    header = canonical_header(
        event.event_id,
        event.run_id,
        event.seq,
        event.type,
        event.tenant,
        event.workflow_id,
        event.recorded_at,
        event.schema_version,
    )
    prev = bytes.fromhex(event.prev_hash) if event.prev_hash else None
    return chain_hash(prev, header, bytes(event.data))


class ChainProblem(msgspec.Struct, frozen=True):
    """One defect found in a run's stored history."""

    run_id: UUID
    seq: int
    problem: str


def verify_chain(events: Iterable[RawEnvelope]) -> list[ChainProblem]:
    """Check one run's events (in stored order): contiguous seq from 0, each
    ``prev_hash`` equal to the previous ``hash``, each ``hash`` recomputed.

    Returns every problem found; an empty list means the history is intact.
    """
    problems: list[ChainProblem] = []
    expected_seq = 0
    prev_hash: str | None = None
    run_id: UUID | None = None
    for event in events:
        if run_id is None:
            run_id = event.run_id
        elif event.run_id != run_id:
            problems.append(ChainProblem(event.run_id, event.seq, f"event of another run among run {run_id}"))
            continue
        if event.seq != expected_seq:
            problems.append(
                ChainProblem(run_id, event.seq, f"seq {event.seq} where {expected_seq} was expected")
            )
        if event.prev_hash != prev_hash:
            problems.append(
                ChainProblem(run_id, event.seq, "prev_hash does not match the previous event's hash")
            )
        if envelope_hash(event).hex() != event.hash:
            problems.append(ChainProblem(run_id, event.seq, "hash does not match the event's contents"))
        expected_seq = event.seq + 1
        prev_hash = event.hash
    return problems
