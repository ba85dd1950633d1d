"""Hash-chained runs built exactly as the event store links them, and the ways a forger tampers with one.

Each tampering returns a ``Tampered``: the tampered events, the ``(run_id, seq)`` of the FIRST
problem ``verify_chain`` must report, and whether that must be the ONLY problem.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from schemas.canonical import ChainProblem, canonical_header, chain_hash, envelope_hash
from schemas.codec import encode_event
from schemas.envelope import RawEnvelope
from schemas.events import SCHEMA_VERSION, Event, event_tag


def build_chain(
    run_id: UUID, tenant: str, workflow_id: str, links: Iterable[tuple[UUID, datetime, Event]]
) -> list[RawEnvelope]:
    """A run's stored envelopes, linked exactly as ``EventStore._write_batch_txn`` links them."""
    chain: list[RawEnvelope] = []
    prev: bytes | None = None
    for seq, (event_id, recorded_at, event) in enumerate(links):
        data = encode_event(event)
        tag = event_tag(event)
        header = canonical_header(
            event_id, run_id, seq, tag, tenant, workflow_id, recorded_at, SCHEMA_VERSION
        )
        digest = chain_hash(prev, header, data)
        chain.append(
            RawEnvelope(
                event_id=event_id,
                run_id=run_id,
                seq=seq,
                global_position=seq + 1,
                type=tag,
                tenant=tenant,
                workflow_id=workflow_id,
                recorded_at=recorded_at,
                schema_version=SCHEMA_VERSION,
                prev_hash=prev.hex() if prev else None,
                hash=digest.hex(),
                data=msgspec.Raw(data),
            )
        )
        prev = digest
    return chain


Verifier = Callable[[Iterable[RawEnvelope]], list[ChainProblem]]
Tampered = tuple[list[RawEnvelope], tuple[UUID, int], bool]


def replaced(chain: list[RawEnvelope], index: int, **changes: Any) -> list[RawEnvelope]:
    out = list(chain)
    out[index] = msgspec.structs.replace(chain[index], **changes)
    return out


def flip_data_byte(chain: list[RawEnvelope], index: int, position: int, new_byte: int) -> Tampered:
    data = bytearray(chain[index].data)
    assert data[position] != new_byte
    data[position] = new_byte
    # Only this event's own hash no longer matches; the next link still names its stored hash.
    return replaced(chain, index, data=msgspec.Raw(bytes(data))), (chain[index].run_id, index), True


HEADER_FIELDS = (
    "seq",
    "type",
    "tenant",
    "workflow_id",
    "recorded_at",
    "event_id",
    "run_id",
    "schema_version",
)


def change_header(chain: list[RawEnvelope], index: int, field: str, value: Any) -> Tampered:
    old = chain[index]
    assert getattr(old, field) != value
    tampered = replaced(chain, index, **{field: value})
    if field == "seq":
        # Reported under the (forged) seq the event now carries; later events are off by then.
        return tampered, (old.run_id, value), False
    if field == "run_id":
        # Reported under the forged run; when it is the first event, all later ones look foreign.
        return tampered, (value, index), False
    # Every other covered header field changes only this event's own hash.
    return tampered, (old.run_id, index), True


def remove_event(chain: list[RawEnvelope], index: int) -> Tampered:
    # The event after the hole carries the next seq and names the removed event's hash.
    assert index < len(chain) - 1
    return chain[:index] + chain[index + 1 :], (chain[index].run_id, index + 1), False


def swap_events(chain: list[RawEnvelope], i: int, j: int) -> Tampered:
    assert i < j
    out = list(chain)
    out[i], out[j] = out[j], out[i]
    return out, (chain[i].run_id, j), False


def rehash_with_other_data(chain: list[RawEnvelope], index: int, data: bytes) -> Tampered:
    """Event ``index`` gets new contents and a correctly recomputed hash of its own."""
    assert index < len(chain) - 1
    assert bytes(chain[index].data) != data
    forged = msgspec.structs.replace(chain[index], data=msgspec.Raw(data))
    forged = msgspec.structs.replace(forged, hash=envelope_hash(forged).hex())
    out = list(chain)
    out[index] = forged
    # The forged event verifies on its own; only the following link exposes it.
    return out, (chain[index].run_id, index + 1), True
