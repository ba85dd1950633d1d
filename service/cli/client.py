"""CLI commands that talk to a running service over its HTTP API (like any other client)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

import click
import httpx
from rich.markup import escape
from rich.table import Table

from service.cli._common import (
    RUN_ID,
    TERMINAL_TYPES,
    api_client,
    call_api,
    console,
    describe_event,
    status_markup,
)


def parse_input(pair: str) -> tuple[str, Any]:
    """``key=value``: the value as JSON when it parses (numbers, true, objects), else as text."""
    key, sep, value = pair.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--input")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


@click.group("workflows")
def workflows() -> None:
    """Register and list workflow definitions."""


@workflows.command("add")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def workflows_add(ctx: click.Context, file: Path) -> None:
    """Register FILE (JSON or YAML) as the current version: a changed spec is stored as a new
    version; one already stored is not stored again.

    The format comes from the suffix (.json, .yaml, .yml); for any other name it
    is JSON when the content parses as JSON, else YAML.
    """
    content = file.read_bytes()
    content_type = f"application/{spec_format(file, content)}"
    with api_client(ctx) as client:
        body = call_api(
            client, "POST", "/v1/workflows", content=content, headers={"content-type": content_type}
        )
    state = "registered" if body["created"] else "already registered; it is the current version"
    console.print(f"{body['id']} version {body['version']} {state}")


def spec_format(file: Path, content: bytes) -> Literal["json", "yaml"]:
    """The format of a workflow spec file: by suffix when it says, else by content."""
    suffix = file.suffix.lower()
    if suffix == ".json":
        return "json"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    try:
        json.loads(content)
    except ValueError:  # also UnicodeDecodeError: the server reports the bytes as YAML then
        return "yaml"
    return "json"


@workflows.command("list")
@click.pass_context
def workflows_list(ctx: click.Context) -> None:
    """Registered workflows with their latest version."""
    with api_client(ctx) as client:
        body = call_api(client, "GET", "/v1/workflows", params={"limit": 500})
    for item in body["items"]:
        console.print(f"{item['id']}\t{item['version']}\t{item['node_count']} nodes\t{item['name'] or ''}")


_NODE_MARKS = {"node_execute_before": "▶", "node_retry_scheduled": "↻"}


def follow_line(event: dict[str, Any]) -> str | None:
    """How ``run --follow`` shows one event (rich markup), or None for events it leaves out."""
    kind, data = event["type"], event["data"]
    if kind in ("run_queued", "node_execute_after_data") or (
        kind == "node_execute_before" and data.get("reused_from")
    ):
        return None  # a fork's reused node is shown once, with its node_execute_after
    text = escape(describe_event(kind, data))
    match kind:
        case "node_execute_after" if data.get("reused_from"):
            return f"  [cyan]↺[/cyan] {text}"
        case "node_execute_after":
            return f"  [green]✓[/green] {text}" if data["status"] == "succeeded" else f"  [red]✗[/red] {text}"
        case "node_skipped":
            return f"  [dim]⤼ skipped {text}[/dim]"
        case _ if kind in _NODE_MARKS:
            return f"  {_NODE_MARKS[kind]} {text}"
        case "run_finished":
            colour = "green" if data.get("status") == "succeeded" else "red"
            return f"[{colour}]run[/{colour}] {text}"
    label = kind.replace("_", " ")
    return f"[bold]{label}[/bold] {text}".rstrip()


def follow_events(
    client: httpx.Client, run_id: str, *, ndjson: bool, follow: bool, poll_s: float = 0.2
) -> int:
    """Print a run's events (and, with ``follow``, new ones until it ends). Returns the exit code."""
    after = -1
    while True:
        page = call_api(
            client, "GET", f"/v1/runs/{run_id}/events", params={"after_seq": after, "limit": 1000}
        )
        for event in page["items"]:
            after = event["seq"]
            if ndjson:
                sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
            elif (line := follow_line(event)) is not None:
                console.print(line)
            if event["type"] in TERMINAL_TYPES:
                ok = event["type"] == "run_finished" and event["data"]["status"] == "succeeded"
                return 0 if ok else 1
        if page["next_cursor"] is not None:
            continue
        if not follow:
            return 0
        time.sleep(poll_s)


@click.command("run")
@click.argument("workflow_id")
@click.option(
    "--input", "-i", "inputs", multiple=True, help="key=value (value parsed as JSON when it can be)."
)
@click.option("--inputs-json", default=None, help="All inputs as one JSON object (merged under --input).")
@click.option(
    "--idempotency-key", default=None, help="A repeated key returns the first run instead of a new one."
)
@click.option("--version", "version", default=None, help="Run this workflow version instead of the latest.")
@click.option("--follow", "-f", is_flag=True, help="Show progress live; exit 0 on success, 1 on failure.")
@click.pass_context
def run(
    ctx: click.Context,
    workflow_id: str,
    inputs: tuple[str, ...],
    inputs_json: str | None,
    idempotency_key: str | None,
    version: str | None,
    follow: bool,
) -> None:
    """Start a run of WORKFLOW_ID."""
    values: dict[str, Any] = {}
    if inputs_json:
        try:
            loaded = json.loads(inputs_json)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--inputs-json") from exc
        if not isinstance(loaded, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--inputs-json")
        values.update(loaded)
    values.update(parse_input(p) for p in inputs)
    body: dict[str, Any] = {"inputs": values}
    if idempotency_key:
        body["idempotency_key"] = idempotency_key
    if version:
        body["version"] = version
    with api_client(ctx) as client:
        accepted = call_api(client, "POST", f"/v1/workflows/{workflow_id}/runs", json=body)
        run_id = accepted["run_id"]
        note = "" if accepted["created"] else " (existing run for this idempotency key)"
        console.print(f"run {run_id} queued ({workflow_id} {accepted['workflow_version']}){note}")
        if follow:
            sys.exit(follow_events(client, run_id, ndjson=False, follow=True))


@click.command("events")
@click.argument("run_id", type=RUN_ID)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until the run ends.")
@click.option("--format", "fmt", type=click.Choice(["table", "ndjson"]), default="table")
@click.pass_context
def events(ctx: click.Context, run_id: UUID, follow: bool, fmt: str) -> None:
    """Print a run's events in order."""
    with api_client(ctx) as client:
        code = follow_events(client, str(run_id), ndjson=fmt == "ndjson", follow=follow)
    if follow:
        sys.exit(code)


@click.command("cancel")
@click.argument("run_id", type=RUN_ID)
@click.option("--reason", default="", help="Recorded in the run's cancel events.")
@click.pass_context
def cancel(ctx: click.Context, run_id: UUID, reason: str) -> None:
    """Request cancellation of a run (fails when it has already ended)."""
    with api_client(ctx) as client:
        call_api(client, "POST", f"/v1/runs/{run_id}/cancel", json={"reason": reason})
    console.print(f"cancel requested for run {run_id}")


@click.group("runs")
def runs() -> None:
    """Run summaries from the read models."""


@runs.command("list")
@click.option("--workflow", "workflow_id", default=None, help="Only runs of this workflow.")
@click.option(
    "--status",
    type=click.Choice(["queued", "running", "waiting", "succeeded", "failed", "cancelled"]),
    default=None,
)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 500))
@click.option("--cursor", default=None, help="next_cursor of a previous page.")
@click.pass_context
def runs_list(
    ctx: click.Context, workflow_id: str | None, status: str | None, limit: int, cursor: str | None
) -> None:
    """Runs, newest first."""
    params: dict[str, Any] = {"limit": limit}
    for name, value in (("workflow_id", workflow_id), ("status", status), ("cursor", cursor)):
        if value:
            params[name] = value
    with api_client(ctx) as client:
        page = call_api(client, "GET", "/v1/runs", params=params)
    table = Table()
    # The run id is what one copies into `runs show`: never cut. On a narrow terminal
    # (80 columns when piped) the other columns wrap instead of being cut with an ellipsis.
    table.add_column("run", no_wrap=True, min_width=len(str(UUID(int=0))))
    for column in ("workflow", "status", "progress", "started", "duration", "error"):
        table.add_column(column, overflow="fold")
    for r in page["items"]:
        duration = f"{r['duration_ms']:.0f} ms" if r["duration_ms"] is not None else ""
        table.add_row(
            r["run_id"],
            r["workflow_id"],
            status_markup(r["status"]),
            f"{r['progress']}%",
            (r["started_at"] or "")[:19].replace("T", " "),
            duration,
            (r["error"] or "")[:60],
        )
    console.print(table)
    if page["next_cursor"]:
        console.print(f"more: --cursor {page['next_cursor']}")


@runs.command("show")
@click.argument("run_id", type=RUN_ID)
@click.pass_context
def runs_show(ctx: click.Context, run_id: UUID) -> None:
    """A run's summary and a table of its nodes."""
    with api_client(ctx) as client:
        summary = call_api(client, "GET", f"/v1/runs/{run_id}")
        lineage = call_api(client, "GET", f"/v1/runs/{run_id}/lineage")
    console.print(
        f"run {summary['run_id']}  {summary['workflow_id']} {summary['workflow_version']}  "
        f"{status_markup(summary['status'])}  {summary['progress']}%"
    )
    if summary["duration_ms"] is not None:
        console.print(f"duration {summary['duration_ms']:.0f} ms, retries {summary['retries']}")
    if summary["error"]:
        console.print(f"[red]error[/red]: {summary['error']}")
    if summary["parent_run_id"]:
        console.print(f"forked from {summary['parent_run_id']}")
    table = Table()
    for column in ("node", "type", "status", "attempts", "duration", "items", "bytes", "error / reason"):
        table.add_column(column)
    for n in lineage["nodes"]:
        duration = f"{n['duration_ms']:.0f} ms" if n["duration_ms"] is not None else ""
        table.add_row(
            n["id"],
            n["type"],
            status_markup(n["status"]),
            str(n["attempts"]),
            duration,
            str(n["item_count"]),
            str(n["output_bytes"]),
            (n["error"] or n["skip_reason"] or "")[:60],
        )
    console.print(table)
