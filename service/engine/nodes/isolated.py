"""A pool of worker subprocesses that run node code outside the service's process.

``python`` nodes, and plugin node types that declare ``isolated=True``, run here: whatever
the code does to its process cannot take the service down, and CPU-bound code does not
stall the service's event loop.

Guarantees:
- a worker runs one call at a time; at most ``size`` workers live at once (more calls wait
  for one); a worker is replaced after ``max_calls`` calls, and whenever it dies;
- a worker that dies during a call (a signal such as SIGSEGV, SIGKILL or SIGXCPU,
  ``os._exit``, ``sys.exit``, a ``MemoryError`` at its memory limit) fails that call with
  :class:`WorkerCrashed`, saying how it died; other calls and the service carry on;
- cancelling a call (a node timeout, a cancelled run, shutdown) kills its worker: running
  Python code cannot be interrupted any other way. The next call gets a fresh worker;
- an exception raised by the called code is a :class:`CallFailed` (its class name as kind,
  or a ``NodeFailure``'s own kind and retryability); the worker lives on;
- limits: ``RLIMIT_AS`` (memory) is set as soft *and* hard limit when a worker starts, so the
  code cannot lift it; idle workers are kept per memory limit. ``RLIMIT_CPU`` counts a
  process's whole life, so it is set per call (soft limit: the CPU time used so far plus the
  call's seconds) and lifted afterwards; code that raises its own soft limit is still bounded
  by the node's timeout, which kills the worker from outside. Core dumps are off;
- workers never outlive the service: each asks the kernel for SIGKILL when its parent dies
  (Linux ``PR_SET_PDEATHSIG``) and exits when its request pipe closes. They run in a session
  of their own, so a Ctrl-C meant for the service does not kill calls in flight (the
  service's shutdown cancels them itself).

Limits are guards against runaway or crashing code, not a sandbox: the code runs as the
service's user, with its file system and network.

Protocol, over the worker's stdin and stdout (the worker moves its own fd 1 to stderr, so a
``print`` in user code cannot corrupt the stream): frames of a 4-byte big-endian length and
a msgspec JSON body. The worker first sends a ``_Ready``; then the parent sends a ``_Call``
and the worker answers it with any number of ``_Logs`` and then one ``_Reply``, one call at a
time. The config and the node document go as JSON and the output comes back as JSON: nothing
is pickled.

Logs: during a call the worker captures ``print`` (``sys.stdout`` lines at ``info``,
``sys.stderr`` at ``warning``), ``logging`` records (the root logger's level is at most
``INFO`` meanwhile) and ``ctx.log``; it sends them in ``_Logs`` frames about every
``FLUSH_INTERVAL_S`` while the code runs (so a long call shows progress) and the rest with the
reply. At most ``MAX_LINES_PER_ATTEMPT`` lines of a call cross the pipe; the others are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import json
import logging
import math
import os
import resource
import signal
import struct
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog

from service.engine.nodes.node_logs import (
    FLUSH_INTERVAL_S,
    MAX_LINES_PER_ATTEMPT,
    json_fields,
    level_of_record,
    log_level,
    timestamp,
)

log = structlog.get_logger(__name__)

EXIT_OUT_OF_MEMORY = 86
"""Exit code of a worker whose call raised ``MemoryError`` (its memory limit, mostly)."""

_HEADER = struct.Struct(">I")
_EXIT_WAIT_S = 5.0
"""How long a retired or broken worker may take to exit before it is killed."""

_BOOTSTRAP = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from service.engine.nodes.isolated import worker_main; worker_main(json.loads(sys.argv[2]))"
)


class WorkerCrashed(Exception):
    """The worker process died during the call; the message says how (a signal, an exit code)."""


class CallFailed(Exception):
    """The called code raised: ``kind`` is the exception's class name (or a ``NodeFailure``'s kind)."""

    def __init__(self, kind: str, message: str, *, retryable: bool, traceback: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retryable = retryable
        self.traceback = traceback


class _Ready(msgspec.Struct, frozen=True):
    pid: int


class _Call(msgspec.Struct, frozen=True):
    handler: str
    """``module:qualname`` of an async ``handler(config, ctx)``."""
    config_type: str
    """``module:qualname`` of the handler's config Struct."""
    config: Any
    context: Any
    """A ``NodeContext`` as JSON."""
    cpu_seconds: int = 0


class LogRecord(msgspec.Struct, frozen=True, array_like=True):
    """One line the called code logged: RFC 3339 time, level, message, JSON fields."""

    at: str
    level: str
    message: str
    fields: dict[str, Any] = {}


LogReceiver = Callable[[list[LogRecord], int], None]
"""(lines, how many more lines were dropped) -> None: where a call's logs go in the parent."""


class _Logs(msgspec.Struct, frozen=True, tag="logs"):
    lines: list[LogRecord] = []
    dropped: int = 0


class _Reply(msgspec.Struct, frozen=True, tag="reply"):
    ok: bool
    output: Any = None
    kind: str = ""
    message: str = ""
    retryable: bool = True
    traceback: str = ""
    logs: list[LogRecord] = []
    dropped: int = 0


_encode = msgspec.json.Encoder().encode
_decode_ready = msgspec.json.Decoder(_Ready).decode
_decode_call = msgspec.json.Decoder(_Call).decode
_decode_answer = msgspec.json.Decoder(_Reply | _Logs).decode


def callable_ref(obj: Any) -> str:
    """``module:qualname`` of a module-level function or class; ``ValueError`` when the worker
    process could not import it by that name (a lambda, a nested function, a closure)."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise ValueError(f"{obj!r} is not a module-level function or class")
    target: Any = sys.modules.get(module)
    for attr in qualname.split("."):
        target = getattr(target, attr, None)
    if target is not obj:
        raise ValueError(f"{module}:{qualname} does not name {obj!r}")
    return f"{module}:{qualname}"


def _import_ref(ref: str) -> Any:
    module, _, qualname = ref.partition(":")
    target: Any = importlib.import_module(module)
    for attr in qualname.split("."):
        target = getattr(target, attr)
    return target


# -- the parent's side ------------------------------------------------------------------------------


class _Worker:
    """One worker process, and how many calls it served."""

    def __init__(self, proc: asyncio.subprocess.Process, memory_mb: int) -> None:
        self.proc = proc
        self.memory_mb = memory_mb
        self.calls = 0

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def send(self, frame: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(_HEADER.pack(len(frame)) + frame)
        await self.proc.stdin.drain()

    async def receive(self) -> bytes:
        assert self.proc.stdout is not None
        (size,) = _HEADER.unpack(await self.proc.stdout.readexactly(_HEADER.size))
        return await self.proc.stdout.readexactly(size)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    async def exit_status(self) -> int:
        """The process's return code, once it has exited (killed if it takes too long)."""
        try:
            return await asyncio.wait_for(self.proc.wait(), _EXIT_WAIT_S)
        except TimeoutError:
            self.kill()
            return await self.proc.wait()


def describe_exit(returncode: int, *, memory_mb: int, cpu_seconds: int) -> str:
    """How a worker that died during a call died, in words a node's author can act on."""
    if returncode < 0:
        number = -returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        if number == signal.SIGXCPU:
            return f"exceeded its CPU time limit of {cpu_seconds} s ({name})"
        if number == signal.SIGSEGV:
            return f"crashed with {name} (a segmentation fault)"
        if number == signal.SIGKILL:
            return f"was killed with {name} (the kernel's out-of-memory killer, or an operator)"
        return f"was killed by {name}"
    if returncode == EXIT_OUT_OF_MEMORY:
        limit = f"its memory limit of {memory_mb} MiB" if memory_mb else "memory"
        return f"ran out of memory (MemoryError at {limit})"
    return f"exited with code {returncode} during the call (sys.exit or os._exit in the called code)"


class IsolatedPool:
    """Worker subprocesses for isolated calls; started on first use, one event loop at a time.

    ``memory_mb`` and ``cpu_seconds`` are the defaults of a call (0: no limit); ``max_calls``
    calls per worker before it is replaced.
    """

    def __init__(self, size: int = 4, *, max_calls: int = 1000, memory_mb: int = 0, cpu_seconds: int = 0):
        if size < 1 or max_calls < 1 or memory_mb < 0 or cpu_seconds < 0:
            raise ValueError("size and max_calls must be at least 1, limits at least 0")
        self.size = size
        self.max_calls = max_calls
        self.memory_mb = memory_mb
        self.cpu_seconds = cpu_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._exiting: set[asyncio.Task[Any]] = set()
        self.started = 0
        """Worker processes started so far (for tests and metrics)."""

    async def call(
        self,
        handler: str,
        config_type: str,
        config: Any,
        context: Any,
        *,
        memory_mb: int | None = None,
        cpu_seconds: int | None = None,
        on_logs: LogReceiver | None = None,
    ) -> Any:
        """Run ``handler(config, ctx)`` in a worker; its JSON output, or raises
        :class:`CallFailed` (the code raised) or :class:`WorkerCrashed` (the worker died).

        ``on_logs`` gets the lines the code logged, in order, as they arrive (the last ones
        just before this returns or raises ``CallFailed``)."""
        self._bind_loop()
        memory = self.memory_mb if memory_mb is None else memory_mb
        cpu = self.cpu_seconds if cpu_seconds is None else cpu_seconds
        frame = _encode(_Call(handler, config_type, config, context, cpu))
        async with self._slots:
            worker = await self._take(memory)
            self._busy.add(worker)
            done = False
            try:
                try:
                    await worker.send(frame)
                    while isinstance(answer := _decode_answer(await worker.receive()), _Logs):
                        if on_logs is not None:
                            on_logs(answer.lines, answer.dropped)
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    status = await worker.exit_status()
                    what = describe_exit(status, memory_mb=memory, cpu_seconds=cpu)
                    raise WorkerCrashed(f"worker process {worker.proc.pid} {what}") from exc
                done = True
            finally:
                self._busy.discard(worker)
                if not done:  # crashed, cancelled (a timeout): it may still be running the code
                    worker.kill()
                    self._wait_exit(worker)
                else:
                    self._release(worker)
        reply = answer
        if on_logs is not None and (reply.logs or reply.dropped):
            on_logs(reply.logs, reply.dropped)
        if not reply.ok:
            raise CallFailed(reply.kind, reply.message, retryable=reply.retryable, traceback=reply.traceback)
        return reply.output

    def _bind_loop(self) -> None:
        """Processes, pipes and the semaphore belong to one event loop: on another one, start over."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        for worker in [*self._idle, *self._busy]:
            worker.kill()
        self._loop = loop
        self._slots = asyncio.Semaphore(self.size)
        self._idle, self._busy, self._exiting = [], set(), set()

    async def _take(self, memory_mb: int) -> _Worker:
        """An idle worker with this memory limit, or a new one (retiring an idle worker of
        another limit when ``size`` are alive). The caller holds a slot, so one is free."""
        for worker in self._idle:
            if worker.memory_mb == memory_mb and worker.alive:
                self._idle.remove(worker)
                return worker
        self._idle = [w for w in self._idle if w.alive]
        while self._idle and len(self._idle) + len(self._busy) >= self.size:
            self._retire(self._idle.pop(0))
        return await self._start(memory_mb)

    async def _start(self, memory_mb: int) -> _Worker:
        options = {"memory_mb": memory_mb, "parent_pid": os.getpid()}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _BOOTSTRAP,
            json.dumps(sys.path),  # the worker imports what this process would
            json.dumps(options),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        worker = _Worker(proc, memory_mb)
        self.started += 1
        try:
            _decode_ready(await worker.receive())
        except (asyncio.IncompleteReadError, ConnectionError, msgspec.DecodeError) as exc:
            status = await worker.exit_status()
            raise WorkerCrashed(
                f"worker process {proc.pid} failed to start: "
                f"{describe_exit(status, memory_mb=memory_mb, cpu_seconds=0)}"
            ) from exc
        except BaseException:
            worker.kill()
            self._wait_exit(worker)
            raise
        log.debug("isolated_worker_started", pid=proc.pid, memory_mb=memory_mb)
        return worker

    def _release(self, worker: _Worker) -> None:
        worker.calls += 1
        if worker.calls >= self.max_calls or not worker.alive:
            self._retire(worker)
        else:
            self._idle.append(worker)

    def _retire(self, worker: _Worker) -> None:
        """Close the worker's request pipe: it exits once it reads the end."""
        if worker.proc.stdin is not None:
            worker.proc.stdin.close()
        self._wait_exit(worker)

    def _wait_exit(self, worker: _Worker) -> None:
        task = asyncio.ensure_future(worker.exit_status())
        self._exiting.add(task)
        task.add_done_callback(self._exiting.discard)

    async def aclose(self) -> None:
        """Stop every worker (calls in flight fail); the pool stays usable and starts new ones."""
        if self._loop is None:
            return
        if self._loop is not asyncio.get_running_loop():
            self._bind_loop()  # kills what the other loop left
            return
        for worker in self._idle:
            self._retire(worker)
        for worker in self._busy:
            worker.kill()
        self._idle = []
        exiting = list(self._exiting)
        if exiting:
            await asyncio.gather(*exiting, return_exceptions=True)


# -- the worker's side ------------------------------------------------------------------------------


def worker_main(options: dict[str, Any]) -> None:
    """The worker process: set its limits, then answer calls until its request pipe closes."""
    import faulthandler

    faulthandler.enable()  # a segfault's Python traceback goes to stderr (the service's log stream)
    _die_with_parent(int(options["parent_pid"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    memory_mb = int(options.get("memory_mb") or 0)
    if memory_mb:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # print() in user code goes to stderr, never into the reply stream
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    _write_frame(replies, _encode(_Ready(os.getpid())))
    lock = threading.Lock()

    def send(body: bytes) -> None:
        with lock:  # code may log from its own threads
            _write_frame(replies, body)

    pump = _Pump()  # started before any call, so a call's memory limit never stops it
    while (frame := _read_frame(requests)) is not None:
        send(_serve(loop, frame, send, pump))


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(0)


def _read_frame(stream: Any) -> bytes | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    body: bytes = stream.read(size)
    return body if len(body) == size else None


def _write_frame(stream: Any, body: bytes) -> None:
    stream.write(_HEADER.pack(len(body)) + body)
    stream.flush()


def _serve(
    loop: asyncio.AbstractEventLoop, frame: bytes, send: Callable[[bytes], None], pump: _Pump
) -> bytes:
    """One call's reply (its logs sent as they come). ``MemoryError`` ends the process: the heap
    may be in any state."""
    try:
        call = _decode_call(frame)
        _limit_cpu(call.cpu_seconds)
        capture = _Capture(send)
        try:
            with capture, pump.sending(capture):
                reply = loop.run_until_complete(_run(call, capture))
        finally:
            _limit_cpu(0)
        lines, dropped = capture.drain(close=True)  # a thread logging later is not heard
        reply = msgspec.structs.replace(reply, logs=lines, dropped=dropped)
        try:
            return _encode(reply)
        except (TypeError, ValueError, OverflowError) as exc:
            node_type = call.context.get("node_type", "") if isinstance(call.context, dict) else ""
            return _encode(
                _Reply(
                    ok=False,
                    kind="invalid_output",
                    message=f"node type {node_type!r} returned a value that is not JSON-serializable: {exc}",
                    retryable=False,
                    logs=lines,
                    dropped=dropped,
                )
            )
    except MemoryError:
        with contextlib.suppress(Exception):
            os.write(2, b"flowledger isolated worker: MemoryError (memory limit?); exiting\n")
        os._exit(EXIT_OUT_OF_MEMORY)


async def _run(call: _Call, capture: _Capture) -> _Reply:
    from service.engine.nodes.registry import NodeContext, NodeFailure

    try:
        handler: Callable[[Any, Any], Awaitable[Any]] = _import_ref(call.handler)
        config = msgspec.convert(call.config, _import_ref(call.config_type), strict=False)
        ctx = msgspec.structs.replace(msgspec.convert(call.context, NodeContext), log_sink=capture)
        return _Reply(ok=True, output=await handler(config, ctx))
    except MemoryError:
        raise
    except NodeFailure as exc:
        return _Reply(ok=False, kind=exc.kind, message=exc.message, retryable=exc.retryable)
    except Exception as exc:
        return _Reply(
            ok=False,
            kind=type(exc).__name__,
            message=str(exc) or type(exc).__name__,
            traceback=traceback.format_exc(),
        )


class _Pump:
    """The worker's one thread that sends the running call's lines every ``FLUSH_INTERVAL_S``,
    even while the code blocks (``time.sleep``, a long computation that releases the GIL)."""

    def __init__(self) -> None:
        self._current: _Capture | None = None
        self._guard = threading.Lock()
        previous = threading.stack_size(256 * 1024)  # little address space: memory limits
        try:
            threading.Thread(target=self._run, name="flowledger-log-pump", daemon=True).start()
        finally:
            threading.stack_size(previous)

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL_S / 4)
            with self._guard:
                capture = self._current
            if capture is not None and capture.due():
                capture.send_now()

    @contextlib.contextmanager
    def sending(self, capture: _Capture) -> Iterator[None]:
        with self._guard:
            self._current = capture
        try:
            yield
        finally:
            with self._guard:
                self._current = None


class _Capture(logging.Handler):
    """A call's log lines in the worker: ``ctx.log`` (as its ``log_sink``), ``print`` and
    ``logging`` records while it is entered; sent in ``_Logs`` frames about every
    ``FLUSH_INTERVAL_S`` (on the next line logged, or by the worker's ``_Pump``)."""

    def __init__(self, send: Callable[[bytes], None]) -> None:
        super().__init__(logging.DEBUG)
        self._send = send
        self._lines: list[LogRecord] = []
        self._kept = 0
        self._dropped = 0
        self._last_sent = time.monotonic()
        self._guard = threading.RLock()
        self._saved: tuple[Any, Any, int] | None = None
        self._closed = False

    def add(
        self,
        level: str,
        message: str,
        fields: Mapping[str, Any] | None = None,
        *,
        secrets: Mapping[str, str] | None = None,
        at: str | None = None,
    ) -> None:
        """As ``NodeLogCollector.add``: the parent redacts and caps again when the lines arrive."""
        name = log_level(level)
        values = json_fields(fields or {})
        line = LogRecord(at or timestamp(datetime.now(UTC)), name, str(message), values)
        with self._guard:
            if self._closed:
                return
            if self._kept >= MAX_LINES_PER_ATTEMPT:
                self._dropped += 1
                return
            self._kept += 1
            self._lines.append(line)
        if time.monotonic() - self._last_sent >= FLUSH_INTERVAL_S:
            self.send_now()

    def emit(self, record: logging.LogRecord) -> None:  # logging.Handler
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            self.add(level_of_record(record.levelno), message, {"logger": record.name})
        except Exception:
            self.handleError(record)

    def drain(self, *, close: bool = False) -> tuple[list[LogRecord], int]:
        with self._guard:
            self._closed = self._closed or close
            lines, dropped = self._lines, self._dropped
            self._lines, self._dropped = [], 0
            self._last_sent = time.monotonic()
        return lines, dropped

    def send_now(self) -> None:
        with self._guard:  # so frames leave in the order their lines were logged
            lines, dropped = self.drain()
            if lines or dropped:
                self._send(_encode(_Logs(lines, dropped)))

    def due(self) -> bool:
        """Lines are waiting and the last frame left at least ``FLUSH_INTERVAL_S`` ago."""
        return bool(self._lines or self._dropped) and time.monotonic() - self._last_sent >= FLUSH_INTERVAL_S

    def __enter__(self) -> _Capture:
        root = logging.getLogger()
        self._saved = (sys.stdout, sys.stderr, root.level)
        sys.stdout = _LineWriter(self, "info")  # type: ignore[assignment]
        sys.stderr = _LineWriter(self, "warning")  # type: ignore[assignment]
        root.addHandler(self)
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._saved is not None
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, _LineWriter):
                stream.flush_partial()
        root = logging.getLogger()
        root.removeHandler(self)
        sys.stdout, sys.stderr, level = self._saved
        root.setLevel(level)


class _LineWriter(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` during a call: each complete line becomes a log line."""

    def __init__(self, capture: _Capture, level: str) -> None:
        self._capture = capture
        self._level = level
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._partial + str(text)).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._capture.add(self._level, line)
        return len(text)

    def flush_partial(self) -> None:
        if self._partial:
            self._capture.add(self._level, self._partial)
            self._partial = ""


def _limit_cpu(seconds: int) -> None:
    """Soft CPU limit: ``seconds`` more than used so far (SIGXCPU beyond); 0: as high as allowed."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if seconds:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
    else:
        soft = hard
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
