"""HTTP routes for workflows and runs (``/v1``). Errors become RFC 9457 problem details."""

from __future__ import annotations

import re
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from projections.run_state import RunState, RunStatus
from schemas.api import (
    CancelAccepted,
    CancelRun,
    EventPage,
    ForkAccepted,
    ReplayRun,
    RunAccepted,
    RunLogLine,
    RunLogs,
    SendSignal,
    SignalAccepted,
    StartRun,
    WorkflowDetail,
    WorkflowPage,
    WorkflowRegistered,
    WorkflowSummary,
    WorkflowVersion,
)
from schemas.codec import to_typed
from schemas.events import LOG_LEVELS, TERMINAL_TYPES, LogLevel, NodeLog
from service.api.auth import Principal
from service.api.bodies import json_body, max_depth, spec_format
from service.api.dependencies import provide_runtime
from service.api.errors import problem, problem_responses
from service.api.layouts import layout_of_version
from service.domain.run_document import fold_raw
from service.domain.workflow_spec import InvalidWorkflow, check_spec, parse_spec, spec_warnings
from service.engine.control import (
    NotWaitingForSignal,
    RunAlreadyEnded,
    UnknownRun,
    request_cancel,
    send_signal,
)
from service.engine.fork import ForkError, start_fork
from service.runtime import Runtime
from service.store.workflow_store import UnknownWorkflow

MAX_EVENTS_PAGE = 1000
MAX_SPEC_BYTES = 1024 * 1024


def _run_links(run_id: UUID) -> dict[str, str]:
    return {
        "status_url": f"/v1/runs/{run_id}",
        "events_url": f"/v1/runs/{run_id}/events",
        "stream_url": f"/v1/runs/{run_id}/stream",
    }


# -- workflows -------------------------------------------------------------------------------------


@post(
    "/workflows",
    status_code=201,
    summary="Register a workflow (JSON or YAML): 201 for a new version, 200 for one already stored "
    "(which becomes the current version again)",
    responses={
        200: ResponseSpec(
            WorkflowRegistered,
            description="This spec was already stored: nothing new, and it is the current version again",
            generate_examples=False,
        ),
        **problem_responses(
            (400, "The spec is not valid: `problems` lists every defect (parse errors name the $.path)"),
            (413, f"The spec is larger than {MAX_SPEC_BYTES} bytes"),
            415,
        ),
    },
)
async def register_workflow(
    request: Request[Any, Any, Any], runtime: NamedDependency[Runtime], principal: NamedDependency[Principal]
) -> Response[WorkflowRegistered]:
    fmt = spec_format(request)
    body = await request.body()
    if len(body) > MAX_SPEC_BYTES:
        raise problem(413, "Workflow too large", f"a workflow spec may be at most {MAX_SPEC_BYTES} bytes")
    try:
        spec = check_spec(
            parse_spec(body, format=fmt, max_depth=max_depth(request)),
            runtime.registry,  # type: ignore[arg-type]
        )
    except InvalidWorkflow as exc:
        raise problem(
            400,
            "Invalid workflow",
            str(exc),
            problems=[msgspec.to_builtins(p) for p in exc.problems],
        ) from exc
    stored, created = await runtime.workflows.register(spec, tenant=principal.tenant, actor=principal.actor)
    registered = WorkflowRegistered(
        id=stored.workflow_id,
        version=stored.version,
        created=created,
        created_at=stored.created_at,
        warnings=spec_warnings(spec),
    )
    return Response(registered, status_code=201 if created else 200)


@get(
    "/workflows",
    summary="Registered workflows (latest version of each), by id",
    responses=problem_responses(400),
)
async def list_workflows(
    runtime: NamedDependency[Runtime],
    principal: NamedDependency[Principal],
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    cursor: FromQuery[str | None] = None,
) -> WorkflowPage:
    items = await runtime.workflows.latest_each(after=cursor or "", limit=limit + 1, tenant=principal.tenant)
    page = items[:limit]
    return WorkflowPage(
        items=[
            WorkflowSummary(w.workflow_id, w.version, w.spec.name, len(w.spec.nodes), w.created_at)
            for w in page
        ],
        next_cursor=page[-1].workflow_id if len(items) > limit else None,
    )


@get(
    "/workflows/{workflow_id:str}",
    summary="A workflow's latest (or ?version=) spec and its versions",
    responses=problem_responses(400, (404, "No such workflow (or version of it)")),
)
async def get_workflow(
    runtime: NamedDependency[Runtime],
    principal: NamedDependency[Principal],
    workflow_id: FromPath[str],
    version: FromQuery[str | None] = None,
) -> WorkflowDetail:
    try:
        stored = await runtime.workflows.get(workflow_id, version, tenant=principal.tenant)
    except UnknownWorkflow as exc:
        raise problem(404, "Unknown workflow", str(exc)) from exc
    versions = [
        WorkflowVersion(v, at)
        for v, at in await runtime.workflows.versions(workflow_id, tenant=principal.tenant)
    ]
    layout = await layout_of_version(principal.tenant, workflow_id, stored.version, stored.spec)
    return WorkflowDetail(
        id=workflow_id, version=stored.version, spec=stored.spec, versions=versions, layout=layout
    )


@post(
    "/workflows/{workflow_id:str}/runs",
    status_code=202,
    summary="Start a run (idempotent with idempotency_key)",
    before_request=json_body(StartRun | None),
    responses=problem_responses(
        400,
        (404, "No such workflow (or version of it)"),
        (409, "The idempotency_key was first used with other inputs or another version"),
        413,
        415,
    ),
)
async def start_run(
    runtime: NamedDependency[Runtime],
    principal: NamedDependency[Principal],
    workflow_id: FromPath[str],
    data: JSONBody[StartRun | None] = None,
) -> RunAccepted:
    data = data or StartRun()  # no body: no inputs
    try:
        stored = await runtime.workflows.get(workflow_id, data.version, tenant=principal.tenant)
    except UnknownWorkflow as exc:
        raise problem(404, "Unknown workflow", f"{exc}; register it with POST /v1/workflows") from exc
    enqueued = await runtime.queue.enqueue(
        actor=principal.actor,
        tenant=principal.tenant,
        workflow_id=workflow_id,
        workflow_version=stored.version,
        inputs=data.inputs,
        idempotency_key=data.idempotency_key,
        node_count=len(stored.spec.nodes),
    )
    version: str = stored.version
    status: RunStatus = "queued"
    if not enqueued.created:
        first = await _run_state(runtime, enqueued.run_id)
        _check_same_request(data, first)
        version, status = first.workflow_version, first.status
    return RunAccepted(
        run_id=enqueued.run_id,
        status=status,
        workflow_id=workflow_id,
        workflow_version=version,
        created=enqueued.created,
        **_run_links(enqueued.run_id),
    )


def _check_same_request(data: StartRun, first: RunState) -> None:
    """A repeated idempotency key must come with the same request (Stripe's rule): the same
    inputs, and the same version when one is named. Anything else is a 409, never a silent
    answer for another request."""
    same_inputs = same_json(data.inputs, first.inputs)
    same_version = data.version is None or data.version == first.workflow_version
    if not (same_inputs and same_version):
        differs = "inputs" if not same_inputs else "version"
        raise problem(
            409,
            "Idempotency key reused",
            f"idempotency_key {data.idempotency_key!r} was first used for run {first.run_id} with other "
            f"{differs}; a repeated key must repeat the same request (use a new key for a new run)",
            idempotency_key=data.idempotency_key,
            run_id=str(first.run_id),
        )


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values: key order does not matter, ``1`` equals ``1.0``, ``true`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)  # numbers compare by value; other types never equal each other


# -- runs ------------------------------------------------------------------------------------------


async def _run_state(runtime: Runtime, run_id: UUID) -> RunState:
    assert runtime.store is not None
    events = await runtime.store.read_run(run_id)
    if not events:
        raise problem(404, "Unknown run", f"no run {run_id}")
    return fold_raw(events)


@get(
    "/runs/{run_id:uuid}/events",
    summary="The run's raw events in seq order (after_seq, limit)",
    responses=problem_responses(400, (404, "No such run")),
)
async def run_events(
    runtime: NamedDependency[Runtime],
    run_id: FromPath[UUID],
    after_seq: Annotated[int, QueryParameter(ge=-1, le=2**31 - 1)] = -1,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_EVENTS_PAGE)] = 100,
) -> EventPage:
    assert runtime.store is not None
    events = await runtime.store.read_run(run_id, after_seq=after_seq, limit=limit + 1)
    if not events and after_seq < 0:
        raise problem(404, "Unknown run", f"no run {run_id}")
    page = events[:limit]
    return EventPage(
        items=[to_typed(e) for e in page],
        next_cursor=str(page[-1].seq) if len(events) > limit else None,
    )


LOG_EVENT_TYPES = frozenset({"node_log", *TERMINAL_TYPES})


@get(
    "/runs/{run_id:uuid}/logs",
    summary="The run's node log lines (node_id, minimum level), in the order they were recorded",
    description=(
        "Lines come from the run's `node_log` events: what handlers logged with `ctx.log` and what "
        "python nodes printed or logged. Each node attempt keeps at most 1,000 lines and 64 KiB; "
        "`dropped` counts the rest per node, and the attempt's last batch ends with a marker line "
        "saying how many were dropped. Page (or follow a live run) with `after_seq=<last_seq>` "
        "until `ended`."
    ),
    responses=problem_responses(
        (400, "A bad parameter, e.g. a level that is not debug, info, warning or error"), (404, "No such run")
    ),
)
async def run_logs(
    runtime: NamedDependency[Runtime],
    run_id: FromPath[UUID],
    node_id: FromQuery[str | None] = None,
    level: FromQuery[LogLevel | None] = None,
    after_seq: Annotated[int, QueryParameter(ge=-1, le=2**31 - 1)] = -1,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_EVENTS_PAGE)] = MAX_EVENTS_PAGE,
) -> RunLogs:
    assert runtime.store is not None
    minimum = LOG_LEVELS.index(level) if level is not None else 0  # another level: a 400 (the schema)
    events = await runtime.store.read_run_types(run_id, LOG_EVENT_TYPES, after_seq=after_seq, limit=limit + 1)
    if not events and await runtime.store.run_tenant(run_id) is None:
        raise problem(404, "Unknown run", f"no run {run_id}")
    page = events[:limit]
    lines: list[RunLogLine] = []
    dropped: dict[tuple[str, int], int] = {}
    ended = False
    for raw in page:
        body = to_typed(raw).data
        if not isinstance(body, NodeLog):
            ended = True
            continue
        if node_id is not None and body.node_id != node_id:
            continue
        if body.dropped:
            key = (body.node_id, body.attempt)
            dropped[key] = max(dropped.get(key, 0), body.dropped)
        lines.extend(
            RunLogLine(body.node_id, body.attempt, raw.seq, line.at, line.level, line.message, line.fields)
            for line in body.lines
            if LOG_LEVELS.index(line.level) >= minimum
        )
    per_node: dict[str, int] = {}
    for (node, _attempt), count in dropped.items():
        per_node[node] = per_node.get(node, 0) + count
    return RunLogs(
        run_id=run_id,
        lines=lines,
        dropped=per_node,
        last_seq=page[-1].seq if page else after_seq,
        more=len(events) > limit,
        ended=ended,
    )


@post(
    "/runs/{run_id:uuid}/cancel",
    status_code=202,
    summary="Request cancellation (409 when the run has ended)",
    before_request=json_body(CancelRun | None),
    responses=problem_responses(
        400, (404, "No such run"), (409, "The run has already ended (`run_status` says how)"), 413, 415
    ),
)
async def cancel_run(
    runtime: NamedDependency[Runtime],
    principal: NamedDependency[Principal],
    run_id: FromPath[UUID],
    data: JSONBody[CancelRun | None] = None,
) -> CancelAccepted:
    reason = (data.reason if data else "") or "cancelled by request"
    try:
        await request_cancel(runtime.queue, run_id, reason, principal.actor, tenant=principal.tenant)
    except UnknownRun as exc:
        raise problem(404, "Unknown run", str(exc)) from exc
    except RunAlreadyEnded as exc:
        raise problem(409, "Run already ended", str(exc), run_status=exc.status) from exc
    return CancelAccepted(run_id=run_id, status="cancel_requested")


_SIGNAL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@post(
    "/runs/{run_id:uuid}/signals/{name:str}",
    status_code=202,
    summary="Send a signal to a waiting run (409 when no node of it waits for that signal)",
    before_request=json_body(SendSignal | None),
    responses=problem_responses(
        400,
        (404, "No such run"),
        (409, "The run has ended, or no node of it waits for this signal now"),
        413,
        415,
    ),
)
async def signal_run(
    runtime: NamedDependency[Runtime],
    principal: NamedDependency[Principal],
    run_id: FromPath[UUID],
    name: FromPath[str],
    data: JSONBody[SendSignal | None] = None,
) -> SignalAccepted:
    """Resume the run's ``wait`` nodes waiting for signal ``name``: the payload becomes their
    output, and who sent it is recorded (``run_resumed.actor``)."""
    if not _SIGNAL_NAME.match(name):
        raise problem(
            400, "Invalid signal name", f"signal names are 1-64 of A-Z a-z 0-9 _ . - (got {name!r})"
        )
    payload = data.payload if data else None
    try:
        worker = runtime.settings.worker
        _state, resumed = await send_signal(
            runtime.queue,
            run_id,
            name,
            payload,
            principal.actor,
            tenant=principal.tenant,
            max_bytes=min(worker.output_cap_bytes, worker.max_output_bytes),
        )
    except UnknownRun as exc:
        raise problem(404, "Unknown run", str(exc)) from exc
    except RunAlreadyEnded as exc:
        raise problem(409, "Run already ended", str(exc), run_status=exc.status) from exc
    except NotWaitingForSignal as exc:
        raise problem(409, "Not waiting for this signal", str(exc), waiting_for=exc.waiting_for) from exc
    except ValueError as exc:  # a payload over the event cap
        raise problem(413, "Signal payload too large", str(exc)) from exc
    return SignalAccepted(run_id=run_id, signal=name, resumed_nodes=resumed)


@post(
    "/runs/{run_id:uuid}/replay",
    status_code=202,
    summary="Fork a finished run: reuse results, re-run from a node",
    before_request=json_body(ReplayRun | None),
    responses=problem_responses(
        (400, "The fork cannot be made as asked (e.g. a node the run's workflow does not have)"),
        (404, "No such run, or no such version of its workflow"),
        (409, "The run has not ended yet: fork it once it has"),
        413,
        415,
    ),
)
async def replay_run(
    runtime: NamedDependency[Runtime],
    principal: NamedDependency[Principal],
    run_id: FromPath[UUID],
    data: JSONBody[ReplayRun | None] = None,
) -> ForkAccepted:
    body = data or ReplayRun()
    try:
        enqueued, stored, origin = await start_fork(
            runtime.queue,
            runtime.workflows,
            run_id,
            from_node=body.from_node,
            from_failure=body.from_failure,
            overrides=body.overrides,
            workflow_version=body.workflow_version,
            actor=principal.actor,
            tenant=principal.tenant,
        )
    except UnknownWorkflow as exc:
        raise problem(404, "Unknown workflow version", str(exc)) from exc
    except ForkError as exc:
        status = 409 if "fork it once it has ended" in str(exc) else 400
        raise problem(status, "Cannot fork", str(exc)) from exc
    except LookupError as exc:
        raise problem(404, "Unknown run", str(exc)) from exc
    return ForkAccepted(
        run_id=enqueued.run_id,
        status="queued",
        parent_run_id=run_id,
        workflow_id=stored.workflow_id,
        workflow_version=stored.version,
        from_node=origin.from_node,
        reused_nodes=origin.reuse,
        overridden_nodes=sorted(origin.overrides),
        **_run_links(enqueued.run_id),
    )


def runs_router() -> Router:
    return Router(
        path="/v1",
        route_handlers=[
            register_workflow,
            list_workflows,
            get_workflow,
            start_run,
            run_events,
            run_logs,
            cancel_run,
            signal_run,
            replay_run,
        ],
        dependencies={"runtime": Provide(provide_runtime)},
    )
