"""Diff two runs node by node: status, attempts, duration, output and branch taken.

Pure: two folded states (``projections.run_state.fold``) and their workflow
graphs in, a ``RunDiff`` out. Outputs are compared by SHA-256 of their
canonical JSON (keys sorted), so two runs of a deterministic workflow with the
same inputs diff as ``equal`` on every node; when either output was stored as a
blob (over the event cap; its event holds a ``{"$blob": ...}`` reference) or, in
old events, recorded only as a marker, the recorded ``output_sha256`` (of the
output's JSON) decides, so no blob is read.
Small outputs (both under ``JSON_DIFF_MAX_BYTES``) that differ also get a JSON
diff: the paths added, removed and changed.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import msgspec

from projections.run_state import NodeState, RunState
from service.domain.outputs import node_blob_ref
from service.domain.workflow_spec import BRANCH_NODE_TYPE, WorkflowGraph

__all__ = [
    "JSON_DIFF_MAX_BYTES",
    "MAX_JSON_CHANGES",
    "JsonChange",
    "NodeDiff",
    "RunDiff",
    "diff_runs",
    "json_diff",
]

JSON_DIFF_MAX_BYTES = 64 * 1024
"""Outputs at least this large (encoded) are compared by hash only, without a path diff."""

MAX_JSON_CHANGES = 200
"""A JSON diff lists at most this many paths (``json_truncated`` says when more differ)."""

OutputComparison = Literal["equal", "changed", "only_a", "only_b", "none"]


class JsonChange(msgspec.Struct, frozen=True):
    """One differing path (``$`` is the root; ``$.a[0].b``)."""

    op: Literal["added", "removed", "changed"]
    path: str
    a: Any = None
    b: Any = None


class NodeDiff(msgspec.Struct, frozen=True):
    node_id: str
    presence: Literal["both", "only_a", "only_b"]
    """``only_a``: the node is in run a's workflow version but not in run b's (and vice versa)."""
    node_type_a: str | None
    node_type_b: str | None
    status_a: str | None
    status_b: str | None
    attempts_a: int
    attempts_b: int
    duration_ms_a: float | None
    duration_ms_b: float | None
    duration_change_ms: float | None
    duration_change_pct: float | None
    """Relative to run a; ``None`` when either did not run or a took 0 ms."""
    output: OutputComparison
    output_sha256_a: str | None
    output_sha256_b: str | None
    json_changes: list[JsonChange] | None
    """Set when the outputs changed and both are small enough to diff."""
    json_truncated: bool
    branch_a: str | None
    branch_b: str | None
    branch_changed: bool
    error_a: str | None
    """``kind: message`` of the node's last failed attempt."""
    error_b: str | None
    skip_reason_a: str | None
    skip_reason_b: str | None
    equal: bool
    """In both runs, with the same status, output (or none), branch, error and skip reason."""


class RunDiff(msgspec.Struct, frozen=True):
    run_a: str | None
    run_b: str | None
    workflow_id_a: str
    workflow_id_b: str
    workflow_version_a: str
    workflow_version_b: str
    status_a: str
    status_b: str
    duration_ms_a: float | None
    duration_ms_b: float | None
    duration_change_ms: float | None
    duration_change_pct: float | None
    inputs_equal: bool
    inputs_changes: list[JsonChange]
    nodes: list[NodeDiff]
    """Run a's nodes in its topological order, then nodes only run b's workflow has."""
    equal: bool
    """Same status, and every node in both runs with the same status, output and branch."""
    nodes_equal: int
    nodes_changed: int
    nodes_only_a: int
    nodes_only_b: int


# -- JSON ------------------------------------------------------------------------------------------


def canonical_sha256(value: Any) -> str:
    """SHA-256 of ``value``'s canonical JSON (object keys sorted at every level)."""
    return hashlib.sha256(msgspec.json.encode(value, order="sorted")).hexdigest()


def _key_path(path: str, key: str) -> str:
    if key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{msgspec.json.encode(key).decode()}]"


def _same_leaf(a: Any, b: Any) -> bool:
    # Python says True == 1 == 1.0; JSON says they differ.
    return type(a) is type(b) and a == b


def json_diff(a: Any, b: Any, *, limit: int = MAX_JSON_CHANGES) -> tuple[list[JsonChange], bool]:
    """The paths where JSON values ``a`` and ``b`` differ, at most ``limit``; and whether more did.

    Objects are compared key by key, arrays index by index (an inserted element
    shows as changes from that index on, then an added tail).
    """
    changes: list[JsonChange] = []
    truncated = False

    def add(change: JsonChange) -> bool:
        nonlocal truncated
        if len(changes) >= limit:
            truncated = True
            return False
        changes.append(change)
        return True

    def walk(x: Any, y: Any, path: str) -> bool:
        if isinstance(x, dict) and isinstance(y, dict):
            for key in sorted(x.keys() | y.keys()):
                sub = _key_path(path, key)
                if key not in y:
                    ok = add(JsonChange("removed", sub, a=x[key]))
                elif key not in x:
                    ok = add(JsonChange("added", sub, b=y[key]))
                else:
                    ok = walk(x[key], y[key], sub)
                if not ok:
                    return False
            return True
        if isinstance(x, list) and isinstance(y, list):
            for i in range(max(len(x), len(y))):
                sub = f"{path}[{i}]"
                if i >= len(y):
                    ok = add(JsonChange("removed", sub, a=x[i]))
                elif i >= len(x):
                    ok = add(JsonChange("added", sub, b=y[i]))
                else:
                    ok = walk(x[i], y[i], sub)
                if not ok:
                    return False
            return True
        if _same_leaf(x, y):
            return True
        return add(JsonChange("changed", path, a=x, b=y))

    walk(a, b, "$")
    return changes, truncated


# -- nodes -----------------------------------------------------------------------------------------


def _ran(node: NodeState) -> bool:
    return node.status in ("succeeded", "failed")


def _duration(node: NodeState) -> float | None:
    return node.duration_ms if _ran(node) else None


def _has_output(node: NodeState) -> bool:
    return node.status == "succeeded" and bool(node.output_sha256)


def _by_recorded_hash(node: NodeState) -> bool:
    """The output itself is not in the state (a blob reference or an old marker): only its hash is."""
    return node.marker is not None or node_blob_ref(node) is not None


def _branch(node: NodeState, node_type: str | None) -> str | None:
    if node_type != BRANCH_NODE_TYPE or node.status != "succeeded" or not isinstance(node.output, dict):
        return None
    label = node.output.get("branch")
    return label if isinstance(label, str) else None


def _error(node: NodeState) -> str | None:
    return f"{node.error.kind}: {node.error.message}" if node.error is not None else None


def _skip_reason(node: NodeState) -> str | None:
    return (node.skip_reason or "") if node.status == "skipped" else None


def _change(a: float | None, b: float | None) -> tuple[float | None, float | None]:
    if a is None or b is None:
        return None, None
    pct = (b - a) / a * 100 if a > 0 else None
    return b - a, pct


def _node_type(graph: WorkflowGraph | None, state: RunState, node_id: str) -> str | None:
    if graph is not None and node_id in graph.nodes:
        return graph.nodes[node_id].type
    node = state.nodes.get(node_id)
    return node.node_type if node is not None and node.node_type else None


def _diff_node(
    node_id: str,
    presence: Literal["both", "only_a", "only_b"],
    a: RunState,
    b: RunState,
    graph_a: WorkflowGraph | None,
    graph_b: WorkflowGraph | None,
) -> NodeDiff:
    in_a, in_b = presence != "only_b", presence != "only_a"
    na, nb = a.node(node_id), b.node(node_id)
    type_a = _node_type(graph_a, a, node_id) if in_a else None
    type_b = _node_type(graph_b, b, node_id) if in_b else None
    da, db = (_duration(na) if in_a else None), (_duration(nb) if in_b else None)
    change_ms, change_pct = _change(da, db)
    has_a, has_b = in_a and _has_output(na), in_b and _has_output(nb)
    changes: list[JsonChange] | None = None
    truncated = False
    output: OutputComparison
    if has_a and has_b:
        if _by_recorded_hash(na) or _by_recorded_hash(nb):
            same = na.output_sha256 == nb.output_sha256
        else:
            same = canonical_sha256(na.output) == canonical_sha256(nb.output)
        output = "equal" if same else "changed"
        small = max(na.output_bytes, nb.output_bytes) < JSON_DIFF_MAX_BYTES
        if output == "changed" and small and not (_by_recorded_hash(na) or _by_recorded_hash(nb)):
            changes, truncated = json_diff(na.output, nb.output)
    else:
        output = "only_a" if has_a else "only_b" if has_b else "none"
    branch_a = _branch(na, type_a) if in_a else None
    branch_b = _branch(nb, type_b) if in_b else None
    branch_changed = (branch_a is not None or branch_b is not None) and branch_a != branch_b
    status_a, status_b = (na.status if in_a else None), (nb.status if in_b else None)
    error_a, error_b = (_error(na) if in_a else None), (_error(nb) if in_b else None)
    skip_a, skip_b = (_skip_reason(na) if in_a else None), (_skip_reason(nb) if in_b else None)
    return NodeDiff(
        node_id=node_id,
        presence=presence,
        node_type_a=type_a,
        node_type_b=type_b,
        status_a=status_a,
        status_b=status_b,
        attempts_a=na.attempts if in_a else 0,
        attempts_b=nb.attempts if in_b else 0,
        duration_ms_a=da,
        duration_ms_b=db,
        duration_change_ms=change_ms,
        duration_change_pct=change_pct,
        output=output,
        output_sha256_a=na.output_sha256 if has_a else None,
        output_sha256_b=nb.output_sha256 if has_b else None,
        json_changes=changes,
        json_truncated=truncated,
        branch_a=branch_a,
        branch_b=branch_b,
        branch_changed=branch_changed,
        error_a=error_a,
        error_b=error_b,
        skip_reason_a=skip_a,
        skip_reason_b=skip_b,
        equal=presence == "both"
        and status_a == status_b
        and output in ("equal", "none")
        and not branch_changed
        and error_a == error_b
        and skip_a == skip_b,
    )


def _node_ids(graph: WorkflowGraph | None, state: RunState) -> list[str]:
    ids = list(graph.topo_order) if graph is not None else []
    ids.extend(n for n in state.nodes if n not in ids)  # recorded but not in the graph given
    return ids


def _run_duration(state: RunState) -> float | None:
    if state.started_at is None or state.finished_at is None:
        return None
    return (state.finished_at - state.started_at).total_seconds() * 1000


def diff_runs(
    state_a: RunState,
    state_b: RunState,
    graph_a: WorkflowGraph | None,
    graph_b: WorkflowGraph | None,
) -> RunDiff:
    """Compare run b against run a.

    A node is in a run when that run's workflow graph has it (or, without a
    graph, when the run recorded events for it). Pending nodes of runs still in
    progress compare as status ``pending``.
    """
    ids_a, ids_b = _node_ids(graph_a, state_a), _node_ids(graph_b, state_b)
    set_b = set(ids_b)
    set_a = set(ids_a)
    nodes = [
        _diff_node(n, "both" if n in set_b else "only_a", state_a, state_b, graph_a, graph_b) for n in ids_a
    ]
    nodes.extend(_diff_node(n, "only_b", state_a, state_b, graph_a, graph_b) for n in ids_b if n not in set_a)
    da, db = _run_duration(state_a), _run_duration(state_b)
    change_ms, change_pct = _change(da, db)
    inputs_changes, _ = json_diff(state_a.inputs, state_b.inputs)
    same = [n for n in nodes if n.equal]
    both = [n for n in nodes if n.presence == "both"]
    return RunDiff(
        run_a=state_a.run_id,
        run_b=state_b.run_id,
        workflow_id_a=state_a.workflow_id,
        workflow_id_b=state_b.workflow_id,
        workflow_version_a=state_a.workflow_version,
        workflow_version_b=state_b.workflow_version,
        status_a=state_a.status,
        status_b=state_b.status,
        duration_ms_a=da,
        duration_ms_b=db,
        duration_change_ms=change_ms,
        duration_change_pct=change_pct,
        inputs_equal=not inputs_changes,
        inputs_changes=inputs_changes,
        nodes=nodes,
        equal=state_a.status == state_b.status and len(same) == len(nodes),
        nodes_equal=len(same),
        nodes_changed=len(both) - len(same),
        nodes_only_a=sum(1 for n in nodes if n.presence == "only_a"),
        nodes_only_b=sum(1 for n in nodes if n.presence == "only_b"),
    )
