"""A run's state and what its nodes see, from its stored events. Pure: no I/O, no clock.

Shared by the engine (executing and recovering runs) and history (time travel,
forks, cancellation checks), so all of them read a run the same way.
"""

from __future__ import annotations

from typing import Any

import msgspec

from projections.run_state import RunState, fold
from schemas.codec import to_typed
from schemas.envelope import RawEnvelope
from service.domain.workflow_spec import WorkflowGraph


def node_document(graph: WorkflowGraph, state: RunState, node_id: str) -> dict[str, Any]:
    """What a node sees: the run inputs and the outputs of its succeeded upstream nodes."""
    nodes: dict[str, Any] = {}
    for upstream in sorted(graph.ancestors[node_id]):
        up = state.node(upstream)
        if up.status == "succeeded":
            nodes[upstream] = msgspec.to_builtins(up.marker) if up.marker is not None else up.output
    return {"inputs": state.inputs, "nodes": nodes}


def run_outputs(graph: WorkflowGraph, state: RunState) -> dict[str, Any]:
    """A run's outputs: the output of each succeeded node that no other node follows (its
    sinks), by node id. A parent's ``workflow`` node outputs its child run's outputs."""
    sinks = [n for n in graph.topo_order if not graph.downstream[n]]
    outputs: dict[str, Any] = {}
    for node_id in sinks:
        node = state.node(node_id)
        if node.status == "succeeded":
            outputs[node_id] = msgspec.to_builtins(node.marker) if node.marker is not None else node.output
    return outputs


def fold_raw(events: list[RawEnvelope]) -> RunState:
    """The state of a run from its stored events."""
    return fold(to_typed(e) for e in events)
