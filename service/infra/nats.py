"""NATS: connections, the JetStream stream, and what a published message looks like (its subject,
headers and payload). Every NATS name the service uses comes from here (defined in ``schemas.names``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import msgspec
import nats
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from schemas.asyncapi import TrimmedEventData
from schemas.codec import json_encoder
from schemas.envelope import RawEnvelope
from schemas.names import (
    HEADER_POSITION,
    HEADER_REPLAY,
    HEADER_SEQ,
    HEADER_SOURCE,
    HEADER_TRIMMED,
    REPLAY_SUBJECT_PREFIX,
    STREAM_NAME,
    SUBJECT_PREFIX,
)
from service.urls import mask_url

log = structlog.get_logger(__name__)

__all__ = [
    "HEADER_POSITION",
    "HEADER_REPLAY",
    "HEADER_SEQ",
    "HEADER_SOURCE",
    "HEADER_TRIMMED",
    "PAYLOAD_HEADROOM",
    "REPLAY_SUBJECT_PREFIX",
    "STREAM_NAME",
    "SUBJECT_PREFIX",
]

PAYLOAD_HEADROOM = 4096
"""Headers and protocol framing travel within the server's max_payload too."""
DUPLICATE_WINDOW_S = 600.0
"""Dedupe window: far longer than the relay's longest retry pause (a few seconds)."""


class MessagingUnavailable(RuntimeError):
    """NATS could not be reached; the message names the (masked) URL."""


async def connect_nats(
    url: str,
    *,
    name: str = "flowledger",
    connect_timeout: float = 5.0,
    on_reconnect: Callable[[], None] | None = None,
) -> NATS:
    """Connect with endless reconnects (the relay rides out NATS restarts).

    Raises ``MessagingUnavailable`` with one human-readable line when the
    first connection cannot be made.
    """

    nc = NATS()
    connected = False
    connect_errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        if connected:
            log.warning("nats_error", error=str(exc) or type(exc).__name__)
        else:  # a failed first connect is reported once, below
            connect_errors.append(exc)

    async def on_disconnect() -> None:
        if not (nc.is_closed or nc.is_draining):  # a deliberate close is not news
            log.warning("nats_disconnected", url=mask_url(url))

    async def reconnected() -> None:
        log.info("nats_reconnected", url=mask_url(url))
        if on_reconnect is not None:
            on_reconnect()

    try:
        # The first connect fails fast; only once connected does the client retry forever.
        await nc.connect(
            servers=[url],
            name=name,
            connect_timeout=int(connect_timeout),
            allow_reconnect=True,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.25,  # type: ignore[arg-type]
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=reconnected,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        cause = connect_errors[-1] if connect_errors else exc  # "no servers available" hides the reason
        reason = str(cause) or type(cause).__name__
        await _close_quietly(nc)
        raise MessagingUnavailable(f"cannot connect to NATS at {mask_url(url)}: {reason}") from exc
    connected = True
    nc.options["max_reconnect_attempts"] = -1  # read by the client at each reconnect
    return nc


async def _close_quietly(nc: NATS) -> None:
    try:
        await nc.close()
    except Exception:  # closing a never-connected client may raise; nothing to release then
        log.debug("nats_close_failed")


def stream_config(name: str = STREAM_NAME, subject_prefix: str = SUBJECT_PREFIX) -> StreamConfig:
    """The event stream: every run event, file-backed, kept by limits (never work-queue)."""
    return StreamConfig(
        name=name,
        subjects=[f"{subject_prefix}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_S,
        allow_direct=True,
        description="Flowledger run events, relayed from the PostgreSQL log in global order",
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or update it to ``config`` if it exists."""
    try:
        await js.stream_info(config.name or "")
    except NotFoundError:
        await js.add_stream(config)
        log.info("nats_stream_created", stream=config.name)
        return
    await js.update_stream(config)


def event_subject(prefix: str, event: RawEnvelope) -> str:
    """``<prefix>.<tenant>.<workflow_id>.<run_id>.<type>``."""
    return f"{prefix}.{event.tenant}.{event.workflow_id}.{event.run_id}.{event.type}"


class _NodeRef(msgspec.Struct):
    node_id: str | None = None


_node_ref_decoder = msgspec.json.Decoder(_NodeRef)


def payload_cap(nc: NATS) -> int:
    """The largest envelope sent whole on NATS (and to push clients): the server's max_payload
    less room for headers and framing. A larger one goes as ``trimmed_payload``."""
    return int(nc.max_payload) - PAYLOAD_HEADROOM


def capped_payload(event: RawEnvelope, cap: int) -> tuple[bytes, bool]:
    """The envelope JSON, or its trimmed form when it is over ``cap``; and whether it was trimmed."""
    payload = json_encoder.encode(event)
    return (trimmed_payload(event), True) if len(payload) > cap else (payload, False)


def trimmed_payload(event: RawEnvelope) -> bytes:
    """The envelope with its body replaced by a pointer to the full event (same hash and seq),
    for a body too large for one NATS message (sent with ``Flowledger-Trimmed: true``)."""
    marker = TrimmedEventData(
        trimmed=True,
        type=event.type,
        size_bytes=len(event.data),
        sha256=hashlib.sha256(bytes(event.data)).hexdigest(),
        events_url=f"/v1/runs/{event.run_id}/events?after_seq={event.seq - 1}&limit=1",
        node_id=_node_ref_decoder.decode(event.data).node_id,
    )
    return json_encoder.encode(msgspec.structs.replace(event, data=msgspec.Raw(json_encoder.encode(marker))))
