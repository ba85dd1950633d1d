"""``flowledger schedules``: start a workflow by cron or at a fixed interval, through the HTTP API."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from service.cli._common import api_client, call_api, console
from service.cli._output import Column, format_option, one_line, print_items


@click.group("schedules")
def schedules() -> None:
    """Start workflows on a timetable: cron (in a time zone) or every 30s/5m/1h.

    Each fire time starts one run (actor schedule:<id>), however many instances serve.
    """


def _when(timestamp: str | None) -> str:
    return "" if not timestamp else timestamp.replace("T", " ").replace("Z", "").split("+")[0][:19]


SCHEDULE_COLUMNS = (
    Column("schedule", lambda s: s["id"]),
    Column("workflow", lambda s: s["workflow_id"]),
    Column("when", lambda s: f"cron {s['cron']}" if s["cron"] else f"every {s['every']}"),
    Column("timezone", lambda s: s["timezone"]),
    Column("overlap", lambda s: s["overlap"]),
    Column("catchup", lambda s: s["catchup"]),
    Column("next fire (UTC)", lambda s: _when(s["next_fire_at"])),
    Column("last run", lambda s: s["last_run_id"] or ""),
    Column("inputs", lambda s: one_line(json.dumps(s["inputs"]), 40) if s["inputs"] else ""),
)


@schedules.command("add")
@click.argument("workflow_id")
@click.option(
    "--cron", default=None, help='5 fields: minute hour day-of-month month day-of-week, e.g. "*/5 * * * *".'
)
@click.option("--every", default=None, help="A fixed interval: 30s, 5m, 1h, 1d.")
@click.option("--tz", "timezone", default="UTC", help="IANA time zone of the cron times, e.g. Europe/Paris.")
@click.option("--inputs", "inputs_json", default=None, help="The runs' inputs, one JSON object.")
@click.option(
    "--overlap",
    type=click.Choice(["skip", "allow"]),
    default="skip",
    help="skip: no new run while the previous one of this schedule has not ended.",
)
@click.option(
    "--catchup",
    type=click.Choice(["none", "latest", "all"]),
    default="latest",
    help="Fire times missed while no instance ran: skip them, start the latest, or start each (100 at most).",
)
@format_option("table", "json")
@click.pass_context
def schedules_add(
    ctx: click.Context,
    workflow_id: str,
    cron: str | None,
    every: str | None,
    timezone: str,
    inputs_json: str | None,
    overlap: str,
    catchup: str,
    fmt: str,
) -> None:
    """Schedule WORKFLOW_ID: exactly one of --cron and --every."""
    if (cron is None) == (every is None):
        raise click.UsageError("give exactly one of --cron and --every")
    inputs: Any = {}
    if inputs_json:
        try:
            inputs = json.loads(inputs_json)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--inputs") from exc
        if not isinstance(inputs, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--inputs")
    body: dict[str, Any] = {"timezone": timezone, "inputs": inputs, "overlap": overlap, "catchup": catchup}
    body.update({"cron": cron} if cron is not None else {"every": every})
    with api_client(ctx) as client:
        schedule = call_api(client, "POST", f"/v1/workflows/{workflow_id}/schedules", json=body)
    if fmt == "json":
        sys.stdout.write(json.dumps(schedule, indent=2, ensure_ascii=False) + "\n")
        return
    when = (
        f"cron {schedule['cron']} ({schedule['timezone']})"
        if schedule["cron"]
        else f"every {schedule['every']}"
    )
    console.print(
        f"schedule {schedule['id']} of {schedule['workflow_id']}: {when}; "
        f"next fire {_when(schedule['next_fire_at'])} UTC"
    )


@schedules.command("list")
@click.argument("workflow_id", required=False)
@format_option()
@click.pass_context
def schedules_list(ctx: click.Context, workflow_id: str | None, fmt: str) -> None:
    """Every schedule, or those of WORKFLOW_ID."""
    path = f"/v1/workflows/{workflow_id}/schedules" if workflow_id else "/v1/schedules"
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 500}
    with api_client(ctx) as client:
        while True:
            page = call_api(client, "GET", path, params=params)
            items += page["items"]
            if not page["next_cursor"]:
                break
            params = {**params, "cursor": page["next_cursor"]}
    print_items(fmt, items, SCHEDULE_COLUMNS)


@schedules.command("rm")
@click.argument("schedule_id")
@click.pass_context
def schedules_rm(ctx: click.Context, schedule_id: str) -> None:
    """Delete SCHEDULE_ID: it starts no more runs (those it started go on)."""
    with api_client(ctx) as client:
        try:
            call_api(client, "DELETE", f"/v1/schedules/{schedule_id}")
        except json.JSONDecodeError:
            pass  # 204: deleted, no body (an error is an ApiError with the problem's detail)
    console.print(f"deleted schedule {schedule_id}")
