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
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from schemas.events import EVENT_TYPE_BY_TAG
from service.config import Settings
from service.embedded import EmbeddedNats
from service.nats_client import STREAM_NAME, SUBJECT_PREFIX, connect_nats
from service.relay import HEADER_TRIMMED
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


def _one_line(text: object) -> str:
    """Error messages may span lines; a tail line never does."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


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


def _size(n: object) -> str:
    if not isinstance(n, int):
        return "? bytes"
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


def _error_text(error: object) -> str:
    if isinstance(error, dict):
        return f"{error.get('kind', 'error')}: {error.get('message', '')}"
    return str(error)


def _details(kind: str, data: Mapping[str, Any]) -> str:
    """The type-specific part of a line: node, status, error where the type has them."""
    node = data.get("node_id")
    parts: list[str] = []
    match kind:
        case "run_queued":
            parts.append(f"version {data.get('workflow_version', '?')}")
            if data.get("parent_run_id"):
                parts.append(f"parent {data['parent_run_id']}")
        case "run_started" | "run_recovered":
            if data.get("worker_id"):
                parts.append(f"worker {data['worker_id']}")
            if kind == "run_recovered":
                parts.append(f"{len(data.get('completed_nodes') or [])} node(s) already done")
        case "node_execute_before":
            parts.append(f"{node} ({data.get('node_type', '?')}) attempt {data.get('attempt', 1)}")
        case "node_execute_after":
            parts.append(f"{node} {data.get('status', '?')} in {float(data.get('duration_ms', 0)):.0f} ms")
            if data.get("status") == "succeeded":
                parts.append(f"{data.get('item_count', 0)} item(s)")
            if data.get("error"):
                parts.append(f"error {_error_text(data['error'])}")
        case "node_execute_after_data":
            parts.append(f"{node} output {_size(data.get('output_bytes', 0))}")
            if data.get("marker"):
                parts.append("(over the cap: marker only)")
        case "node_retry_scheduled":
            parts.append(f"{node} attempt {data.get('next_attempt', '?')} in {data.get('delay_ms', '?')} ms")
            if data.get("error"):
                parts.append(f"after {_error_text(data['error'])}")
        case "node_skipped":
            parts.append(f"{node}")
            if data.get("reason"):
                parts.append(f"reason {data['reason']}")
        case "run_finished":
            parts.append(f"{data.get('status', '?')} in {float(data.get('duration_ms', 0)):.0f} ms")
            if data.get("error"):
                parts.append(f"error {data['error']}")
        case "run_waiting" | "run_resumed" | "run_cancel_requested" | "run_cancelled":
            if node:
                parts.append(f"{node}")
            if data.get("reason"):
                parts.append(f"reason {data['reason']}")
            if data.get("requested_by"):
                parts.append(f"by {data['requested_by']}")
    return " ".join(parts)


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
            f"{node}[trimmed: {_size(data.get('size_bytes'))} body not sent on NATS; full event at {url}]"
        )
    else:
        details = _details(kind, data)
    return _one_line(f"{head} {details}" if details else head)


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
    out = out or sys.stdout
    err = err or sys.stderr
    filters = subject_filters(subject_prefix, tenant=tenant, workflow=workflow, run=run, types=types)
    js = nc.jetstream()
    try:
        await js.stream_info(stream)
    except NotFoundError:
        raise TailError(
            f"stream {stream} does not exist on this NATS server; `flowledger serve` creates it "
            "(is --nats-url the server the service publishes to?)"
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
    count = 0

    def emit(msg: Msg) -> None:
        nonlocal count
        if wanted is not None and msg.subject.rsplit(".", 1)[-1] not in wanted:
            return
        headers = msg.headers or {}
        try:
            envelope = _json_decoder.decode(msg.data)
            if not isinstance(envelope, dict):
                raise msgspec.DecodeError("not a JSON object")
        except msgspec.DecodeError:
            err.write(f"skipped {msg.subject}: {len(msg.data)} bytes that are not a Flowledger envelope\n")
            err.flush()
            return
        if fmt == "ndjson":
            out.write(msg.data.decode() + "\n")
            if headers.get(HEADER_TRIMMED) == "true":
                err.write(f"note: {format_line(envelope, headers, api_url=api_url)}\n")
                err.flush()
        else:
            out.write(format_line(envelope, headers, api_url=api_url) + "\n")
        out.flush()
        count += 1

    async def consume() -> None:
        messages = sub.messages
        while max_events is None or count < max_events:
            try:
                if idle_exit_s is None:
                    msg = await anext(messages)
                else:
                    async with asyncio.timeout(idle_exit_s):
                        msg = await anext(messages)
            except (StopAsyncIteration, TimeoutError):  # unsubscribed / idle for idle_exit_s
                return
            emit(msg)

    consumer = asyncio.create_task(consume())
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
    return count


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
    embedded: EmbeddedNats | None = None
    try:
        url = settings.nats_url
        if url is None:
            # Reuses the server `flowledger serve` started under --home; one started here is
            # empty (no stream) and stopped again on exit.
            embedded = EmbeddedNats(settings.home)
            url = await asyncio.to_thread(embedded.start)
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
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
