"""A run's state and what its nodes see, from its stored events. Pure: no I/O, no clock.

Shared by the engine (executing and recovering runs) and history (time travel,
forks, cancellation checks), so all of them read a run the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from projections.run_state import RunState, fold
from schemas.codec import to_typed
from schemas.envelope import RawEnvelope
from service.domain.outputs import real_output
from service.domain.workflow_spec import WorkflowGraph


def node_document(
    graph: WorkflowGraph, state: RunState, node_id: str, blobs: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What a node sees: the run inputs and the outputs of its succeeded upstream nodes.

    An upstream output stored as a blob is its real value from ``blobs`` (sha256 -> value,
    see ``service.domain.outputs``; ``MissingBlob`` when absent); with ``blobs=None`` it stays
    the ``{"$blob": ...}`` reference the event recorded. An old event's over-the-cap marker
    (before blobs existed, the output itself was not kept) is shown as that marker."""
    nodes: dict[str, Any] = {}
    for upstream in sorted(graph.ancestors[node_id]):
        up = state.node(upstream)
        if up.status == "succeeded":
            nodes[upstream] = (
                msgspec.to_builtins(up.marker) if up.marker is not None else real_output(up, blobs)
            )
    return {"inputs": state.inputs, "nodes": nodes}


def sink_nodes(graph: WorkflowGraph) -> list[str]:
    """The nodes no other node follows: whose outputs are the run's outputs."""
    return [n for n in graph.topo_order if not graph.downstream[n]]


def run_outputs(
    graph: WorkflowGraph, state: RunState, blobs: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A run's outputs: the output of each succeeded node that no other node follows (its
    sinks), by node id, blob outputs as their values from ``blobs`` (as in ``node_document``).
    A parent's ``workflow`` node outputs its child run's outputs."""
    outputs: dict[str, Any] = {}
    for node_id in sink_nodes(graph):
        node = state.node(node_id)
        if node.status == "succeeded":
            outputs[node_id] = (
                msgspec.to_builtins(node.marker) if node.marker is not None else real_output(node, blobs)
            )
    return outputs


def fold_raw(events: list[RawEnvelope]) -> RunState:
    """The state of a run from its stored events."""
    return fold(to_typed(e) for e in events)
