"""HTTP API bodies (requests and responses)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec

from schemas.envelope import EventEnvelope
from schemas.workflow import WorkflowSpec


class WorkflowRegistered(msgspec.Struct, frozen=True):
    id: str
    version: str
    created: bool
    """False when an identical spec was already registered (nothing changed)."""
    created_at: datetime
    warnings: list[str] = []
    """What is valid but probably not meant (e.g. a node no edge connects to the rest)."""


class WorkflowSummary(msgspec.Struct, frozen=True):
    id: str
    version: str
    name: str | None
    node_count: int
    created_at: datetime


class WorkflowVersion(msgspec.Struct, frozen=True):
    version: str
    created_at: datetime


class NodePlacement(msgspec.Struct, frozen=True):
    x: float
    """Centre of the node's box, from the left edge of the drawing."""
    y: float
    """Centre of the node's box, from the top edge of the drawing."""
    layer: int
    """0 for nodes nothing points to; every edge goes to a higher layer."""


class EdgeRoute(msgspec.Struct, frozen=True):
    from_: str = msgspec.field(name="from")
    to: str = msgspec.field()
    points: list[tuple[float, float]] = []
    """The polyline from the source's centre to the target's, through the bends that keep it off
    the nodes of the layers it crosses."""


class DagLayout(msgspec.Struct, frozen=True):
    """Where to draw a workflow's DAG (layered, crossing-reduced; top to bottom). Coordinates are
    in the same units as ``node_width``/``node_height``, origin at the top left, all >= 0."""

    width: float
    height: float
    node_width: float
    node_height: float
    nodes: dict[str, NodePlacement]
    edges: list[EdgeRoute]
    """One per edge of the spec, in its order."""


class WorkflowDetail(msgspec.Struct, frozen=True):
    id: str
    version: str
    spec: WorkflowSpec
    versions: list[WorkflowVersion]
    layout: DagLayout
    """Where to draw this version's DAG (the console draws it as is)."""


class WorkflowPage(msgspec.Struct, frozen=True):
    items: list[WorkflowSummary]
    next_cursor: str | None


class StartRun(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    inputs: dict[str, Any] = {}
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    version: str | None = None
    """Run this workflow version instead of the latest."""


class RunAccepted(msgspec.Struct, frozen=True):
    run_id: UUID
    status: Literal["queued", "running", "waiting", "succeeded", "failed", "cancelled"]
    """``queued`` for a new run; for a repeated idempotency key, the first run's current status."""
    workflow_id: str
    workflow_version: str
    created: bool
    """False when the idempotency key matched an earlier run (that run is returned)."""
    status_url: str
    events_url: str
    stream_url: str


class CancelRun(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


class CancelAccepted(msgspec.Struct, frozen=True):
    run_id: UUID
    status: Literal["cancel_requested"]


class SendSignal(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    payload: Any = None
    """Becomes the output of each ``wait`` node resumed by the signal (any JSON value)."""


class SignalAccepted(msgspec.Struct, frozen=True):
    run_id: UUID
    signal: str
    resumed_nodes: list[str]
    """The ``wait`` nodes the signal resumed (every node that waited for it)."""


class EventPage(msgspec.Struct, frozen=True):
    items: list[EventEnvelope]
    next_cursor: str | None


class RunLogLine(msgspec.Struct, frozen=True):
    """One node log line: ``seq`` is the ``node_log`` event that recorded it."""

    node_id: str
    attempt: int
    seq: int
    at: str
    level: str
    message: str
    fields: dict[str, Any] = {}


class RunLogs(msgspec.Struct, frozen=True):
    """A run's node log lines in the order they were recorded (``GET /v1/runs/{id}/logs``)."""

    run_id: UUID
    lines: list[RunLogLine]
    dropped: dict[str, int]
    """Node id -> lines dropped by the per-attempt cap (summed over its attempts); nodes that
    dropped none are left out."""
    last_seq: int
    """The seq of the last event this page read: pass it as ``after_seq`` for what comes next."""
    more: bool
    """More log events follow this page: ask again with ``after_seq=last_seq`` right away."""
    ended: bool
    """The run has ended (within what this page read): no more lines will come."""


class ReplayRun(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Fork a finished run: reuse every recorded result not downstream of ``from_node``."""

    from_node: str | None = None
    from_failure: bool = False
    """Fork from the first failed node."""
    overrides: dict[str, Any] = {}
    """Node id -> output to use instead of executing that node."""
    workflow_version: str | None = None
    """Run the fork under this version of the workflow (default: the parent's)."""


class Health(msgspec.Struct, frozen=True):
    status: Literal["ok"]


class StreamHealth(msgspec.Struct, frozen=True):
    """The JetStream stream the relay publishes to, as its servers report it now."""

    name: str
    replicas: int
    """Replicas configured (``FLOWLEDGER_NATS_REPLICAS``)."""
    leader: str | None
    """The server leading the stream; null on a single server that is not clustered."""
    replicas_current: int
    """Replicas up to date (the leader included); below ``replicas``, a node is behind or gone."""
    messages: int


class ReadyState(msgspec.Struct, frozen=True):
    status: Literal["ready", "starting", "unavailable"]
    postgres: bool
    migrations: bool
    nats: bool
    relay_active: bool
    """This instance's relay holds the relay lock and publishes the log to NATS."""
    relay_position: int | None
    """The log position this instance's relay has published up to; null when it is not the
    active relay here (a standby while another instance relays, or disabled): only the active
    relay knows how far publishing has got."""
    stream: StreamHealth | None = None
    """The stream's health; null when JetStream did not answer (then the service is not ready:
    a stream without a quorum or a leader stores nothing)."""


class FieldError(msgspec.Struct, frozen=True):
    """One invalid parameter or body field, as request validation reports it."""

    message: str
    key: str | None = None
    """The parameter (or ``data`` for the body)."""
    source: str | None = None
    """Where it was sent: ``path``, ``query``, ``header``, ``cookie`` or ``body``."""


class WorkflowProblem(msgspec.Struct, frozen=True):
    """One defect of a workflow spec; ``code`` is stable, ``message`` is for people."""

    code: str
    message: str
    node_id: str | None = None
    edge: tuple[str, str] | None = None


class ProblemDetails(msgspec.Struct, frozen=True, kw_only=True):
    """An RFC 9457 problem document (``application/problem+json``): the body of every error.

    ``title`` names the kind of problem, ``detail`` says what exactly is wrong and what to do.
    Some problems add members (below); a client should ignore members it does not know.
    """

    status: int
    """The HTTP status code."""
    title: str
    detail: str
    type: str = "about:blank"
    extra: list[FieldError] | None = None
    """Request validation (400): every invalid parameter or body field."""
    problems: list[WorkflowProblem] | None = None
    """An invalid workflow (400): every defect found."""
    max_depth: int | None = None
    """A body nested too deeply (400): the limit, in levels of arrays/objects."""
    valid_range: tuple[int, int] | None = None
    """``at_seq`` out of range (400): the first and last seq of the run."""
    at_seq: int | None = None
    run_id: str | None = None
    """The run concerned (a reused idempotency key's first run)."""
    idempotency_key: str | None = None
    run_status: str | None = None
    """A run that has already ended (409): how it ended."""
    readiness: ReadyState | None = None
    """``/ready`` answering 503: what is up and what is not."""


class ForkAccepted(msgspec.Struct, frozen=True):
    run_id: UUID
    status: Literal["queued"]
    parent_run_id: UUID
    workflow_id: str
    workflow_version: str
    from_node: str | None
    reused_nodes: list[str]
    overridden_nodes: list[str]
    status_url: str
    events_url: str
    stream_url: str


class CreateSchedule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Start a workflow on a timetable: exactly one of ``cron`` and ``every``."""

    cron: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    """5 fields (minute hour day-of-month month day-of-week), read in ``timezone``: ``"*/5 * * * *"``."""
    every: Annotated[str, msgspec.Meta(max_length=20)] | None = None
    """A fixed interval, ``<n>s|m|h|d`` (``"30s"``, ``"5m"``, ``"1h"``), aligned to the Unix epoch."""
    timezone: Annotated[str, msgspec.Meta(max_length=100)] = "UTC"
    """An IANA time zone name (``"Europe/Paris"``); cron times are its wall-clock times."""
    inputs: dict[str, Any] = {}
    """The inputs of every run the schedule starts."""
    overlap: Literal["skip", "allow"] = "skip"
    """``skip``: no new run while the schedule's previous run has not ended; ``allow``: start anyway."""
    catchup: Literal["none", "latest", "all"] = "latest"
    """Fire times missed (no instance was running): ``none`` skips them, ``latest`` starts the most
    recent one, ``all`` starts each (the latest 100 at most)."""


class Schedule(msgspec.Struct, frozen=True):
    id: UUID
    workflow_id: str
    cron: str | None
    every: str | None
    timezone: str
    inputs: dict[str, Any]
    overlap: Literal["skip", "allow"]
    catchup: Literal["none", "latest", "all"]
    next_fire_at: datetime
    """When it fires next (UTC)."""
    last_fire_at: datetime | None
    """The fire time of the last run it started."""
    last_run_id: UUID | None
    created_by: str
    """The actor who created it; its runs record the actor ``schedule:<id>``."""
    created_at: datetime


class SchedulePage(msgspec.Struct, frozen=True):
    items: list[Schedule]
    next_cursor: str | None
