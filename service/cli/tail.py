"""``flowledger tail``: print run events live from the NATS stream, as any subscriber sees them.

Nothing durable is created: an ephemeral ordered consumer (in-order, gap-free,
recreated by nats-py on a sequence gap) starts at new messages, or at the
beginning of the stream with ``from_start``. ``format_line`` is pure; ``tail``
is the I/O loop and takes the stream and subject prefix so tests can point it
at a stream of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import threading
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TextIO

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from schemas.events import EVENT_TYPE_BY_TAG
from service.cli._common import byte_size, describe_event
from service.config import Settings
from service.infra.embedded import EmbeddedServers
from service.infra.nats import HEADER_TRIMMED, STREAM_NAME, SUBJECT_PREFIX, connect_nats
from service.urls import mask_url

TailFormat = Literal["line", "ndjson"]

_IDENTIFIER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_json_decoder = msgspec.json.Decoder()


class TailOptionError(ValueError):
    """An option value that can never match a published subject; ``option`` names the flag."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


class TailError(RuntimeError):
    """Tailing cannot start (no such stream); the message says what to do."""


def _check_token(option: str, value: str) -> None:
    """NATS subject token rules: non-empty, no whitespace, no ``.``, no wildcards."""
    if not value:
        raise TailOptionError(option, "must not be empty")
    for bad, what in (
        (".", "a dot (it separates subject tokens)"),
        ("*", "'*' (a wildcard: leave the option out to match every value)"),
        (">", "'>' (a wildcard: leave the option out to match every value)"),
    ):
        if bad in value:
            raise TailOptionError(option, f"{value!r} contains {what}")
    if any(ch.isspace() for ch in value):
        raise TailOptionError(option, f"{value!r} contains whitespace (not allowed in a NATS subject token)")


def subject_filters(
    subject_prefix: str = SUBJECT_PREFIX,
    *,
    tenant: str = "default",
    workflow: str | None = None,
    run: str | None = None,
    types: Iterable[str] = (),
) -> list[str]:
    """Subject filters for the options: one per type (``*`` where an option is left out).

    Raises ``TailOptionError`` for a value that is not a valid subject token or
    could never appear in one (a workflow id outside ``[A-Za-z0-9_-]{1,64}``, a
    run id that is not a UUID, an unknown event type). A run id is normalised
    to the lowercase hyphenated form the relay publishes.
    """
    _check_token("--tenant", tenant)
    if not _IDENTIFIER.match(tenant):
        raise TailOptionError("--tenant", f"{tenant!r} is not a tenant id ([A-Za-z0-9_-]{{1,64}})")
    if workflow is not None:
        _check_token("--workflow", workflow)
        if not _IDENTIFIER.match(workflow):
            raise TailOptionError("--workflow", f"{workflow!r} is not a workflow id ([A-Za-z0-9_-]{{1,64}})")
    run_token = "*"
    if run is not None:
        _check_token("--run", run)
        try:
            run_token = str(uuid.UUID(run))
        except ValueError:
            raise TailOptionError("--run", f"{run!r} is not a run id (a UUID)") from None
    type_tokens = list(dict.fromkeys(types)) or ["*"]
    for t in type_tokens:
        if t == "*":
            continue
        _check_token("--type", t)
        if t not in EVENT_TYPE_BY_TAG:
            known = ", ".join(EVENT_TYPE_BY_TAG)
            raise TailOptionError("--type", f"unknown event type {t!r}; known types: {known}")
    head = f"{subject_prefix}.{tenant}.{workflow or '*'}.{run_token}"
    return [f"{head}.{t}" for t in type_tokens]


def _short_time(recorded_at: object) -> str:
    """RFC 3339 UTC cut to milliseconds: ``2024-05-01T12:00:00.123Z``."""
    text = str(recorded_at)
    head, dot, frac = text.partition(".")
    if not dot:
        return text
    digits = frac.rstrip("Z")
    return f"{head}.{digits[:3].ljust(3, '0')}Z" if frac.endswith("Z") else text


def _short_run(run_id: object) -> str:
    # The last 8 hex digits: a UUID v7 starts with its timestamp, so runs started
    # within the same minute share their first 8 digits but not their random tail.
    text = str(run_id).replace("-", "")
    return text[-8:] if len(text) >= 8 else text


def format_line(envelope: Mapping[str, Any], headers: Mapping[str, str] | None, *, api_url: str = "") -> str:
    """One line for one published event: time, workflow, run (short), seq, type, details.

    Pure. Tolerates unknown types and missing fields (a newer publisher); a
    trimmed event (header ``Flowledger-Trimmed: true``) says where the full
    body is, prefixed with ``api_url`` when given.
    """
    kind = str(envelope.get("type", "?"))
    data = envelope.get("data")
    data = data if isinstance(data, Mapping) else {}
    trimmed = (headers or {}).get(HEADER_TRIMMED) == "true" or data.get("trimmed") is True
    head = (
        f"{_short_time(envelope.get('recorded_at', '?'))} "
        f"{envelope.get('workflow_id', '?')} "
        f"{_short_run(envelope.get('run_id', '?'))} "
        f"#{envelope.get('seq', '?')} {kind}"
    )
    if trimmed:
        url = f"{api_url.rstrip('/')}{data.get('events_url', '')}"
        node = f"{data['node_id']} " if data.get("node_id") else ""
        details = (
            f"{node}[trimmed: {byte_size(data.get('size_bytes'))} body not sent on NATS; full event at {url}]"
        )
    else:
        details = describe_event(kind, data)
    line = f"{head} {details}" if details else head
    return line.replace("\r", "\\r").replace("\n", "\\n")


STREAM_INFO_ATTEMPTS = 5
"""Tries of the stream lookup (each up to nats-py's 5 s request timeout) before giving up."""


async def _subscribe(
    nc: NATS, stream: str, filters: list[str], *, from_start: bool
) -> tuple[JetStreamContext.PushSubscription, set[str] | None]:
    """An ordered consumer for ``filters``, and the event types to keep client-side (None: all)."""
    js = nc.jetstream()
    for attempt in range(STREAM_INFO_ATTEMPTS):
        try:
            await js.stream_info(stream)
            break
        except NotFoundError:
            raise TailError(
                f"stream {stream} does not exist on this NATS server; `flowledger serve` creates it "
                "(is --nats-url the server the service publishes to?)"
            ) from None
        except nats.errors.TimeoutError:
            # JetStream does not answer while a cluster elects a leader (a node was lost).
            if attempt + 1 == STREAM_INFO_ATTEMPTS:
                raise TailError(
                    f"JetStream did not answer for stream {stream} ({STREAM_INFO_ATTEMPTS} tries); "
                    "is JetStream enabled, and does the cluster have a leader (a quorum of its nodes)?"
                ) from None
    # Several types are filtered here, not with the consumer's filter_subjects: servers
    # before 2.10 ignore that field silently and would deliver every event.
    server_filter, wanted = filters[0], None
    if len(filters) > 1:
        server_filter = filters[0].rsplit(".", 1)[0] + ".*"
        wanted = {f.rsplit(".", 1)[1] for f in filters}
    sub = await js.subscribe(
        server_filter,
        stream=stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL if from_start else DeliverPolicy.NEW,
        inactive_threshold=30.0,  # the server drops the consumer soon after we are gone
    )
    return sub, wanted


class _Printer:
    """Writes each message as it arrives (a line, or the payload as-is for ndjson) and counts them."""

    def __init__(self, fmt: TailFormat, api_url: str, out: TextIO, err: TextIO, wanted: set[str] | None):
        self.fmt, self.api_url, self.out, self.err, self.wanted = fmt, api_url, out, err, wanted
        self.count = 0

    def __call__(self, msg: Msg) -> None:
        if self.wanted is not None and msg.subject.rsplit(".", 1)[-1] not in self.wanted:
            return
        headers = msg.headers or {}
        try:
            envelope = _json_decoder.decode(msg.data)
            if not isinstance(envelope, dict):
                raise msgspec.DecodeError("not a JSON object")
        except msgspec.DecodeError:
            self.err.write(
                f"skipped {msg.subject}: {len(msg.data)} bytes that are not a Flowledger envelope\n"
            )
            self.err.flush()
            return
        if self.fmt == "ndjson":
            self.out.write(msg.data.decode() + "\n")
            if headers.get(HEADER_TRIMMED) == "true":
                self.err.write(f"note: {format_line(envelope, headers, api_url=self.api_url)}\n")
                self.err.flush()
        else:
            self.out.write(format_line(envelope, headers, api_url=self.api_url) + "\n")
        self.out.flush()
        self.count += 1


async def _consume(
    sub: JetStreamContext.PushSubscription,
    printer: _Printer,
    max_events: int | None,
    idle_exit_s: float | None,
) -> None:
    messages = sub.messages
    while max_events is None or printer.count < max_events:
        try:
            async with asyncio.timeout(idle_exit_s):
                msg = await anext(messages)
        except (StopAsyncIteration, TimeoutError):  # unsubscribed / idle for idle_exit_s
            return
        printer(msg)


async def tail(
    nc: NATS,
    *,
    tenant: str = "default",
    workflow: str | None = None,
    run: str | None = None,
    types: Iterable[str] = (),
    fmt: TailFormat = "line",
    from_start: bool = False,
    stream: str = STREAM_NAME,
    subject_prefix: str = SUBJECT_PREFIX,
    api_url: str = "",
    out: TextIO | None = None,
    err: TextIO | None = None,
    stop: asyncio.Event | None = None,
    max_events: int | None = None,
    idle_exit_s: float | None = None,
) -> int:
    """Print matching events until ``stop`` is set (or ``max_events`` / ``idle_exit_s``); returns the count.

    Raises ``TailOptionError`` for bad option values and ``TailError`` when the
    stream does not exist. Each event is written and flushed as it arrives, in
    stream order (so a run's events in seq order). ``ndjson`` writes the
    payload exactly as received, one per line; a note about a trimmed event
    goes to ``err`` so stdout stays pure NDJSON.
    """
    filters = subject_filters(subject_prefix, tenant=tenant, workflow=workflow, run=run, types=types)
    sub, wanted = await _subscribe(nc, stream, filters, from_start=from_start)
    printer = _Printer(fmt, api_url, out or sys.stdout, err or sys.stderr, wanted)
    consumer = asyncio.create_task(_consume(sub, printer, max_events, idle_exit_s))
    waiter = asyncio.create_task((stop or asyncio.Event()).wait())
    try:
        await asyncio.wait({consumer, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if consumer.done():
            consumer.result()  # re-raises an output error (e.g. a closed pipe)
    finally:
        for task in (consumer, waiter):
            task.cancel()
        for task in (consumer, waiter):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):  # the connection may be gone already
            await sub.unsubscribe()
    return printer.count


async def run_tail(settings: Settings, **options: Any) -> int:
    """The CLI's tail: connect (reusing the embedded server when no URL is set), tail until Ctrl-C.

    SIGINT and SIGTERM end it cleanly. Returns the number of events printed.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled: list[signal.Signals] = []
    # Loop signal handlers exist on POSIX and only in the main thread (elsewhere Ctrl-C still
    # raises KeyboardInterrupt, which the CLI turns into a clean exit).
    if sys.platform != "win32" and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    # Reuses the server `flowledger serve` started under --home; one started here is
    # empty (no stream) and stopped again on exit.
    embedded = EmbeddedServers(settings.home, create=False)
    try:
        url = await asyncio.to_thread(embedded.nats_url, settings.nats_url)
        nc = await connect_nats(url, name="flowledger-tail")
        try:
            if stop.is_set():
                return 0
            try:
                return await tail(nc, stop=stop, **options)
            except TailError as exc:
                raise TailError(f"{exc} [NATS {mask_url(url)}]") from None
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await asyncio.to_thread(embedded.stop)
