"""Workflow specs: parse (JSON or YAML), validate, version and view as a graph.

Everything here is pure except :func:`load_spec_file`, which reads one file.
Validation never stops at the first defect: :func:`validate_spec` returns every
problem it finds, in a deterministic order, each with a stable ``code`` and a
message that names the node or edge so a person can fix it without guessing.

Node configs are checked through a :class:`ConfigChecker` (the node registry
satisfies it) so this module does not depend on the handlers themselves.
"""

from __future__ import annotations

import difflib
import heapq
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol

import msgspec
import yaml

from schemas.workflow import EdgeSpec, NodeSpec, WorkflowSpec
from service.domain.nesting import DEFAULT_MAX_DEPTH, TooDeep, check_json_depth, load_yaml

__all__ = [
    "BRANCH_LABELS",
    "BRANCH_NODE_TYPE",
    "ConfigChecker",
    "InvalidWorkflow",
    "SpecProblem",
    "WorkflowGraph",
    "build_graph",
    "check_spec",
    "load_spec_file",
    "parse_spec",
    "spec_warnings",
    "validate_spec",
]

BRANCH_NODE_TYPE = "branch"
"""The only node type whose output carries a label that edges can select with ``when``."""

BRANCH_LABELS = ("true", "false")
"""The labels a branch node produces (``{"branch": "true" | "false"}``)."""

MAX_REPORTED_CYCLES = 25
"""Cycle enumeration stops here: a dense cyclic graph has exponentially many cycles."""

_MAX_LISTED = 20
"""Longest list of known names quoted in one message."""


class ConfigChecker(Protocol):
    """What validation needs from the node registry."""

    def names(self) -> list[str]:
        """The registered node type names."""
        ...

    def check_config(self, name: str, config: dict[str, Any]) -> object:
        """Parse ``config`` for node type ``name`` and run the type's registration check.

        Raises a ``LookupError`` subclass for an unknown type and a ``ValueError``
        subclass (message says what is wrong) for a bad config.
        """
        ...


class SpecProblem(msgspec.Struct, frozen=True):
    """One defect of a workflow spec.

    ``code`` is stable (one of ``duplicate_node``, ``unknown_edge_node``,
    ``cycle``, ``no_entry_node``, ``unknown_node_type``, ``bad_node_config``,
    ``unreachable_node``, ``bad_retry``, ``duplicate_edge``, ``bad_branch_label``,
    ``parse_error``); ``message`` is meant for people and may be reworded.
    """

    code: str
    message: str
    node_id: str | None = None
    edge: tuple[str, str] | None = None


class InvalidWorkflow(ValueError):
    """A spec that cannot be registered or run; ``str(exc)`` lists every problem, one per line."""

    problems: list[SpecProblem]

    def __init__(self, problems: Sequence[SpecProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(p.message for p in self.problems) or "invalid workflow")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))


# --------------------------------------------------------------------------- parsing


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _yaml_error_message(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        msg = f"YAML is malformed at line {mark.line + 1}, column {mark.column + 1}: {exc.problem or 'syntax error'}"
        if exc.context:
            where = ""
            if exc.context_mark is not None:
                where = f" at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
            msg += f" ({exc.context}{where})"
        return _one_line(msg)
    return _one_line(f"YAML is malformed: {exc}")


_WRONG_SCALAR = re.compile(r"Expected `str[^`]*`, got `(int|float|bool)`")


def _validation_message(exc: msgspec.MsgspecError, fmt: Literal["json", "yaml"]) -> str:
    msg = _one_line(str(exc))
    if fmt == "yaml" and _WRONG_SCALAR.search(msg):
        # YAML turns unquoted true/123/1.5 into non-strings; the fix is always to quote.
        if msg.endswith(".when`"):
            msg += ' (write when: "true" in quotes; unquoted true is a YAML boolean)'
        else:
            msg += " (quote the value in YAML to make it a string)"
    return f"invalid workflow spec: {msg}"


def _detect_format(data: bytes | str) -> Literal["json", "yaml"]:
    head = data.lstrip(b" \t\r\n\xef\xbb\xbf") if isinstance(data, bytes) else data.lstrip(" \t\r\n\ufeff")
    first = head[:1]
    return "json" if first in (b"{", "{") else "yaml"


def parse_spec(
    data: bytes | str,
    *,
    format: Literal["json", "yaml", "auto"] = "auto",
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> WorkflowSpec:
    """Decode a spec from JSON or YAML (same shape) into a typed, shape-checked ``WorkflowSpec``.

    Only the shape is checked here (types, id charset, unknown fields); graph and
    config rules are :func:`validate_spec`'s. ``"auto"`` picks JSON when the first
    non-space character is ``{`` and YAML otherwise. Any failure raises
    :class:`InvalidWorkflow` with one ``parse_error`` naming the ``$.path``; so does a spec
    nesting more than ``max_depth`` levels of arrays/objects (refused before it is decoded).
    """
    fmt = _detect_format(data) if format == "auto" else format
    try:
        if fmt == "json":
            check_json_depth(data, max_depth, "the workflow spec")
            return msgspec.json.decode(data, type=WorkflowSpec)
        try:
            raw = load_yaml(data, max_depth, "the workflow spec")
        except yaml.YAMLError as exc:
            raise InvalidWorkflow([SpecProblem("parse_error", _yaml_error_message(exc))]) from None
        if raw is None:
            raise InvalidWorkflow([SpecProblem("parse_error", "the workflow spec is empty")])
        return msgspec.convert(raw, WorkflowSpec, strict=True)
    except TooDeep as exc:
        raise InvalidWorkflow([SpecProblem("parse_error", str(exc))]) from None
    except msgspec.ValidationError as exc:  # wrong shape, from either format
        raise InvalidWorkflow([SpecProblem("parse_error", _validation_message(exc, fmt))]) from None
    except msgspec.DecodeError as exc:  # not JSON at all
        message = _one_line(str(exc))  # usually "JSON is malformed: ...", not always
        if not message.startswith("JSON"):
            message = f"JSON is malformed: {message}"
        raise InvalidWorkflow([SpecProblem("parse_error", message)]) from None


_SUFFIX_FORMATS: dict[str, Literal["json", "yaml"]] = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}


def load_spec_file(path: Path) -> WorkflowSpec:
    """Read and parse one spec file; the format comes from the suffix (``auto`` for others).

    A missing file raises ``FileNotFoundError`` naming it; a bad spec raises
    :class:`InvalidWorkflow` whose messages start with the file path.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"workflow file {path} does not exist") from None
    try:
        return parse_spec(data, format=_SUFFIX_FORMATS.get(path.suffix.lower(), "auto"))
    except InvalidWorkflow as exc:
        raise InvalidWorkflow(
            [msgspec.structs.replace(p, message=f"{path}: {p.message}") for p in exc.problems]
        ) from None


# --------------------------------------------------------------------------- validation


def _listing(names: Iterable[str]) -> str:
    items = sorted(set(names))
    if not items:
        return "none"
    if len(items) > _MAX_LISTED:
        return ", ".join(items[:_MAX_LISTED]) + f", ... ({len(items) - _MAX_LISTED} more)"
    return ", ".join(items)


def _when_part(edge: EdgeSpec) -> str:
    return "" if edge.when is None else f' (when "{edge.when}")'


def _node_problems(
    node: NodeSpec, ref: str, checker: ConfigChecker, known_types: set[str]
) -> list[SpecProblem]:
    problems: list[SpecProblem] = []

    def unknown_type() -> SpecProblem:
        msg = f"{ref}: unknown node type '{node.type}' (known types: {_listing(known_types)})"
        close = difflib.get_close_matches(node.type, sorted(known_types), n=1)
        if close:
            msg += f"; did you mean '{close[0]}'?"
        return SpecProblem("unknown_node_type", msg, node_id=node.id)

    if node.type not in known_types:
        problems.append(unknown_type())
    else:
        try:
            checker.check_config(node.type, dict(node.config))
        except LookupError:
            problems.append(unknown_type())
        except ValueError as exc:
            detail = _one_line(str(exc))
            if not detail.lower().startswith("invalid config"):  # the checker may already say so
                detail = f"invalid config for type '{node.type}': {detail}"
            problems.append(SpecProblem("bad_node_config", f"{ref}: {detail}", node_id=node.id))

    def bad_retry(what: str) -> None:
        problems.append(SpecProblem("bad_retry", f"{ref}: {what}", node_id=node.id))

    retry = node.retry
    if retry is not None:
        if retry.max_attempts < 1:
            bad_retry(f"retry.max_attempts must be at least 1 (got {retry.max_attempts})")
        if retry.initial_backoff_ms < 0:
            bad_retry(f"retry.initial_backoff_ms must not be negative (got {retry.initial_backoff_ms})")
        if not retry.multiplier >= 1:  # written this way so NaN fails too
            bad_retry(f"retry.multiplier must be at least 1 (got {retry.multiplier})")
        if retry.max_backoff_ms < retry.initial_backoff_ms:
            bad_retry(
                f"retry.max_backoff_ms must be at least retry.initial_backoff_ms "
                f"(got {retry.max_backoff_ms} < {retry.initial_backoff_ms})"
            )
    if node.timeout_ms is not None and node.timeout_ms <= 0:
        bad_retry(f"timeout_ms must be greater than 0 (got {node.timeout_ms})")
    return problems


def _strongly_connected(nodes: Sequence[str], adj: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Tarjan's SCCs (iterative, so deep graphs do not hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    members = set(nodes)  # successors outside ``nodes`` are ignored
    filtered = {n: [m for m in adj.get(n, ()) if m in members] for n in nodes}
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            succs = filtered[node]
            recursed = False
            while i < len(succs):
                nxt = succs[i]
                i += 1
                if nxt not in index:
                    work.append((node, i))
                    work.append((nxt, 0))
                    recursed = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if recursed:
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                result.append(sorted(component))
    return result


def _simple_cycles(
    nodes: Sequence[str], adj: Mapping[str, Sequence[str]], limit: int
) -> tuple[list[list[str]], bool]:
    """Up to ``limit`` elementary cycles (Johnson's algorithm), each starting at its smallest node.

    Returns the cycles and whether the limit cut the enumeration short. The
    search order depends only on sorted ids, never on set iteration order, so
    the (possibly truncated) result is the same in every process.
    """
    cycles: list[list[str]] = []
    succ = {n: [m for m in adj.get(n, ()) if m != n] for n in nodes}
    for n in nodes:
        if n in adj.get(n, ()):
            cycles.append([n])
    pending = [c for c in _strongly_connected(nodes, succ) if len(c) > 1]
    while pending:
        if len(cycles) >= limit:
            return cycles[:limit], True
        pending.sort(key=lambda c: c[0])
        scc = pending.pop(0)
        members = set(scc)
        start = scc[0]  # components are sorted: the smallest id starts every cycle found here
        sub = {n: [m for m in succ[n] if m in members] for n in scc}
        path = [start]
        blocked = {start}
        closed: set[str] = set()
        blocked_by: dict[str, set[str]] = defaultdict(set)
        frames: list[tuple[str, list[str]]] = [(start, list(reversed(sub[start])))]
        while frames:
            this, todo = frames[-1]
            if todo:
                nxt = todo.pop()
                if nxt == start:
                    cycles.append(list(path))
                    closed.update(path)
                    if len(cycles) >= limit:
                        return cycles, True
                elif nxt not in blocked:
                    path.append(nxt)
                    frames.append((nxt, list(reversed(sub[nxt]))))
                    closed.discard(nxt)
                    blocked.add(nxt)
                    continue
            if not todo:
                if this in closed:
                    unblock = [this]
                    while unblock:
                        n = unblock.pop()
                        if n in blocked:
                            blocked.discard(n)
                            unblock.extend(sorted(blocked_by[n]))
                            blocked_by[n].clear()
                else:
                    for m in sub[this]:
                        blocked_by[m].add(this)
                frames.pop()
                path.pop()
        rest = [n for n in scc if n != start]
        pending.extend(c for c in _strongly_connected(rest, sub) if len(c) > 1)
    return cycles, False


def _rotate(cycle: list[str]) -> tuple[str, ...]:
    i = cycle.index(min(cycle))
    return tuple(cycle[i:] + cycle[:i])


def _cycle_problems(node_ids: Sequence[str], adj: Mapping[str, Sequence[str]]) -> list[SpecProblem]:
    found, truncated = _simple_cycles(node_ids, adj, MAX_REPORTED_CYCLES)
    cycles = sorted({_rotate(c) for c in found})
    problems = [SpecProblem("cycle", "cycle: " + " -> ".join((*c, c[0])), node_id=c[0]) for c in cycles]
    if truncated:
        involved = {n for c in _strongly_connected(node_ids, adj) if len(c) > 1 for n in c}
        involved.update(n for n in node_ids if n in adj.get(n, ()))
        problems.append(
            SpecProblem(
                "cycle",
                f"more than {MAX_REPORTED_CYCLES} cycles; the others run through nodes "
                f"{_listing(involved)} (a workflow must be acyclic)",
            )
        )
    return problems


def validate_spec(spec: WorkflowSpec, checker: ConfigChecker) -> list[SpecProblem]:
    """Every problem of ``spec``; empty means it can be registered and run.

    Order (deterministic): an empty node list; duplicate node ids; per node in
    spec order its type/config and retry/timeout problems; per edge in spec order
    unknown endpoints, duplicates and ``when`` labels; then graph-wide problems:
    no entry node, cycles (sorted), unreachable nodes (only checked when the graph
    is acyclic and has an entry, so one defect is not reported twice).
    """
    problems: list[SpecProblem] = []
    if not spec.nodes:
        problems.append(SpecProblem("no_entry_node", "a workflow needs at least one node"))

    positions: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(spec.nodes):
        positions[node.id].append(i)
    first: dict[str, NodeSpec] = {}
    for node in spec.nodes:
        first.setdefault(node.id, node)
    node_ids = list(first)  # unique, spec order
    problems.extend(_duplicate_node_problems(positions))

    known_types = set(checker.names())
    for i, node in enumerate(spec.nodes):
        ref = f"node '{node.id}'" if len(positions[node.id]) == 1 else f"node '{node.id}' (nodes[{i}])"
        problems.extend(_node_problems(node, ref, checker, known_types))

    problems.extend(_edge_problems(spec.edges, first, known_types))
    problems.extend(_graph_problems(node_ids, _adjacency(spec.edges, first)))
    return problems


def _duplicate_node_problems(positions: Mapping[str, Sequence[int]]) -> list[SpecProblem]:
    """One problem per node id used by more than one node (``positions``: its indexes in the spec)."""
    problems: list[SpecProblem] = []
    for node_id, where in positions.items():
        if len(where) > 1:
            refs = ", ".join(f"nodes[{i}]" for i in where)
            problems.append(
                SpecProblem(
                    "duplicate_node",
                    f"node id '{node_id}' is used by {len(where)} nodes ({refs}); node ids must be unique",
                    node_id=node_id,
                )
            )
    return problems


def _edge_problems(
    edges: Sequence[EdgeSpec], nodes: Mapping[str, NodeSpec], known_types: set[str]
) -> list[SpecProblem]:
    """Per edge in spec order: endpoints that are not nodes, repeats, ``when`` labels.

    A repeated edge is reported once, at its first listing, and gets no second copy of
    the first one's problems. ``nodes``: the first node of each id, in spec order.
    """
    problems: list[SpecProblem] = []
    edge_counts: dict[tuple[str, str, str | None], int] = defaultdict(int)
    for edge in edges:
        edge_counts[(edge.from_, edge.to, edge.when)] += 1
    seen_edges: set[tuple[str, str, str | None]] = set()
    for edge in edges:
        key = (edge.from_, edge.to, edge.when)
        if key in seen_edges:
            continue
        seen_edges.add(key)
        problems.extend(_unknown_endpoint_problems(edge, nodes))
        if edge_counts[key] > 1:
            problems.append(
                SpecProblem(
                    "duplicate_edge",
                    f"edge {edge.from_} -> {edge.to}{_when_part(edge)} is listed {edge_counts[key]} times; "
                    "keep one",
                    edge=(edge.from_, edge.to),
                )
            )
        label = _branch_label_problem(edge, nodes.get(edge.from_), known_types)
        if label is not None:
            problems.append(label)
    return problems


def _unknown_endpoint_problems(edge: EdgeSpec, nodes: Mapping[str, NodeSpec]) -> list[SpecProblem]:
    """One problem per end of ``edge`` (once if both are the same) that names no node."""
    pair = (edge.from_, edge.to)
    missing = [n for n in dict.fromkeys(pair) if n not in nodes]
    if not missing:
        return []
    node_ids = list(nodes)
    known = f"known nodes: {_listing(node_ids)}" if node_ids else "the workflow has no nodes"
    return [
        SpecProblem(
            "unknown_edge_node",
            f"edge {edge.from_} -> {edge.to}: node '{name}' does not exist ({known})",
            node_id=name,
            edge=pair,
        )
        for name in missing
    ]


def _branch_label_problem(
    edge: EdgeSpec, source: NodeSpec | None, known_types: set[str]
) -> SpecProblem | None:
    """What is wrong with ``edge``'s ``when``: only a branch node's edges have one, "true" or "false"."""
    if edge.when is None or source is None or source.type not in known_types:
        # A source of unknown type already has its own problem; whether it labels is unknowable.
        return None
    if source.type != BRANCH_NODE_TYPE:
        return SpecProblem(
            "bad_branch_label",
            f'edge {edge.from_} -> {edge.to}: when "{edge.when}" needs a branch node as its '
            f"source, but '{edge.from_}' is a '{source.type}' node; remove `when` or route "
            "the edge through a branch node",
            node_id=edge.from_,
            edge=(edge.from_, edge.to),
        )
    if edge.when not in BRANCH_LABELS:
        return SpecProblem(
            "bad_branch_label",
            f'edge {edge.from_} -> {edge.to}: when must be "true" or "false" (the labels a '
            f'branch node produces), got "{edge.when}"',
            node_id=edge.from_,
            edge=(edge.from_, edge.to),
        )
    return None


def _adjacency(edges: Sequence[EdgeSpec], nodes: Mapping[str, NodeSpec]) -> dict[str, list[str]]:
    """Each node's successors, sorted, over the edges between existing nodes (every node a key)."""
    adj: dict[str, list[str]] = {n: [] for n in nodes}
    for edge in edges:
        if edge.from_ in nodes and edge.to in nodes and edge.to not in adj[edge.from_]:
            adj[edge.from_].append(edge.to)
    for succs in adj.values():
        succs.sort()
    return adj


def _graph_problems(node_ids: list[str], adj: Mapping[str, Sequence[str]]) -> list[SpecProblem]:
    """Graph-wide: no entry node, cycles, then unreachable nodes (only when acyclic with an entry)."""
    problems: list[SpecProblem] = []
    has_incoming = {succ for succs in adj.values() for succ in succs}
    entries = [n for n in node_ids if n not in has_incoming]
    if node_ids and not entries:
        problems.append(
            SpecProblem(
                "no_entry_node",
                "no entry node: every node has an incoming edge, so a run has nowhere to start",
            )
        )
    cycles = _cycle_problems(sorted(node_ids), adj)
    problems.extend(cycles)
    if entries and not cycles:
        problems.extend(_unreachable_problems(node_ids, entries, adj))
    return problems


def _unreachable_problems(
    node_ids: list[str], entries: list[str], adj: Mapping[str, Sequence[str]]
) -> list[SpecProblem]:
    """The nodes no path from an entry node reaches, in spec order."""
    # In an acyclic graph every node is reachable from some entry: kept as a guard
    # so that a future rule (e.g. disabled edges) cannot silently strand a node.
    reached = set(entries)
    frontier = list(entries)
    while frontier:
        for nxt in adj[frontier.pop()]:
            if nxt not in reached:
                reached.add(nxt)
                frontier.append(nxt)
    return [
        SpecProblem(
            "unreachable_node",
            f"node '{node_id}' cannot be reached from any entry node ({', '.join(entries)})",
            node_id=node_id,
        )
        for node_id in node_ids
        if node_id not in reached
    ]


def spec_warnings(spec: WorkflowSpec) -> list[str]:
    """What is valid but probably not meant: in a graph of several nodes, a node no edge touches
    runs on its own, beside the rest, with nothing upstream or downstream of it."""
    if len(spec.nodes) < 2:
        return []
    touched = {e.from_ for e in spec.edges} | {e.to for e in spec.edges}
    return [
        f"node '{n.id}' is not connected to the rest of the graph (no edge starts or ends at it); "
        "it runs on its own as an entry node"
        for n in spec.nodes
        if n.id not in touched
    ]


def check_spec(spec: WorkflowSpec, checker: ConfigChecker) -> WorkflowSpec:
    """Return ``spec`` unchanged if it is valid; raise :class:`InvalidWorkflow` listing every problem."""
    problems = validate_spec(spec, checker)
    if problems:
        raise InvalidWorkflow(problems)
    return spec


# --------------------------------------------------------------------------- graph view


@dataclass(frozen=True)
class WorkflowGraph:
    """An immutable, derived view of a valid spec, used by the planner.

    Every node id is a key of ``upstream``, ``downstream`` and ``ancestors``;
    edge tuples keep spec order.
    """

    spec: WorkflowSpec
    nodes: Mapping[str, NodeSpec]
    upstream: Mapping[str, tuple[EdgeSpec, ...]]
    """Incoming edges per node id."""
    downstream: Mapping[str, tuple[EdgeSpec, ...]]
    """Outgoing edges per node id."""
    entry_nodes: tuple[str, ...]
    """Nodes with no incoming edge, in spec order."""
    ancestors: Mapping[str, frozenset[str]]
    """Transitive upstream node ids (a node is not its own ancestor)."""
    topo_order: tuple[str, ...]
    """Topological order; among nodes that are ready together, the earlier in the spec comes first."""


def build_graph(spec: WorkflowSpec) -> WorkflowGraph:
    """Derive the graph view of a spec that passed :func:`validate_spec`.

    Raises :class:`InvalidWorkflow` on the structural defects it cannot build
    around (duplicate ids, edges to missing nodes, cycles) rather than returning
    a graph the planner would misread.
    """
    nodes: dict[str, NodeSpec] = {}
    problems: list[SpecProblem] = []
    for node in spec.nodes:
        if node.id in nodes:
            problems.append(
                SpecProblem("duplicate_node", f"node id '{node.id}' is used more than once", node.id)
            )
        nodes[node.id] = node
    upstream: dict[str, list[EdgeSpec]] = {n: [] for n in nodes}
    downstream: dict[str, list[EdgeSpec]] = {n: [] for n in nodes}
    for edge in spec.edges:
        if edge.from_ not in nodes or edge.to not in nodes:
            problems.append(
                SpecProblem(
                    "unknown_edge_node",
                    f"edge {edge.from_} -> {edge.to}: node does not exist",
                    edge=(edge.from_, edge.to),
                )
            )
            continue
        downstream[edge.from_].append(edge)
        upstream[edge.to].append(edge)
    if problems:
        raise InvalidWorkflow(problems)

    position = {n: i for i, n in enumerate(nodes)}
    indegree = {n: len({e.from_ for e in upstream[n]}) for n in nodes}
    ready = [(position[n], n) for n in nodes if indegree[n] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    ancestors: dict[str, frozenset[str]] = {}
    while ready:
        _, node_id = heapq.heappop(ready)
        order.append(node_id)
        parents = {e.from_ for e in upstream[node_id]}
        ancestors[node_id] = frozenset(parents.union(*(ancestors[p] for p in parents)))
        for child in dict.fromkeys(e.to for e in downstream[node_id]):
            indegree[child] -= 1
            if indegree[child] == 0:
                heapq.heappush(ready, (position[child], child))
    if len(order) < len(nodes):
        adj = {n: sorted({e.to for e in downstream[n]}) for n in nodes}
        raise InvalidWorkflow(_cycle_problems(sorted(nodes), adj))

    return WorkflowGraph(
        spec=spec,
        nodes=MappingProxyType(nodes),
        upstream=MappingProxyType({n: tuple(es) for n, es in upstream.items()}),
        downstream=MappingProxyType({n: tuple(es) for n, es in downstream.items()}),
        entry_nodes=tuple(n for n in nodes if not upstream[n]),
        ancestors=MappingProxyType(ancestors),
        topo_order=tuple(order),
    )
