"""A node attempt's log lines: collected, redacted and capped, then taken in ``node_log`` batches.

Handlers log through ``ctx.log(level, message, **fields)`` and a python node's ``print`` and
``logging`` records come back from its worker process; both land in one
:class:`NodeLogCollector` per attempt. The executor takes batches from it while the attempt
runs (every :data:`FLUSH_INTERVAL_S`, so ``flowledger logs --follow`` shows progress) and a
last one that it appends together with the attempt's result.

Guarantees:
- lines keep the order they were logged in (one lock; ``ctx.log`` may be called from threads);
- no secret value of the attempt appears in a message or a field (``redact``);
- an attempt keeps at most :data:`MAX_LINES_PER_ATTEMPT` lines and :data:`MAX_BYTES_PER_ATTEMPT`
  bytes of messages and fields (a message longer than :data:`MAX_MESSAGE_CHARS` is cut, and
  says so); past the cap lines are counted, not kept, every later batch carries the count
  (``dropped``) and the attempt's last batch ends with a marker line saying how many were dropped;
- the clock is passed in: everything here is bookkeeping, with no I/O (the executor's
  ``_flush_logs`` appends the batches).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from schemas.events import LOG_LEVELS, LogLevel, LogLine, NodeLog
from service.engine.nodes.config_values import redact, redact_output

MAX_LINES_PER_ATTEMPT = 1000
"""Lines one node attempt may record; later ones are counted in ``dropped``."""
MAX_BYTES_PER_ATTEMPT = 64 * 1024
"""Bytes of messages and (JSON) fields one node attempt may record."""
MAX_MESSAGE_CHARS = 4096
"""A longer message is cut to this many characters (and marked ``…[cut]``)."""
FLUSH_INTERVAL_S = 1.0
"""How often lines logged so far are recorded while a node runs."""

_LEVEL_ALIASES: dict[str, LogLevel] = {"warn": "warning", "critical": "error", "fatal": "error"}


def log_level(level: str) -> LogLevel:
    """The level named (case-insensitive; ``warn``, ``critical``, ``fatal`` accepted), or ``ValueError``."""
    name = level.lower() if isinstance(level, str) else ""
    name = _LEVEL_ALIASES.get(name, name)
    if name not in LOG_LEVELS:
        raise ValueError(f"unknown log level {level!r}; levels: {', '.join(LOG_LEVELS)}")
    return name  # type: ignore[return-value]


def level_of_record(levelno: int) -> LogLevel:
    """The node log level of a ``logging`` record's number (``CRITICAL`` is ``error``)."""
    if levelno < 20:
        return "debug"
    if levelno < 30:
        return "info"
    if levelno < 40:
        return "warning"
    return "error"


def timestamp(at: datetime) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2025-01-02T03:04:05.678Z``."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def json_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Fields as JSON values; one that is not JSON is recorded as its ``repr``."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        try:
            out[str(key)] = msgspec.json.decode(msgspec.json.encode(value))
        except (TypeError, ValueError, OverflowError):
            out[str(key)] = repr(value)
    return out


class NodeLogCollector:
    """One node attempt's log lines until they are taken as ``node_log`` events."""

    def __init__(
        self,
        node_id: str,
        attempt: int,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_lines: int = MAX_LINES_PER_ATTEMPT,
        max_bytes: int = MAX_BYTES_PER_ATTEMPT,
    ) -> None:
        self.node_id = node_id
        self.attempt = attempt
        self._clock = clock
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._pending: list[LogLine] = []
        self.kept = 0
        self.kept_bytes = 0
        self.dropped = 0
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
        """Record one line (or count it as dropped past the cap). A bad level is a ``ValueError``;
        ``at`` (RFC 3339) defaults to now."""
        name = log_level(level)
        text = message if isinstance(message, str) else str(message)
        if len(text) > MAX_MESSAGE_CHARS:
            text = text[:MAX_MESSAGE_CHARS] + "…[cut]"
        values = json_fields(fields or {})
        if secrets:
            text = redact(text, secrets)
            values = redact_output(values, secrets)
        size = len(text.encode()) + (len(msgspec.json.encode(values)) if values else 0)
        line = LogLine(at=at or timestamp(self._clock()), level=name, message=text, fields=values)
        with self._lock:
            if self._closed or self.kept >= self._max_lines or self.kept_bytes + size > self._max_bytes:
                self.dropped += 1
                return
            self.kept += 1
            self.kept_bytes += size
            self._pending.append(line)

    def count_dropped(self, lines: int) -> None:
        """Lines dropped before they got here (an isolated worker's own cap)."""
        with self._lock:
            self.dropped += lines

    @property
    def pending(self) -> int:
        return len(self._pending)

    def take(self, *, final: bool = False) -> NodeLog | None:
        """The lines logged since the last take, as one event (None when there is nothing to say).

        ``final``: the attempt is over; later lines are dropped, and if any line was dropped the
        batch ends with a marker line saying how many. After that every take is None."""
        with self._lock:
            if self._closed:
                return None  # the last batch was taken (with its marker): nothing more to say
            lines, self._pending = self._pending, []
            if final:
                self._closed = True
            if final and self.dropped:
                lines.append(
                    LogLine(
                        at=timestamp(self._clock()),
                        level="warning",
                        message=(
                            f"{self.dropped} log lines dropped: a node attempt keeps at most "
                            f"{self._max_lines} lines and {self._max_bytes // 1024} KiB"
                        ),
                        fields={"dropped": self.dropped},
                    )
                )
            if not lines:
                return None
            return NodeLog(node_id=self.node_id, attempt=self.attempt, lines=lines, dropped=self.dropped)
