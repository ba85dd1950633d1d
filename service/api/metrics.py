"""HTTP routes for metrics: ``GET /v1/metrics/summary`` (JSON) and ``GET /metrics`` (Prometheus).

Both read the read models only (``service.store.metrics_sql``, ``service.api.prometheus``); the summary says how far behind the
log its projections are, so a reader knows how current the figures are.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, Router, get
from litestar.di import NamedDependency, Provide
from litestar.params import FromQuery

from service.api.auth import Principal
from service.api.dependencies import provide_runtime
from service.api.errors import problem, problem_responses
from service.api.prometheus import ServiceMetrics
from service.runtime import Runtime
from service.store.metrics_sql import NodeTypeFigures, Quantiles, WorkflowFigures, read_figures
from service.store.workflow_store import UnknownWorkflow

PROMETHEUS_TEXT = "text/plain; version=0.0.4"
"""The exposition format's media type (Litestar appends ``; charset=utf-8`` to text types)."""


class NodeTypeMetrics(msgspec.Struct):
    """Node executions (one per run and node) of one node type within a workflow.

    ``success_rate`` = succeeded / (succeeded + failed), null before any ended; skipped nodes
    never ran. Durations are of the last attempt of ended executions; ``retries`` counts every
    retry scheduled.
    """

    node_type: str
    executions: int
    succeeded: int
    failed: int
    skipped: int
    in_progress: int
    retries: int
    success_rate: float | None
    duration_p50_ms: float | None
    duration_p95_ms: float | None
    duration_p99_ms: float | None


class WorkflowMetrics(msgspec.Struct):
    """Runs of one workflow by status. ``success_rate`` = succeeded / ended runs (null before
    any ended); durations (started -> ended) are over ended runs."""

    workflow_id: str
    runs: int
    queued: int
    running: int
    waiting: int
    succeeded: int
    failed: int
    cancelled: int
    success_rate: float | None
    duration_p50_ms: float | None
    duration_p95_ms: float | None
    duration_p99_ms: float | None
    node_types: list[NodeTypeMetrics]


class ProjectionFreshness(msgspec.Struct):
    """How far behind the log head the projection the figures come from is."""

    name: str
    position: int
    lag_events: int
    lag_seconds: float


class MetricsSummary(msgspec.Struct):
    """The figures and the projection positions they reflect (read from one database snapshot)."""

    workflows: list[WorkflowMetrics]
    projections: list[ProjectionFreshness]


def _quantiles(q: Quantiles | None) -> tuple[float | None, float | None, float | None]:
    return (q.p50, q.p95, q.p99) if q else (None, None, None)


def _node_type(n: NodeTypeFigures) -> NodeTypeMetrics:
    p50, p95, p99 = _quantiles(n.duration_ms)
    return NodeTypeMetrics(
        node_type=n.node_type,
        executions=n.executions,
        succeeded=n.succeeded,
        failed=n.failed,
        skipped=n.skipped,
        in_progress=n.in_progress,
        retries=n.retries,
        success_rate=n.success_rate,
        duration_p50_ms=p50,
        duration_p95_ms=p95,
        duration_p99_ms=p99,
    )


def _workflow(w: WorkflowFigures, node_types: list[NodeTypeMetrics]) -> WorkflowMetrics:
    p50, p95, p99 = _quantiles(w.duration_ms)
    return WorkflowMetrics(
        workflow_id=w.workflow_id,
        runs=w.runs,
        queued=w.queued,
        running=w.running,
        waiting=w.waiting,
        succeeded=w.succeeded,
        failed=w.failed,
        cancelled=w.cancelled,
        success_rate=w.success_rate,
        duration_p50_ms=p50,
        duration_p95_ms=p95,
        duration_p99_ms=p99,
        node_types=node_types,
    )


def provide_metrics(request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]) -> ServiceMetrics:
    """The app's ``ServiceMetrics``, created on first use (its registry lives as long as the app)."""
    state = request.app.state
    metrics: ServiceMetrics | None = state.get("metrics")
    if metrics is None:
        assert runtime.store is not None
        metrics = state["metrics"] = ServiceMetrics(runtime.store.schema)
    return metrics


@get(
    "/v1/metrics/summary",
    summary="Per workflow and per (workflow, node type): counts, success rate, duration percentiles",
    responses=problem_responses(400, (404, "No such workflow")),
)
async def metrics_summary(
    runtime: NamedDependency[Runtime],
    principal: NamedDependency[Principal],
    metrics: NamedDependency[ServiceMetrics],
    workflow_id: FromQuery[str | None] = None,
) -> MetricsSummary:
    assert runtime.pool is not None and runtime.store is not None
    figures = await read_figures(runtime.pool, runtime.store, metrics.queries, principal.tenant, workflow_id)
    workflows = figures.workflows
    if workflow_id is not None and not workflows:
        try:
            await runtime.workflows.get(workflow_id, tenant=principal.tenant)
        except UnknownWorkflow as exc:
            raise problem(
                404, "Unknown workflow", f"{exc}; GET /v1/workflows lists the registered ones"
            ) from exc
        workflows = [WorkflowFigures(workflow_id)]  # registered, no run projected yet
    by_workflow: dict[str, list[NodeTypeMetrics]] = {}
    for n in figures.node_types:
        by_workflow.setdefault(n.workflow_id, []).append(_node_type(n))
    return MetricsSummary(
        workflows=[_workflow(w, by_workflow.get(w.workflow_id, [])) for w in workflows],
        projections=[
            ProjectionFreshness(p.name, p.position, p.lag_events, p.lag_seconds) for p in figures.projections
        ],
    )


@get(
    "/metrics",
    summary="Prometheus metrics (text format 0.0.4): the summary's figures and service gauges",
    media_type=PROMETHEUS_TEXT,
    responses=problem_responses(),
)
async def prometheus_metrics(
    runtime: NamedDependency[Runtime],
    principal: NamedDependency[Principal],
    metrics: NamedDependency[ServiceMetrics],
) -> Response[bytes]:
    snapshot = await metrics.snapshot(runtime, principal.tenant)
    return Response(metrics.render(snapshot), media_type=PROMETHEUS_TEXT)


def metrics_router() -> Router:
    return Router(
        path="/",
        route_handlers=[metrics_summary, prometheus_metrics],
        dependencies={
            "runtime": Provide(provide_runtime),
            "metrics": Provide(provide_metrics, sync_to_thread=False),
        },
    )
