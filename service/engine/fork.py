"""Forking a run: which recorded results a new run reuses, and starting it (pure planning + one enqueue)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from projections.run_state import RunState
from schemas.events import ForkOrigin
from service.domain.run_document import fold_raw
from service.domain.workflow_spec import WorkflowGraph, build_graph
from service.store.run_queue import Enqueued, RunQueue
from service.store.workflow_store import StoredWorkflow, WorkflowStore


class ForkError(ValueError):
    """A fork that cannot be made as asked (the message says why)."""


def descendants(graph: WorkflowGraph, node_id: str) -> set[str]:
    return {n for n, ancestors in graph.ancestors.items() if node_id in ancestors}


def plan_fork(
    parent: RunState,
    graph: WorkflowGraph,
    *,
    from_node: str | None = None,
    from_failure: bool = False,
    overrides: dict[str, Any] | None = None,
) -> ForkOrigin:
    """Which of the parent's results the fork reuses.

    Every node that succeeded in the parent and is neither ``from_node``, nor an
    overridden node, nor downstream of either, is reused (not executed again);
    the rest runs. Without ``from_node``, ``from_failure`` or overrides nothing is
    reused: a plain re-run linked to its parent.
    """
    overrides = overrides or {}
    if parent.run_id is None:
        raise ForkError("the parent run has no events")
    if from_failure:
        if from_node is not None:
            raise ForkError("give either from_node or from_failure, not both")
        failed = [n for n in graph.topo_order if parent.node(n).status == "failed"]
        if not failed:
            raise ForkError(f"run {parent.run_id} has no failed node to fork from")
        from_node = failed[0]
    named = [*([from_node] if from_node is not None else []), *overrides]
    for node_id in named:
        if node_id not in graph.nodes:
            known = ", ".join(graph.topo_order)
            raise ForkError(f"node {node_id!r} is not in the workflow (nodes: {known})")
    rerun: set[str] = set()
    for node_id in named:
        rerun |= descendants(graph, node_id)
    if from_node is not None:
        rerun.add(from_node)
    if from_node is None and not overrides:
        rerun = set(graph.topo_order)
    reuse = [
        n
        for n in graph.topo_order
        if n not in rerun and n not in overrides and parent.node(n).status == "succeeded"
    ]
    return ForkOrigin(
        parent_run_id=parent.run_id, from_node=from_node, reuse=reuse, overrides=dict(overrides)
    )


async def start_fork(
    queue: RunQueue,
    workflows: WorkflowStore,
    parent_run_id: UUID,
    *,
    from_node: str | None = None,
    from_failure: bool = False,
    overrides: dict[str, Any] | None = None,
    workflow_version: str | None = None,
    actor: str = "",
    tenant: str | None = None,
) -> tuple[Enqueued, StoredWorkflow, ForkOrigin]:
    """Queue a fork of a finished run; returns (the new run, its workflow version, the fork plan).

    ``tenant``: the caller's; a parent of another tenant is as unknown as a missing one.
    ``actor`` is recorded in the fork's ``run_queued``."""
    events = await queue.store.read_run(parent_run_id)
    if not events:
        raise LookupError(f"no run {parent_run_id}")
    parent = fold_raw(events)
    if tenant is not None and parent.tenant != tenant:
        raise LookupError(f"no run {parent_run_id}")
    if not parent.ended:
        raise ForkError(f"run {parent_run_id} is still {parent.status}; fork it once it has ended")
    version = parent.workflow_version if workflow_version is None else workflow_version
    stored = await workflows.get(parent.workflow_id, version, tenant=parent.tenant)
    origin = plan_fork(
        parent, build_graph(stored.spec), from_node=from_node, from_failure=from_failure, overrides=overrides
    )
    enqueued = await queue.enqueue(
        tenant=parent.tenant,
        workflow_id=parent.workflow_id,
        workflow_version=stored.version,
        inputs=parent.inputs,
        parent_run_id=str(parent_run_id),
        node_count=len(stored.spec.nodes),
        fork=origin,
        actor=actor,
    )
    return enqueued, stored, origin
