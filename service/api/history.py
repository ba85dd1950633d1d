"""History routes (``/v1``): a run's state at any event, and the diff of two runs.

Both read the run's events and fold them with the engine's own fold; the
workflow graph is the run's own recorded version. Errors are RFC 9457 problem
details (404 unknown run, 400 ``at_seq`` out of range with the valid range).
"""

from __future__ import annotations

from uuid import UUID

import msgspec
from litestar import Router, get
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery

from projections.run_state import fold
from schemas.codec import to_typed
from schemas.envelope import EventEnvelope
from service.api.dependencies import provide_runtime
from service.api.errors import problem, problem_responses
from service.domain.outputs import state_blob_refs
from service.domain.run_diff import RunDiff, diff_runs
from service.domain.workflow_spec import WorkflowGraph, build_graph
from service.history.audit import AuditProblem, audit_runs
from service.history.time_travel import RunStateView, SeqOutOfRange, fold_at, view_at
from service.runtime import Runtime
from service.store.blobs import BlobStore, BlobUnavailable
from service.store.workflow_store import UnknownWorkflow


async def _events(runtime: Runtime, run_id: UUID) -> list[EventEnvelope]:
    assert runtime.store is not None
    raw = await runtime.store.read_run(run_id)
    if not raw:
        raise problem(404, "Unknown run", f"no run {run_id}")
    return [to_typed(e) for e in raw]


async def _graph(runtime: Runtime, events: list[EventEnvelope]) -> WorkflowGraph:
    first = fold(events[:1])  # run_queued names the workflow version the run executes
    try:
        spec = await runtime.workflows.spec(first.workflow_id, first.workflow_version, tenant=first.tenant)
    except UnknownWorkflow as exc:
        raise problem(
            409, "Workflow version missing", f"run {first.run_id} ran a workflow version that is gone: {exc}"
        ) from exc
    return build_graph(spec)


@get(
    "/runs/{run_id:uuid}/state",
    summary="The run's full state right after event at_seq (default: the latest): nodes (their "
    "outputs whole, large ones read from the blob store), what each saw, and what would run next",
    responses=problem_responses(
        (400, "A parameter is invalid, or at_seq is past the run's last event (`valid_range`)"),
        (404, "No such run"),
        (409, "The workflow version the run executed is no longer stored"),
    ),
)
async def run_state_at(
    runtime: NamedDependency[Runtime],
    run_id: FromPath[UUID],
    at_seq: FromQuery[int | None] = None,
) -> RunStateView:
    events = await _events(runtime, run_id)
    graph = await _graph(runtime, events)
    try:
        state = fold_at(events, at_seq)
    except SeqOutOfRange as exc:
        raise problem(
            400, "at_seq out of range", str(exc), valid_range=[0, exc.last_seq], at_seq=exc.at_seq
        ) from exc
    # Outputs stored as blobs are returned as their real values: whoever may read the run
    # may read what its nodes produced (the blobs are only those this run's events reference).
    assert runtime.pool is not None and runtime.store is not None
    refs = state_blob_refs(state)
    try:
        blobs = await BlobStore(runtime.pool, schema=runtime.store.schema).load(
            {sha: ref.size_bytes for sha, ref in refs.items()}
        )
    except BlobUnavailable as exc:
        raise problem(500, "Blob unavailable", f"run {run_id}: {exc}") from exc
    return view_at(state, events, graph, blobs)


@get(
    "/runs/{run_id:uuid}/diff/{other_run_id:uuid}",
    summary="Compare run other_run_id against run run_id node by node: status, attempts, "
    "duration, output (SHA-256, JSON paths) and branch",
    responses=problem_responses(
        400,
        (404, "No such run (either of them)"),
        (409, "The workflow version a run executed is no longer stored"),
    ),
)
async def diff_two_runs(
    runtime: NamedDependency[Runtime], run_id: FromPath[UUID], other_run_id: FromPath[UUID]
) -> RunDiff:
    events_a = await _events(runtime, run_id)
    events_b = await _events(runtime, other_run_id)
    graph_a = await _graph(runtime, events_a)
    graph_b = await _graph(runtime, events_b)
    return diff_runs(fold(events_a), fold(events_b), graph_a, graph_b)


class RunAudit(msgspec.Struct, frozen=True):
    """The verification of one run's events: hash chain, schema, legality, queue row."""

    run_id: UUID
    ok: bool
    events: int
    head_hash: str
    """The hash of the run's last event: the value to compare with an exported copy."""
    problems: list[AuditProblem]


@get(
    "/runs/{run_id:uuid}/audit",
    summary="Verify the run's log: the hash chain, every event's schema and order, and its queue row",
    responses=problem_responses(400, (404, "No such run")),
)
async def audit_run(runtime: NamedDependency[Runtime], run_id: FromPath[UUID]) -> RunAudit:
    assert runtime.store is not None and runtime.pool is not None
    last = await runtime.store.read_run(run_id)
    if not last:
        raise problem(404, "Unknown run", f"no run {run_id}")
    async with runtime.pool.acquire() as conn:
        report = await audit_runs(runtime.store, conn, [run_id])
    return RunAudit(
        run_id=run_id,
        ok=report.clean,
        events=report.events,
        head_hash=last[-1].hash,
        problems=report.problems,
    )


def history_router() -> Router:
    return Router(
        path="/v1",
        route_handlers=[run_state_at, diff_two_runs, audit_run],
        dependencies={"runtime": Provide(provide_runtime)},
    )
