"""Projection-backed query routes: run summaries, run lists, lineage, node history."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from litestar import Router, get
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, QueryParameter

from projections.node_executions import NodeExecution
from projections.run_summaries import RunSummary
from schemas.api import DagLayout
from service.api.auth import Principal
from service.api.dependencies import provide_runtime
from service.api.errors import problem, problem_responses
from service.api.layouts import layout_of_version
from service.runtime import Runtime
from service.store.read_models import BadCursor

MAX_PAGE = 500
CURSOR = QueryParameter(
    pattern=r"^[A-Za-z0-9_-]{22}$",
    description="The next_cursor of the previous page (22 characters); omit it for the first page",
)


class RunPage(msgspec.Struct, frozen=True):
    items: list[RunSummary]
    next_cursor: str | None
    position: int = 0
    """The log position these summaries reflect: ``GET /v1/stream?after_position=<position>``
    sends every event after it, so a client keeps the list current without a gap."""


class NodeHistoryPage(msgspec.Struct, frozen=True):
    items: list[NodeExecution]
    next_cursor: str | None


class LineageNode(msgspec.Struct, frozen=True):
    id: str
    type: str
    status: str
    attempts: int
    retries: int
    duration_ms: float | None
    output_bytes: int
    item_count: int
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    skip_reason: str | None
    signal: str | None = None
    """The signal a ``waiting`` node waits for (``POST /v1/runs/{id}/signals/{signal}``)."""
    child_run_id: str | None = None
    """The child run a ``workflow`` node started."""


class LineageEdge(msgspec.Struct, frozen=True):
    from_: str = msgspec.field(name="from")
    to: str = msgspec.field()
    when: str | None = None
    taken: bool = False
    items: int = 0


class Lineage(msgspec.Struct, frozen=True):
    run_id: str
    workflow_id: str
    workflow_version: str
    status: str
    parent_run_id: str | None
    nodes: list[LineageNode]
    edges: list[LineageEdge]
    layout: DagLayout
    """Where to draw the DAG: the workflow version's layered layout."""


def _limit(limit: int) -> int:
    if limit > MAX_PAGE:
        raise problem(400, "Limit too large", f"limit may be at most {MAX_PAGE}; use next_cursor to page on")
    return limit


@get(
    "/runs/{run_id:uuid}",
    summary="Run summary: status, progress, current/executed/failed/skipped nodes, times",
    responses=problem_responses(400, (404, "No such run")),
)
async def get_run(runtime: NamedDependency[Runtime], run_id: FromPath[UUID]) -> RunSummary:
    summary = await runtime.read_models.summary(run_id)
    if summary is None:
        raise problem(404, "Unknown run", f"no run {run_id}")
    return summary


@get(
    "/runs",
    summary="Runs, newest first; filter by workflow_id and status; cursor pagination",
    responses=problem_responses(400),
)
async def list_runs(
    runtime: NamedDependency[Runtime],
    principal: NamedDependency[Principal],
    workflow_id: FromQuery[str | None] = None,
    status: FromQuery[
        Literal["queued", "running", "waiting", "succeeded", "failed", "cancelled"] | None
    ] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, CURSOR] = None,
) -> RunPage:
    try:
        page = await runtime.read_models.list_runs(
            tenant=principal.tenant,
            workflow_id=workflow_id,
            status=status,
            limit=_limit(limit),
            cursor=cursor,
        )
    except BadCursor as exc:
        raise problem(400, "Bad cursor", str(exc)) from exc
    return RunPage(items=page.items, next_cursor=page.next_cursor, position=page.position or 0)


@get(
    "/runs/{run_id:uuid}/lineage",
    summary="The run's DAG: nodes with status and figures, edges taken or not",
    responses=problem_responses(400, (404, "No such run")),
)
async def get_lineage(runtime: NamedDependency[Runtime], run_id: FromPath[UUID]) -> Lineage:
    summary = await runtime.read_models.summary(run_id)
    if summary is None:
        raise problem(404, "Unknown run", f"no run {run_id}")
    spec = await runtime.workflows.spec(summary.workflow_id, summary.workflow_version, tenant=summary.tenant)
    executions = {e.node_id: e for e in await runtime.read_models.node_executions(run_id)}
    nodes = []
    for node in spec.nodes:
        e = executions.get(node.id)
        nodes.append(
            LineageNode(
                id=node.id,
                type=node.type,
                status=e.status if e else "pending",
                attempts=e.attempts if e else 0,
                retries=e.retries if e else 0,
                duration_ms=e.duration_ms if e else None,
                output_bytes=e.output_bytes if e else 0,
                item_count=e.item_count if e else 0,
                started_at=e.started_at if e else None,
                finished_at=e.finished_at if e else None,
                error=f"{e.error_kind}: {e.error_message}" if e and e.error_kind else None,
                skip_reason=e.skip_reason if e else None,
                signal=e.signal if e else None,
                child_run_id=e.child_run_id if e else None,
            )
        )
    edges = []
    for edge in spec.edges:
        up = executions.get(edge.from_)
        taken = bool(up and up.status == "succeeded" and (edge.when is None or up.branch_label == edge.when))
        edges.append(
            LineageEdge(
                from_=edge.from_,
                to=edge.to,
                when=edge.when,
                taken=taken,
                items=up.item_count if up and taken else 0,
            )
        )
    return Lineage(
        run_id=summary.run_id,
        workflow_id=summary.workflow_id,
        workflow_version=summary.workflow_version,
        status=summary.status,
        parent_run_id=summary.parent_run_id,
        nodes=nodes,
        edges=edges,
        layout=await layout_of_version(summary.tenant, summary.workflow_id, summary.workflow_version, spec),
    )


@get(
    "/workflows/{workflow_id:str}/nodes/{node_id:str}/history",
    summary="A node's executions across runs",
    responses=problem_responses(400, (404, "No such workflow, or no such node in it")),
)
async def node_history(
    runtime: NamedDependency[Runtime],
    principal: NamedDependency[Principal],
    workflow_id: FromPath[str],
    node_id: FromPath[str],
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, CURSOR] = None,
) -> NodeHistoryPage:
    try:
        page = await runtime.read_models.node_history(
            tenant=principal.tenant,
            workflow_id=workflow_id,
            node_id=node_id,
            limit=_limit(limit),
            cursor=cursor,
        )
    except BadCursor as exc:
        raise problem(400, "Bad cursor", str(exc)) from exc
    if not page.items and cursor is None:
        # Tell "no executions yet" from a typo in the workflow or node id.
        try:
            stored = await runtime.workflows.get(workflow_id, tenant=principal.tenant)
        except LookupError as exc:
            raise problem(404, "Unknown workflow", str(exc)) from exc
        if node_id not in {n.id for n in stored.spec.nodes}:
            raise problem(404, "Unknown node", f"workflow {workflow_id!r} has no node {node_id!r}")
    return NodeHistoryPage(items=page.items, next_cursor=page.next_cursor)


def queries_router() -> Router:
    return Router(
        path="/v1",
        route_handlers=[get_run, list_runs, get_lineage, node_history],
        dependencies={"runtime": Provide(provide_runtime)},
    )
