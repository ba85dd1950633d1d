"""The envelope every stored, published and served event travels in."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Generic, TypeVar
from uuid import UUID

import msgspec

from schemas.events import Event

DataT = TypeVar("DataT")


class Envelope(msgspec.Struct, Generic[DataT], frozen=True, gc=False):
    """One event of a run stream as stored in ``flowledger.events``.

    ``seq`` is 0-based and contiguous within the run; ``global_position`` orders
    the whole log. ``hash`` is SHA-256 over ``prev_hash`` and the canonical bytes
    of this event (see ``schemas.canonical``), hex-encoded.
    """

    event_id: UUID
    run_id: UUID
    seq: int
    global_position: int
    type: str
    tenant: str
    workflow_id: str
    recorded_at: Annotated[datetime, msgspec.Meta(tz=True)]
    schema_version: int
    prev_hash: str | None
    hash: str
    data: DataT


EventEnvelope = Envelope[Event]
"""Envelope with a decoded body: what typed consumers read."""

RawEnvelope = Envelope[msgspec.Raw]
"""Envelope with the body kept as the exact stored JSON bytes (no re-encoding)."""


class LogEvent(msgspec.Struct, frozen=True, gc=False):
    """An event as the projections' folds read it: an ``EventEnvelope`` without what no fold
    looks at (event id, schema version, hash chain), so a rebuild need not read those, and
    with the run id as the text the views store (folds take ``str(event.run_id)``)."""

    run_id: str
    seq: int
    global_position: int
    type: str
    tenant: str
    workflow_id: str
    recorded_at: Annotated[datetime, msgspec.Meta(tz=True)]
    data: Event


FoldEvent = EventEnvelope | LogEvent
"""What a projection folds: a whole envelope (the live runners) or a ``LogEvent`` (a rebuild)."""
