"""Event bodies of a run stream: one frozen Struct per stable type tag, one union.

Tags are stable forever: never rename or reuse one. New fields get defaults and
existing field types never change, so every stored history stays decodable.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

Identifier = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
"""Workflow, node and tenant ids: also used as NATS subject tokens."""

SCHEMA_VERSION = 1
"""Version of the event body schemas written by this code."""


class _Event(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True, gc=False):
    """Base of every event body (tag field ``type``)."""


class NodeError(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """Why a node attempt failed. ``kind`` is a stable classifier (e.g. ``timeout``)."""

    kind: str
    message: str
    retryable: bool = True


class ReuseRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """Where a forked run's node result came from: the parent's event (or an override of it)."""

    run_id: str
    seq: int
    event_id: str
    overridden: bool = False


class ForkOrigin(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """How a forked run relates to its parent: which nodes it reuses and which it overrides."""

    parent_run_id: str
    from_node: str | None = None
    reuse: list[str] = []
    overrides: dict[str, Any] = {}


class RunQueued(_Event, frozen=True, tag="run_queued"):
    workflow_version: str
    inputs: dict[str, Any] = {}
    idempotency_key: str | None = None
    parent_run_id: str | None = None
    node_count: int = 0
    """Nodes in the workflow version (read models derive progress from it)."""
    fork: ForkOrigin | None = None
    actor: str = ""
    """Who queued the run: ``key:<key_id>``, ``jwt:<sub>``, ``schedule:<id>``, ``run:<run_id>``
    (a parent run's ``workflow`` node), ``anonymous`` (auth off); empty in events recorded
    before actors were."""
    parent_node_id: str | None = None
    """For a child run: the parent run's ``workflow`` node that started it (``parent_run_id``
    is the parent run; ``fork`` is None)."""
    depth: int = 0
    """How many parent runs above this one (a child of a top-level run: 1); limited so that a
    workflow that starts itself cannot nest without end."""


class RunStarted(_Event, frozen=True, tag="run_started"):
    worker_id: str = ""


class NodeExecuteBefore(_Event, frozen=True, tag="node_execute_before"):
    node_id: Identifier
    node_type: str
    attempt: int = 1
    reused_from: ReuseRef | None = None


class NodeExecuteAfter(_Event, frozen=True, tag="node_execute_after"):
    node_id: Identifier
    node_type: str
    status: Literal["succeeded", "failed"]
    attempt: int = 1
    duration_ms: float = 0.0
    item_count: int = 0
    error: NodeError | None = None
    reused_from: ReuseRef | None = None


class OutputMarker(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """Stands in for a node output larger than the cap: its size and hash, not its bytes."""

    size_bytes: int
    sha256: str
    truncated: bool = True


WORKER_CRASHED = "worker_crashed"
"""``NodeError.kind`` of an attempt whose isolated worker process died (a signal, ``os._exit``,
``sys.exit``, a memory or CPU-time limit); counts toward ``poison_run``."""


class NodeExecuteAfterData(_Event, frozen=True, tag="node_execute_after_data"):
    node_id: Identifier
    attempt: int = 1
    output: Any = None
    output_bytes: int = 0
    output_sha256: str = ""
    marker: OutputMarker | None = None
    reused_from: ReuseRef | None = None


class NodeRetryScheduled(_Event, frozen=True, tag="node_retry_scheduled"):
    node_id: Identifier
    attempt: int
    next_attempt: int
    delay_ms: int
    error: NodeError | None = None
    due_at: datetime | None = None
    """When the next attempt may start (a durable timer: a recovered run waits only what is
    left). None in events recorded before retry timers were durable."""


HALT_SKIP_PREFIXES = ("run stopped:", "run cancelled:")
"""A ``node_skipped`` reason starting with one of these: the run halted (a node failed under
``on_failure: stop``, or a cancel) before the node could run. Any other reason (a branch not
taken, an upstream failure under ``on_failure: continue``) is the run deciding the node's fate."""


class NodeSkipped(_Event, frozen=True, tag="node_skipped"):
    node_id: Identifier
    reason: str = ""

    @property
    def halted(self) -> bool:
        """Skipped because the run halted, not because of the workflow's own logic."""
        return self.reason.startswith(HALT_SKIP_PREFIXES)


class RunWaiting(_Event, frozen=True, tag="run_waiting"):
    """Node ``node_id`` (already started) waits: for ``signal``, for ``wake_at`` (a ``delay``,
    or a ``wait`` node's timeout), or for ``child_run_id`` to end (a ``workflow`` node)."""

    reason: str = ""
    node_id: str | None = None
    signal: str | None = None
    wake_at: datetime | None = None
    child_run_id: str | None = None


ResumeCause = Literal["signal", "timer", "timeout", "child", "halt", ""]
"""Why a waiting node stopped waiting: a signal came, its delay ended, its timeout passed, its
child run ended, or the run halted (a cancel, or another node failing under ``on_failure: stop``)."""


class RunResumed(_Event, frozen=True, tag="run_resumed"):
    """Waiting node ``node_id`` stops waiting; its ``node_execute_after`` follows in the same append."""

    reason: str = ""
    actor: str = ""
    """Who resumed it (e.g. the credential that sent a signal)."""
    node_id: str | None = None
    cause: ResumeCause = ""
    signal: str | None = None


class RunCancelRequested(_Event, frozen=True, tag="run_cancel_requested"):
    reason: str = ""
    requested_by: str = ""
    """The actor who asked (``key:<key_id>``, ``jwt:<sub>``, ...)."""


class RunCancelled(_Event, frozen=True, tag="run_cancelled"):
    reason: str = ""


class RunRecovered(_Event, frozen=True, tag="run_recovered"):
    worker_id: str = ""
    completed_nodes: list[str] = []
    lease_expired: bool = False
    """True when the run's previous holder stopped renewing its lease without giving the run
    back: its process or its executor died. False after a graceful hand-back (a shutdown, a
    database outage), and in events recorded before this field existed. Counts toward
    ``poison_run``."""


LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
"""Node log levels, least severe first (a ``level`` filter keeps that level and the ones after it)."""


class LogLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """One line a node logged (``ctx.log``, or a python node's ``print`` / ``logging``)."""

    at: str
    """When it was logged: RFC 3339 UTC with milliseconds, from the process that ran the node."""
    level: LogLevel
    message: str
    fields: dict[str, Any] = {}


class NodeLog(_Event, frozen=True, tag="node_log"):
    """A batch of one node attempt's log lines, recorded while the attempt runs (so a follower
    sees progress) and at its end, just before its ``node_execute_after`` (in the same append
    when the attempt succeeded or was cancelled)."""

    node_id: Identifier
    attempt: int = 1
    lines: list[LogLine] = []
    dropped: int = 0
    """Lines of this attempt dropped by the per-attempt cap so far (0 while under it); the
    attempt's last batch then ends with a marker line saying how many were dropped."""


class RunFinished(_Event, frozen=True, tag="run_finished"):
    status: Literal["succeeded", "failed"]
    error: str | None = None
    duration_ms: float = 0.0


Event = (
    RunQueued
    | RunStarted
    | NodeExecuteBefore
    | NodeExecuteAfter
    | NodeExecuteAfterData
    | NodeRetryScheduled
    | NodeSkipped
    | RunWaiting
    | RunResumed
    | RunCancelRequested
    | RunCancelled
    | RunRecovered
    | RunFinished
    | NodeLog
)
"""Every event body; decoding dispatches on the ``type`` tag."""

EVENT_TYPES: tuple[type[_Event], ...] = Event.__args__  # type: ignore[attr-defined]
EVENT_TYPE_BY_TAG: dict[str, type[_Event]] = {str(t.__struct_config__.tag): t for t in EVENT_TYPES}
TERMINAL_TYPES = frozenset({"run_finished", "run_cancelled"})


def event_tag(event: Event) -> str:
    """The stable type tag of an event body."""
    return event.__struct_config__.tag  # type: ignore[return-value]
