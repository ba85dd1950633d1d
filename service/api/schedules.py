"""HTTP routes for schedules (``/v1``): a workflow started by cron or at a fixed interval.

Each fire time starts a run exactly as ``POST /v1/workflows/{id}/runs`` would (the scheduler:
``service.engine.scheduler``). Schedules are per tenant: another tenant's is a 404, worded as one
that does not exist.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from litestar import Response, Router, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from schemas.api import CreateSchedule, Schedule, SchedulePage
from service.api.auth import Principal
from service.api.bodies import json_body
from service.api.dependencies import provide_runtime
from service.api.errors import problem, problem_responses
from service.domain.schedules import InvalidSchedule, schedule_timing
from service.runtime import Runtime
from service.store.schedules import StoredSchedule, parse_schedule_id
from service.store.workflow_store import UnknownWorkflow

CURSOR = QueryParameter(
    pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    description="The next_cursor of the previous page (a schedule id); omit it for the first page",
)


def _body(s: StoredSchedule) -> Schedule:
    return Schedule(
        id=s.schedule_id,
        workflow_id=s.workflow_id,
        cron=s.cron,
        every=s.every,
        timezone=s.timezone,
        inputs=s.inputs,
        overlap=s.overlap,  # type: ignore[arg-type]  # the table's CHECK keeps it to these
        catchup=s.catchup,  # type: ignore[arg-type]
        next_fire_at=s.next_fire_at,
        last_fire_at=s.last_fire_at,
        last_run_id=s.last_run_id,
        created_by=s.created_by,
        created_at=s.created_at,
    )


async def _known_workflow(runtime: Runtime, principal: Principal, workflow_id: str) -> None:
    try:
        await runtime.workflows.get(workflow_id, tenant=principal.tenant)
    except UnknownWorkflow as exc:
        raise problem(404, "Unknown workflow", f"{exc}; register it with POST /v1/workflows") from exc


def _schedule_id(text: str) -> UUID:
    schedule_id = parse_schedule_id(text)
    if schedule_id is None:
        raise problem(404, "Unknown schedule", f"no schedule {text}")
    return schedule_id


def _cursor(text: str | None) -> UUID | None:
    if text is None:
        return None
    after = parse_schedule_id(text)
    if after is None:
        raise problem(400, "Bad cursor", f"cursor {text!r} is not one this listing returned")
    return after


@post(
    "/workflows/{workflow_id:str}/schedules",
    status_code=201,
    summary="Schedule a workflow: cron (5 fields, in a time zone) or every (30s, 5m, 1h)",
    before_request=json_body(CreateSchedule | None),
    responses=problem_responses(
        (
            400,
            "The schedule is not valid: both or neither of cron and every, a bad cron or interval, "
            "an unknown time zone",
        ),
        (404, "No such workflow"),
        413,
        415,
    ),
)
async def create_schedule(
    runtime: NamedDependency[Runtime],
    principal: NamedDependency[Principal],
    workflow_id: FromPath[str],
    data: JSONBody[CreateSchedule | None] = None,
) -> Response[Schedule]:
    body = data or CreateSchedule()
    await _known_workflow(runtime, principal, workflow_id)  # first: another tenant's is a plain 404
    now = datetime.now(UTC)
    try:
        timing = schedule_timing(body.cron, body.every, body.timezone, now=now)
    except InvalidSchedule as exc:
        raise problem(400, "Invalid schedule", str(exc)) from exc
    stored = await runtime.schedules.create(
        tenant=principal.tenant,
        workflow_id=workflow_id,
        cron=timing.cron,
        every=body.every.strip() if body.every is not None else None,
        timezone=body.timezone,
        inputs=body.inputs,
        overlap=body.overlap,
        catchup=body.catchup,
        next_fire_at=timing.next_after(now),
        created_by=principal.actor,
    )
    return Response(
        _body(stored), status_code=201, headers={"Location": f"/v1/schedules/{stored.schedule_id}"}
    )


@get(
    "/workflows/{workflow_id:str}/schedules",
    summary="A workflow's schedules, oldest first",
    responses=problem_responses(400, (404, "No such workflow")),
)
async def list_workflow_schedules(
    runtime: NamedDependency[Runtime],
    principal: NamedDependency[Principal],
    workflow_id: FromPath[str],
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, CURSOR] = None,
) -> SchedulePage:
    await _known_workflow(runtime, principal, workflow_id)
    return await _page(runtime, principal, workflow_id, limit, cursor)


@get(
    "/schedules",
    summary="Every schedule of the tenant (or of one workflow), oldest first",
    responses=problem_responses(400),
)
async def list_schedules(
    runtime: NamedDependency[Runtime],
    principal: NamedDependency[Principal],
    workflow_id: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, CURSOR] = None,
) -> SchedulePage:
    return await _page(runtime, principal, workflow_id, limit, cursor)


async def _page(
    runtime: Runtime, principal: Principal, workflow_id: str | None, limit: int, cursor: str | None
) -> SchedulePage:
    items = await runtime.schedules.listing(
        tenant=principal.tenant, workflow_id=workflow_id, after=_cursor(cursor), limit=limit + 1
    )
    page = items[:limit]
    return SchedulePage(
        items=[_body(s) for s in page],
        next_cursor=str(page[-1].schedule_id) if len(items) > limit else None,
    )


@get(
    "/schedules/{schedule_id:str}",
    summary="One schedule, with its next fire time and the last run it started",
    responses=problem_responses(400, (404, "No such schedule")),
)
async def get_schedule(
    runtime: NamedDependency[Runtime], principal: NamedDependency[Principal], schedule_id: FromPath[str]
) -> Schedule:
    stored = await runtime.schedules.get(_schedule_id(schedule_id), tenant=principal.tenant)
    if stored is None:
        raise problem(404, "Unknown schedule", f"no schedule {schedule_id}")
    return _body(stored)


@delete(
    "/schedules/{schedule_id:str}",
    status_code=204,
    summary="Delete a schedule: it starts no more runs (runs it started go on)",
    responses=problem_responses(400, (404, "No such schedule")),
)
async def delete_schedule(
    runtime: NamedDependency[Runtime], principal: NamedDependency[Principal], schedule_id: FromPath[str]
) -> None:
    if not await runtime.schedules.delete(_schedule_id(schedule_id), tenant=principal.tenant):
        raise problem(404, "Unknown schedule", f"no schedule {schedule_id}")


def schedules_router() -> Router:
    return Router(
        path="/v1",
        route_handlers=[
            create_schedule,
            list_workflow_schedules,
            list_schedules,
            get_schedule,
            delete_schedule,
        ],
        dependencies={"runtime": Provide(provide_runtime)},
    )
