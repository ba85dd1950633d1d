"""Live routes: SSE per run and per tenant, and the n8n-compatible WebSocket push channel."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any
from uuid import UUID

import msgspec
import structlog
from litestar import Router, WebSocket, get, websocket
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, HeaderParameter, QueryParameter
from litestar.response import Stream

from schemas.events import EVENT_TYPE_BY_TAG
from service.api.auth import Principal
from service.api.dependencies import provide_runtime
from service.api.errors import problem, problem_responses
from service.domain.nesting import TooDeep, check_json_depth
from service.engine.control import RunAlreadyEnded, UnknownRun, request_cancel
from service.followers.push import HubClosing, Overflow, PushEvent, PushHub, all_events, run_events, sse_frame
from service.followers.push_messages import encode_message
from service.runtime import Runtime
from service.store.event_store import EventStore

log = structlog.get_logger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
HEARTBEAT_S = 15.0


MAX_SEQ = 2**31 - 1
"""seq is an ``integer`` column; global positions are ``bigint``."""
MAX_POSITION = 2**63 - 1


def _resume_point(value: str | None, name: str, maximum: int) -> int:
    if value is None or value == "":
        return -1
    try:
        point = int(value)
    except ValueError:
        raise problem(400, "Bad resume point", f"{name} must be an integer, not {value!r}") from None
    if not -1 <= point <= maximum:
        raise problem(400, "Bad resume point", f"{name} must be between -1 and {maximum}, not {point}")
    return point


async def _refuse_resume(
    store: EventStore, run_id: UUID, resume: int, tenant: str
) -> tuple[int, str, str] | None:
    """Why a run cannot be streamed from ``resume`` (status, title, detail), or None.

    Another tenant's run is unknown. A resume point past the run's last stored event names
    an event nobody was sent (the log is always ahead of what is pushed): a client bug,
    answered at once.
    """
    if await store.run_tenant(run_id) != tenant:
        return 404, "Unknown run", f"no run {run_id}"
    if resume >= 0 and not await store.read_run(run_id, after_seq=resume - 1, limit=1):
        return 400, "Bad resume point", f"run {run_id} has no event {resume}: it is past the run's last event"
    return None


def _hub(runtime: Runtime) -> PushHub:
    if runtime.push is None:
        raise problem(503, "Service not ready", "live push is not running")
    return runtime.push


KEEP_ALIVE = b": keep-alive\n\n"


async def _sse(events: AsyncIterator[list[PushEvent] | None], *, by_position: bool) -> AsyncIterator[bytes]:
    """Pre-encoded SSE frames: a run's frame is built once and written to every client as is;
    the events ready at once go out in one write."""
    try:
        async for batch in events:
            if batch is None:
                yield KEEP_ALIVE
            elif by_position:
                yield b"".join([sse_frame(e.global_position, e.type, e.payload) for e in batch])
            elif len(batch) == 1:
                yield batch[0].sse_frame
            else:
                yield b"".join([e.sse_frame for e in batch])
    except Overflow as exc:
        yield b"event: error\ndata: %s\n\n" % msgspec.json.encode({"message": str(exc)})
    except HubClosing:
        return  # shutting down: the client reconnects with Last-Event-ID and misses nothing


def _sse_response(frames: AsyncIterator[bytes]) -> Stream:
    return Stream(frames, media_type="text/event-stream", headers=SSE_HEADERS)


@get(
    "/runs/{run_id:uuid}/stream",
    summary="SSE of the run's events (id = seq; Last-Event-ID resumes); ends with the run",
    media_type="text/event-stream",
    responses=problem_responses(
        (400, "Last-Event-ID (or after_seq) is not a seq of this run"), (404, "No such run")
    ),
)
async def stream_run(
    runtime: NamedDependency[Runtime],
    principal: NamedDependency[Principal],
    run_id: FromPath[UUID],
    last_event_id: Annotated[str | None, HeaderParameter(name="Last-Event-ID")] = None,
    after_seq: Annotated[str | None, QueryParameter(name="after_seq")] = None,
) -> Stream:
    hub = _hub(runtime)
    assert runtime.store is not None
    resume = (
        _resume_point(last_event_id, "Last-Event-ID", MAX_SEQ)
        if last_event_id is not None
        else _resume_point(after_seq, "after_seq", MAX_SEQ)
    )
    refusal = await _refuse_resume(runtime.store, run_id, resume, principal.tenant)
    if refusal is not None:
        raise problem(*refusal)
    events = run_events(hub, runtime.store, run_id, resume, heartbeat_s=HEARTBEAT_S)
    return _sse_response(_sse(events, by_position=False))


@get(
    "/stream",
    summary="SSE of all runs' events (id = global position), filtered by workflow_id and type",
    media_type="text/event-stream",
    responses=problem_responses(
        (400, "An unknown event type, or Last-Event-ID (or after_position) is not a position")
    ),
)
async def stream_all(
    runtime: NamedDependency[Runtime],
    principal: NamedDependency[Principal],
    workflow_id: FromQuery[str | None] = None,
    type_: Annotated[list[str] | None, QueryParameter(name="type")] = None,
    last_event_id: Annotated[str | None, HeaderParameter(name="Last-Event-ID")] = None,
    after_position: Annotated[
        str | None,
        QueryParameter(
            name="after_position",
            description="Start after this global position; `now` for only the events appended from now on "
            "(a Last-Event-ID, sent on reconnection, wins)",
        ),
    ] = None,
) -> Stream:
    hub = _hub(runtime)
    assert runtime.store is not None
    types = frozenset(t for value in type_ or [] for t in value.split(",") if t) or None
    unknown = sorted((types or set()) - set(EVENT_TYPE_BY_TAG))
    if unknown:
        raise problem(
            400,
            "Unknown event type",
            f"unknown type(s) {', '.join(unknown)}; known: {', '.join(sorted(EVENT_TYPE_BY_TAG))}",
        )
    if last_event_id is None and after_position == "now":  # only what happens from here on
        resume = await runtime.store.head_position()
    else:
        resume = max(
            0,
            _resume_point(last_event_id, "Last-Event-ID", MAX_POSITION)
            if last_event_id is not None
            else _resume_point(after_position, "after_position", MAX_POSITION),
        )
    events = all_events(
        hub,
        runtime.store,
        tenant=principal.tenant,
        after_position=resume,
        workflow_id=workflow_id,
        types=types,
        heartbeat_s=HEARTBEAT_S,
    )
    return _sse_response(_sse(events, by_position=True))


class _ClientTooSlow(Exception):
    pass


class PushConnection:
    """One WebSocket client: its subscriptions (one pump per run) and a bounded send queue."""

    def __init__(
        self, socket: WebSocket[Any, Any, Any], runtime: Runtime, push_ref: str, principal: Principal
    ) -> None:
        self.socket = socket
        self.principal = principal
        self.runtime = runtime
        self.push_ref = push_ref
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=runtime.settings.push_queue_size)
        self.send_timeout_s = runtime.settings.push_send_timeout_s
        self.pumps: dict[str, asyncio.Task[None]] = {}
        self.closing: tuple[int, str] | None = None

    async def enqueue(self, message: bytes) -> None:
        """Wait (briefly) for room: a client that leaves its queue full too long is cut off.

        Stored events catching up are paced by the client's reading; live events wait in the
        hub's bounded subscription, which cuts the client off when it overflows.
        """
        try:
            async with asyncio.timeout(self.send_timeout_s):
                await self.queue.put(message)
        except TimeoutError:
            raise _ClientTooSlow(
                f"client too slow: {self.queue.maxsize} messages waited more than {self.send_timeout_s:g} s"
            ) from None

    async def reply(self, kind: str, **data: Any) -> None:
        await self.enqueue(msgspec.json.encode({"type": kind, "data": data}))

    async def pump(self, run_id: UUID, after_seq: int) -> None:
        hub = _hub(self.runtime)
        assert self.runtime.store is not None
        try:
            async for batch in run_events(
                hub, self.runtime.store, run_id, after_seq, heartbeat_s=HEARTBEAT_S
            ):
                for event in batch or ():
                    if (message := encode_message(event.payload)) is not None:
                        await self.enqueue(message)
        except (Overflow, _ClientTooSlow) as exc:
            await self.close(4008, str(exc))
        except HubClosing:
            await self.close(1001, "the service is shutting down")

    async def close(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = (code, reason)
            log.info("push_client_closed", push_ref=self.push_ref, code=code, reason=reason)
            with contextlib.suppress(Exception):
                await self.socket.close(code=code, reason=reason[:120])

    def subscribe(self, run: str, after_seq: int) -> None:
        run_id = UUID(run)
        key = str(run_id)
        old = self.pumps.pop(key, None)
        if old is not None:
            old.cancel()
        self.pumps[key] = asyncio.create_task(
            self.pump(run_id, after_seq), name=f"push:{self.push_ref}:{key}"
        )

    async def handle(self, message: Any) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await self.reply("error", message='expected {"type": ..., "data": {...}}')
            return
        kind = message["type"]
        data = message.get("data") or {}
        run = data.get("executionId") or data.get("runId") if isinstance(data, dict) else None
        if kind not in ("subscribe", "unsubscribe", "resume", "cancel"):
            await self.reply(
                "error",
                message=f"unknown message type {kind!r}; use subscribe, unsubscribe, resume or cancel",
            )
            return
        try:
            run_id = UUID(str(run))
        except ValueError:
            await self.reply("error", message=f"{kind} needs data.executionId, a run id")
            return
        key = str(run_id)
        if kind in ("subscribe", "resume"):
            last = data.get("lastSeq", -1) if kind == "resume" else -1
            if not isinstance(last, int) or isinstance(last, bool) or not -1 <= last <= MAX_SEQ:
                await self.reply(
                    "error", message=f"resume needs data.lastSeq, an integer from -1 to {MAX_SEQ}"
                )
                return
            assert self.runtime.store is not None  # checked when the socket was accepted
            refusal = await _refuse_resume(self.runtime.store, run_id, last, self.principal.tenant)
            if refusal is not None:
                await self.reply("error", message=refusal[2])
                return
            self.subscribe(key, last)
        elif kind == "unsubscribe":
            task = self.pumps.pop(key, None)
            if task is not None:
                task.cancel()
        else:
            if key not in self.pumps:
                await self.reply("error", message=f"subscribe to run {key} before cancelling it")
                return
            if not self.principal.may("runs:write"):
                await self.reply("error", message="cancel needs the 'runs:write' scope")
                return
            try:
                await request_cancel(
                    self.runtime.queue,
                    run_id,
                    str(data.get("reason") or "cancelled from push"),
                    self.principal.actor,
                    tenant=self.principal.tenant,
                )
            except (UnknownRun, RunAlreadyEnded) as exc:
                await self.reply("error", message=str(exc))

    async def send_loop(self) -> None:
        while True:
            message = await self.queue.get()
            await self.socket.send_text(message.decode())

    async def close_on_shutdown(self) -> None:
        await _hub(self.runtime).closing.wait()
        await self.close(1001, "the service is shutting down")

    async def run(self) -> None:
        sender = asyncio.create_task(self.send_loop())
        closer = asyncio.create_task(self.close_on_shutdown())
        try:
            async for frame in self.socket.iter_data("text"):
                try:
                    try:
                        check_json_depth(frame, self.runtime.settings.max_json_depth, "a message")
                        message = msgspec.json.decode(frame)
                    except TooDeep as exc:
                        await self.reply("error", message=str(exc))
                        continue
                    except msgspec.DecodeError as exc:
                        await self.reply("error", message=f"a message must be a JSON object: {exc}")
                        continue
                    await self.handle(message)
                except _ClientTooSlow as exc:
                    await self.close(4008, str(exc))
                    break
        except Exception as exc:  # a disconnect ends this client only
            if self.closing is None:
                log.info("push_client_gone", push_ref=self.push_ref, reason=type(exc).__name__)
        finally:
            sender.cancel()
            closer.cancel()
            for task in self.pumps.values():
                task.cancel()
            for task in [sender, closer, *self.pumps.values()]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


@websocket("/push", summary="n8n-compatible push channel (subscribe / unsubscribe / resume / cancel)")
async def push_channel(
    socket: WebSocket[Any, Any, Any],
    push_ref: Annotated[str | None, QueryParameter(name="pushRef")] = None,
) -> None:
    runtime: Runtime = socket.app.state.runtime
    await socket.accept()
    if not push_ref or len(push_ref) > 200:
        # Accepted first so the client gets a reason, not a bare HTTP 403.
        await socket.close(code=1008, reason="the pushRef query parameter is required (1 to 200 characters)")
        return
    if runtime.push is None or runtime.store is None:
        await socket.close(code=1013, reason="service not ready")
        return
    principal = socket.user
    assert isinstance(principal, Principal)  # the auth middleware and scope guard let it in
    await PushConnection(socket, runtime, push_ref, principal).run()


def push_router() -> Router:
    return Router(
        path="/v1",
        route_handlers=[stream_run, stream_all, push_channel],
        dependencies={"runtime": Provide(provide_runtime)},
    )
