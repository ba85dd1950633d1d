"""Time travel: a run's full state right after any one of its events.

The state is computed with ``projections.run_state.fold``, the same pure fold
the engine applies to every batch it appends, so the state after event N is
exactly what the engine held once event N was durable (when N ends one of the
engine's append batches; inside a batch it is the fold of the prefix, a state
the engine never looked at but the log implies). What each node saw is
``service.engine.executor.node_document`` and "ready to run next" is the planner's
``plan(graph, state).start`` with no live tasks: what a worker recovering the
run from that very point would start (so a node that was running at N is
listed: recovery runs it again).

Everything here is pure: events, graph and ``at_seq`` in, a view out. Outputs stored as
blobs (``service.domain.outputs``) are shown as their real values when the caller passes them
(``blobs``: sha256 -> value, loaded for ``state_blob_refs(fold_at(...))``); without them, as the
``{"$blob": ...}`` reference their event recorded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec

from projections.run_state import NodeState, RunState, fold
from schemas.envelope import EventEnvelope
from schemas.events import NodeLog
from service.domain.outputs import real_output
from service.domain.planner import plan
from service.domain.run_document import node_document
from service.domain.workflow_spec import WorkflowGraph

__all__ = [
    "NodeView",
    "RunStateView",
    "SeqOutOfRange",
    "SkipView",
    "fold_at",
    "state_at",
    "view_at",
    "view_of",
]


class SeqOutOfRange(ValueError):
    """``at_seq`` names no event of the run; the message gives the valid range."""

    def __init__(self, at_seq: int, last_seq: int) -> None:
        super().__init__(
            f"at_seq {at_seq} is out of range: this run has events 0..{last_seq}, "
            f"so at_seq must be between 0 and {last_seq} (leave it out for the latest state)"
        )
        self.at_seq = at_seq
        self.last_seq = last_seq


class NodeView(NodeState, frozen=True):
    """Everything the fold knows about a node, plus the document it saw (or would see).

    ``inputs`` is ``{"inputs": <run inputs>, "nodes": {<upstream id>: <output>}}`` for
    a node that has started or is ready to start at this point, else ``None``
    (upstream nodes have not all ended yet, so its document is not determined).
    """

    inputs: dict[str, Any] | None = None
    ready: bool = False
    log_lines: int = 0
    """Log lines the node had recorded by this point (``node_log`` events, every attempt): the
    lines themselves are ``GET /v1/runs/{id}/logs?node_id=`` with ``seq`` up to ``at_seq``."""


class SkipView(msgspec.Struct, frozen=True):
    node_id: str
    reason: str


class RunStateView(msgspec.Struct, frozen=True):
    """A run right after event ``at_seq`` (of ``0..last_seq``)."""

    run_id: str
    workflow_id: str
    workflow_version: str
    at_seq: int
    last_seq: int
    event_type: str
    """Type of the event at ``at_seq``."""
    recorded_at: datetime
    """When the event at ``at_seq`` was recorded."""
    status: str
    started: bool
    cancel_requested: bool
    recoveries: int
    error: str | None
    inputs: dict[str, Any]
    parent_run_id: str | None
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    nodes: dict[str, NodeView]
    """Every node of the workflow version in topological order (pending ones included)."""
    ready: list[str]
    """What the planner would start next from this state with no task running."""
    would_skip: list[SkipView]
    """Nodes the planner would mark skipped next, with the reason."""
    would_finish: str | None
    """Set when the planner would end the run next (``succeeded`` | ``failed`` | ``cancelled``)."""


def _check_range(events: Sequence[EventEnvelope], at_seq: int | None) -> int:
    if not events:
        raise ValueError("a run without events has no state to travel to")
    last = events[-1].seq
    if at_seq is None:
        return last
    if at_seq < 0 or at_seq > last:
        raise SeqOutOfRange(at_seq, last)
    return at_seq


def fold_at(events: Sequence[EventEnvelope], at_seq: int | None = None) -> RunState:
    """The folded state right after event ``at_seq`` (default: the last event).

    ``events`` are one run's events in seq order from seq 0. Raises
    ``SeqOutOfRange`` when ``at_seq`` is below 0 or past the last event.
    """
    n = _check_range(events, at_seq)
    return fold(e for e in events if e.seq <= n)


def view_of(
    state: RunState,
    graph: WorkflowGraph,
    event: EventEnvelope,
    last_seq: int,
    log_lines: Mapping[str, int] | None = None,
    blobs: Mapping[str, Any] | None = None,
) -> RunStateView:
    """The view of an already folded ``state``; ``event`` is the one it was folded up to;
    ``log_lines``: node id -> lines it had logged by then (none when left out).

    ``blobs`` (sha256 -> value) replaces blob references, in ``output`` and in documents."""
    step = plan(graph, state)
    ready = set(step.start)
    nodes: dict[str, NodeView] = {}
    order = [*graph.topo_order, *(n for n in state.nodes if n not in graph.nodes)]
    for node_id in order:
        node = state.node(node_id)
        if not node.node_type and node_id in graph.nodes:
            node = msgspec.structs.replace(node, node_type=graph.nodes[node_id].type)
        seen = node.attempts > 0 or node_id in ready
        document = node_document(graph, state, node_id, blobs) if seen and node_id in graph.nodes else None
        fields = msgspec.structs.asdict(node)
        fields["output"] = real_output(node, blobs)
        nodes[node_id] = NodeView(
            **fields, inputs=document, ready=node_id in ready, log_lines=(log_lines or {}).get(node_id, 0)
        )
    return RunStateView(
        run_id=state.run_id or str(event.run_id),
        workflow_id=state.workflow_id,
        workflow_version=state.workflow_version,
        at_seq=state.seq,
        last_seq=last_seq,
        event_type=event.type,
        recorded_at=event.recorded_at,
        status=state.status,
        started=state.started,
        cancel_requested=state.cancel_requested,
        recoveries=state.recoveries,
        error=state.error,
        inputs=state.inputs,
        parent_run_id=state.parent_run_id,
        queued_at=state.queued_at,
        started_at=state.started_at,
        finished_at=state.finished_at,
        nodes=nodes,
        ready=list(step.start),
        would_skip=[SkipView(n, r) for n, r in step.skip],
        would_finish=step.finish,
    )


def state_at(
    events: Sequence[EventEnvelope],
    at_seq: int | None,
    graph: WorkflowGraph,
    blobs: Mapping[str, Any] | None = None,
) -> RunStateView:
    """The run's full state right after event ``at_seq`` (``None``: the latest).

    ``graph`` is the run's own workflow version (``run_queued.workflow_version``).
    Raises ``SeqOutOfRange`` for an ``at_seq`` outside ``0..last_seq``.
    """
    state = fold_at(events, at_seq)
    return view_at(state, events, graph, blobs)


def view_at(
    state: RunState,
    events: Sequence[EventEnvelope],
    graph: WorkflowGraph,
    blobs: Mapping[str, Any] | None = None,
) -> RunStateView:
    """``view_of`` a state ``fold_at`` made of ``events``."""
    event = next(e for e in events if e.seq == state.seq)
    lines: dict[str, int] = {}
    for e in events:
        if e.seq <= state.seq and isinstance(e.data, NodeLog):
            lines[e.data.node_id] = lines.get(e.data.node_id, 0) + len(e.data.lines)
    return view_of(state, graph, event, events[-1].seq, lines, blobs)
