"""NATS: connections, the JetStream stream, and what a published message looks like (its subject,
headers and payload). Every NATS name the service uses comes from here (defined in ``schemas.names``)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from urllib.parse import urlsplit

import msgspec
import nats
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamInfo
from nats.js.errors import APIError, NotFoundError

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
MAX_REPLICAS = 5
"""JetStream's own limit on a stream's replicas."""
_ERR_REPLICAS_NOT_CLUSTERED = 10074
"""JetStream API error code: "replicas > 1 not supported in non-clustered mode"."""
_SCHEMES = ("nats", "tls", "ws", "wss")


class MessagingUnavailable(RuntimeError):
    """NATS could not be reached; the message names the (masked) URL."""


class InvalidNatsUrl(MessagingUnavailable):
    """``FLOWLEDGER_NATS_URL`` is not a comma-separated list of NATS server URLs; the message
    names the (masked) entry and what is wrong with it."""


class StreamReplicasUnsupported(MessagingUnavailable):
    """More than one replica was asked of a NATS server that is not part of a cluster."""


def parse_nats_servers(url: str) -> list[str]:
    """The servers of a NATS URL setting: one URL or a comma-separated seed list
    (``nats://n1:4222,nats://n2:4222``), each ``nats://``, ``tls://``, ``ws://`` or ``wss://``
    (a bare ``host:port`` means ``nats://host:port``, as in nats-py).

    The client connects to any of them and learns the rest of the cluster from the server, so a
    seed list need not name every node, but naming them all lets a client start while any one is
    down. Raises ``InvalidNatsUrl`` naming the first malformed entry.
    """
    entries = [entry.strip() for entry in url.split(",")]
    servers: list[str] = []
    for index, entry in enumerate(entries, start=1):
        where = f"entry {index} of {len(entries)}" if len(entries) > 1 else "the URL"
        if not entry:
            raise InvalidNatsUrl(
                f"invalid NATS URL list {mask_url(url)!r}: {where} is empty "
                "(expected nats://host:port, comma-separated)"
            )
        normalized = entry if "://" in entry else f"nats://{entry}"
        problem = _url_problem(normalized)
        if problem is not None:
            raise InvalidNatsUrl(
                f"invalid NATS URL {mask_url(entry)!r} ({where}): {problem} (expected nats://host:port)"
            )
        servers.append(normalized)
    websocket = {urlsplit(s).scheme in ("ws", "wss") for s in servers}
    if len(websocket) > 1:
        raise InvalidNatsUrl(
            f"invalid NATS URL list {mask_url(url)!r}: ws:// and wss:// cannot be mixed with nats:// or tls://"
        )
    return servers


def _url_problem(url: str) -> str | None:
    """Why ``url`` is not a NATS server URL, or None."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a non-numeric or out-of-range port
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in _SCHEMES:
        return f"scheme {parts.scheme!r} is not one of {', '.join(s + '://' for s in _SCHEMES)}"
    if not parts.hostname:
        return "no host"
    if port == 0:
        return "port 0"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "a server URL has no path, query or fragment"
    return None


async def connect_nats(
    url: str,
    *,
    name: str = "flowledger",
    connect_timeout: float = 5.0,
    on_reconnect: Callable[[], None] | None = None,
) -> NATS:
    """Connect with endless reconnects (the relay rides out NATS restarts and node losses).

    ``url``: one server or a comma-separated seed list (``parse_nats_servers``); the client
    reconnects to any server of the list or of the cluster the server announces.
    Raises ``InvalidNatsUrl`` for a malformed list and ``MessagingUnavailable`` with one
    human-readable line when the first connection cannot be made.
    """

    servers = parse_nats_servers(url)
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
            servers=servers,
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


def stream_config(
    name: str = STREAM_NAME, subject_prefix: str = SUBJECT_PREFIX, *, replicas: int | None = 1
) -> StreamConfig:
    """The event stream: every run event, file-backed, kept by limits (never work-queue), on
    ``replicas`` servers of the cluster (R3 survives the loss of any one node).

    ``replicas=None``: ``ensure_stream`` leaves an existing stream's replica count as it is
    (a new stream gets one), so a command that merely uses the stream never rescales it."""
    if replicas is not None and not 1 <= replicas <= MAX_REPLICAS:
        raise ValueError(f"replicas must be 1..{MAX_REPLICAS}, not {replicas}")
    return StreamConfig(
        name=name,
        subjects=[f"{subject_prefix}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_S,
        allow_direct=True,
        num_replicas=replicas,
        description="Flowledger run events, relayed from the PostgreSQL log in global order",
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> StreamInfo:
    """Create the stream, or update it to ``config`` if it exists (JetStream scales an existing
    stream's replicas, R1 <-> R3, in place on a cluster; ``num_replicas=None`` keeps them).
    Returns the stream's info afterwards.

    Raises ``StreamReplicasUnsupported`` when ``config`` asks for more than one replica of a
    server that is not clustered.
    """
    name = config.name or ""
    replicas = config.num_replicas or 1
    try:
        try:
            current = await js.stream_info(name)
        except NotFoundError:
            info = await js.add_stream(config)
            log.info("nats_stream_created", stream=name, replicas=replicas)
            return info
        was = current.config.num_replicas or 1
        if config.num_replicas is None:  # keep what the stream has (an omitted field would mean 1)
            config, replicas = dataclasses.replace(config, num_replicas=was), was
        # A stream of a cluster names it. Checked here because some servers (2.9) accept, and
        # then report, replicas a non-clustered server cannot have; newer ones refuse (below).
        if replicas > 1 and not (current.cluster and current.cluster.name):
            raise _replicas_unsupported(name, replicas)
        info = await js.update_stream(config)
    except APIError as exc:
        if exc.err_code == _ERR_REPLICAS_NOT_CLUSTERED:
            raise _replicas_unsupported(name, replicas) from None
        raise
    if was != replicas:
        log.info("nats_stream_replicas_changed", stream=name, replicas_before=was, replicas=replicas)
    return info


def _replicas_unsupported(stream: str, replicas: int) -> StreamReplicasUnsupported:
    return StreamReplicasUnsupported(
        f"stream {stream} asks for {replicas} replicas but the NATS server is not part of a "
        "cluster (JetStream: replicas > 1 not supported in non-clustered mode); set "
        "FLOWLEDGER_NATS_REPLICAS=1 (--nats-replicas 1) or point FLOWLEDGER_NATS_URL at a "
        'cluster (see docs/operations.md, "NATS cluster")'
    )


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
