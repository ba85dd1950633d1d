"""Planning: a pure function of (workflow graph, run state, live node tasks) -> what to do next.

Normal execution and crash recovery use the same function: after a crash the
recovered state simply has nodes that are ``running`` or ``retry_wait`` with
no live task, and those are started again. Nodes whose ``node_execute_after``
is in the log are terminal and never planned again.

Poison runs are decided here too, for the same reason: see :func:`poison_reason`.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from typing import Literal

from projections.run_state import TERMINAL_NODE, NodeState, RunState
from schemas.events import HALT_SKIP_PREFIXES
from schemas.workflow import EdgeSpec
from service.domain.workflow_spec import WorkflowGraph

STOPPED_PREFIX, CANCELLED_PREFIX = HALT_SKIP_PREFIXES

Outcome = Literal["succeeded", "failed", "cancelled"]

POISON_RUN = "poison_run"
POISON_LIMIT = 3
"""Crashes (see :func:`poison_reason`) after which a run is ended instead of run again."""


def poison_reason(state: RunState) -> str | None:
    """The run's error when executing it has taken down a worker process or its executor
    ``POISON_LIMIT`` times; None otherwise.

    Counted from the log alone (the fold's ``crashed_workers`` and ``crashed_executors``):
    an attempt that failed with ``worker_crashed`` (its isolated worker died: a signal,
    ``os._exit``, ``sys.exit``, a memory or CPU-time limit), and a ``run_recovered`` after an
    expired lease (the process or executor that held the run died; a graceful hand-back on
    shutdown does not count). The check lives in the planner because the planner is what
    both execution and recovery consult before doing anything: a run that crashes its worker
    a third time is ended instead of retried, and a run that keeps killing the service is
    ended by the first executor that recovers it after the third time, instead of being run
    (and crashing) again on every restart. A cancel requested meanwhile still wins.
    """
    if state.crashes < POISON_LIMIT:
        return None
    parts = []
    if state.crashed_workers:
        parts.append(f"{state.crashed_workers} worker crash(es)")
    if state.crashed_executors:
        parts.append(f"{state.crashed_executors} recovery(ies) after its executor died")
    return (
        f"{POISON_RUN}: executing this run took down a worker or its executor {state.crashes} times "
        f"({', '.join(parts)}); it is not retried or recovered again"
    )


@dataclass(frozen=True)
class Plan:
    start: tuple[str, ...] = ()
    """Nodes to execute now (each as attempt ``attempts + 1``)."""
    skip: tuple[tuple[str, str], ...] = ()
    """Nodes that will never run, with the reason (in topological order)."""
    cancel: tuple[str, ...] = ()
    """Live node tasks to cancel."""
    interrupt: tuple[str, ...] = ()
    """Waiting nodes (no task) to end as cancelled: the run halted while they waited."""
    finish: Outcome | None = None
    """Set when the run is over: append the terminal event."""
    error: str | None = None

    @property
    def idle(self) -> bool:
        return not (self.start or self.skip or self.cancel or self.interrupt or self.finish)


def edge_taken(edge: EdgeSpec, upstream: NodeState) -> bool:
    """An edge carries control when its source succeeded and, for a labelled edge, chose that label."""
    if upstream.status != "succeeded":
        return False
    if edge.when is None:
        return True
    output = upstream.output
    label = output.get("branch") if isinstance(output, dict) else None
    return label == edge.when


def plan(graph: WorkflowGraph, state: RunState, active: Set[str] = frozenset()) -> Plan:
    """What to do next for ``state``; ``active`` are node ids with a live task in this process."""
    if state.ended:
        return Plan()
    nodes = {node_id: state.node(node_id) for node_id in graph.topo_order}

    halt_reason: str | None = None
    outcome: Outcome = "failed"
    poisoned = poison_reason(state)
    if state.cancel_requested:
        halt_reason, outcome = f"{CANCELLED_PREFIX} {state.cancel_reason}", "cancelled"
    elif poisoned is not None:
        halt_reason = f"{STOPPED_PREFIX} {POISON_RUN}"
    elif graph.spec.on_failure == "stop":
        failed = next((n for n in graph.topo_order if nodes[n].status == "failed"), None)
        if failed is not None:
            halt_reason = f"{STOPPED_PREFIX} node {failed} failed"

    if halt_reason is not None:
        cancel = tuple(n for n in graph.topo_order if n in active)
        interrupt = tuple(n for n in graph.topo_order if nodes[n].status == "waiting" and n not in active)
        skip = tuple(
            (n, halt_reason)
            for n in graph.topo_order
            if nodes[n].status in ("pending", "retry_wait")
            or (nodes[n].status == "running" and n not in active)
        )
        if cancel or interrupt:
            return Plan(cancel=cancel, interrupt=interrupt, skip=tuple(s for s in skip if s[0] not in active))
        # A cancelled run's reason is the one given (its skipped nodes say "run cancelled: <it>").
        if outcome == "cancelled":
            error = state.cancel_reason
        elif poisoned is not None:
            error = poisoned
        else:
            error = _run_error(graph, nodes, halt_reason)
        return Plan(skip=skip, finish=outcome, error=error)

    start: list[str] = []
    skip_list: list[tuple[str, str]] = []
    resolved = {n: st.status for n, st in nodes.items()}
    for node_id in graph.topo_order:
        node = nodes[node_id]
        if node.status in ("running", "retry_wait"):
            if node_id not in active:
                start.append(node_id)  # interrupted by a crash: run it again
            continue
        if node.status != "pending" or node_id in active:
            continue
        incoming = graph.upstream[node_id]
        if not incoming:
            start.append(node_id)
            continue
        if any(resolved[e.from_] not in TERMINAL_NODE for e in incoming):
            continue
        failed_up = sorted({e.from_ for e in incoming if resolved[e.from_] == "failed"})
        if failed_up:
            reason = f"upstream {', '.join(failed_up)} failed"
        elif any(resolved[e.from_] == "succeeded" and edge_taken(e, nodes[e.from_]) for e in incoming):
            start.append(node_id)
            continue
        else:
            reason = "not reached: no incoming edge was taken"
        skip_list.append((node_id, reason))
        resolved[node_id] = "skipped"  # lets the skip cascade within this one plan

    if start or skip_list:
        return Plan(start=tuple(start), skip=tuple(skip_list))
    if active or any(resolved[n] not in TERMINAL_NODE for n in graph.topo_order):
        return Plan()
    failed_nodes = [n for n in graph.topo_order if resolved[n] == "failed"]
    if failed_nodes:
        return Plan(finish="failed", error=_run_error(graph, nodes, None))
    return Plan(finish="succeeded")


def _run_error(graph: WorkflowGraph, nodes: dict[str, NodeState], reason: str | None) -> str:
    failed = [n for n in graph.topo_order if nodes[n].status == "failed"]
    if failed:
        first = nodes[failed[0]]
        detail = f"{first.error.kind}: {first.error.message}" if first.error else "failed"
        return f"node {failed[0]} failed ({detail})" + (
            f"; {len(failed) - 1} more failed" if len(failed) > 1 else ""
        )
    return reason or "run failed"
