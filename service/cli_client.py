"""CLI commands that talk to a running service over its HTTP API (like any other client)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

import click
import httpx
from click.core import ParameterSource
from rich.console import Console
from rich.table import Table

from service.config import Settings, default_api_url
from service.logs import quiet_http_client_logs

TERMINAL_TYPES = {"run_finished", "run_cancelled"}

console = Console(stderr=False, highlight=False)


class ApiError(click.ClickException):
    """A problem-details answer (or no answer), shown as one line."""


class RunIdType(click.ParamType):
    """A run id argument: any UUID spelling, converted to a ``UUID``; anything else is a usage error.

    Checked before the command connects anywhere, so a typo never reaches the API
    (where it would only be an unknown route).
    """

    name = "run id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> UUID:
        if isinstance(value, UUID):
            return value
        try:
            return UUID(str(value).strip())
        except ValueError:
            self.fail(f"{value!r} is not a valid run id (run ids are UUIDs)", param, ctx)


RUN_ID = RunIdType()


def api_url(ctx: click.Context) -> str:
    """The root ``--api-url``; left at its default, the address ``serve`` binds in this environment."""
    root = ctx.find_root()
    given: str | None = root.params.get("api_url")
    if given and root.get_parameter_source("api_url") is not ParameterSource.DEFAULT:
        return given
    return default_api_url(os.environ)


def _client(ctx: click.Context) -> httpx.Client:
    settings = ctx.find_object(Settings)
    quiet_http_client_logs(settings.log_level if settings is not None else "info")
    return httpx.Client(base_url=api_url(ctx).rstrip("/"), timeout=30)


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise ApiError(
            f"cannot reach the Flowledger API at {client.base_url} ({exc}); is `flowledger serve` running?"
        ) from exc
    if response.status_code >= 400:
        try:
            body = response.json()
            message = body.get("detail") or body.get("title") or response.text
        except ValueError:
            message = response.text
        raise ApiError(f"{response.status_code}: {message}")
    return response.json()


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
    with _client(ctx) as client:
        body = _call(client, "POST", "/v1/workflows", content=content, headers={"content-type": content_type})
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
    with _client(ctx) as client:
        body = _call(client, "GET", "/v1/workflows", params={"limit": 500})
    for item in body["items"]:
        console.print(f"{item['id']}\t{item['version']}\t{item['node_count']} nodes\t{item['name'] or ''}")


def _describe(event: dict[str, Any]) -> str | None:
    data = event["data"]
    kind = event["type"]
    node = data.get("node_id")
    match kind:
        case "run_started":
            return "[bold]run started[/bold]"
        case "run_recovered":
            return (
                f"[yellow]run recovered[/yellow] ({len(data.get('completed_nodes', []))} nodes already done)"
            )
        case "node_execute_before" if data.get("reused_from"):
            return None  # a fork's reused result: shown once, with its node_execute_after
        case "node_execute_before":
            return f"  ▶ {node} ({data['node_type']}) attempt {data['attempt']}"
        case "node_execute_after" if reuse := data.get("reused_from"):
            if reuse.get("overridden"):
                return f"  [cyan]↺ {node}[/cyan] output overridden (--override)"
            return f"  [cyan]↺ {node}[/cyan] reused from run {reuse['run_id']} seq {reuse['seq']}"
        case "node_execute_after":
            ms = f"{data['duration_ms']:.0f} ms"
            if data["status"] == "succeeded":
                return f"  [green]✓ {node}[/green] {ms}, {data['item_count']} item(s)"
            error = data.get("error") or {}
            return f"  [red]✗ {node}[/red] {ms}: {error.get('kind')}: {error.get('message')}"
        case "node_retry_scheduled":
            return f"  ↻ {node} retry attempt {data['next_attempt']} in {data['delay_ms']} ms"
        case "node_skipped":
            return f"  [dim]⤼ {node} skipped: {data['reason']}[/dim]"
        case "run_cancel_requested":
            return f"[yellow]cancel requested[/yellow]: {data.get('reason', '')}"
        case "run_cancelled":
            return f"[yellow]run cancelled[/yellow]: {data.get('reason', '')}"
        case "run_finished":
            colour = "green" if data["status"] == "succeeded" else "red"
            suffix = f": {data['error']}" if data.get("error") else ""
            return f"[{colour}]run {data['status']}[/{colour}] in {data['duration_ms']:.0f} ms{suffix}"
    return None


def follow_events(
    client: httpx.Client, run_id: str, *, ndjson: bool, follow: bool, poll_s: float = 0.2
) -> int:
    """Print a run's events (and, with ``follow``, new ones until it ends). Returns the exit code."""
    after = -1
    while True:
        page = _call(client, "GET", f"/v1/runs/{run_id}/events", params={"after_seq": after, "limit": 1000})
        for event in page["items"]:
            after = event["seq"]
            if ndjson:
                sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
            elif (line := _describe(event)) is not None:
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
    with _client(ctx) as client:
        accepted = _call(client, "POST", f"/v1/workflows/{workflow_id}/runs", json=body)
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
    with _client(ctx) as client:
        code = follow_events(client, str(run_id), ndjson=fmt == "ndjson", follow=follow)
    if follow:
        sys.exit(code)


@click.command("cancel")
@click.argument("run_id", type=RUN_ID)
@click.option("--reason", default="", help="Recorded in the run's cancel events.")
@click.pass_context
def cancel(ctx: click.Context, run_id: UUID, reason: str) -> None:
    """Request cancellation of a run (fails when it has already ended)."""
    with _client(ctx) as client:
        _call(client, "POST", f"/v1/runs/{run_id}/cancel", json={"reason": reason})
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
    with _client(ctx) as client:
        page = _call(client, "GET", "/v1/runs", params=params)
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
            _status(r["status"]),
            f"{r['progress']}%",
            (r["started_at"] or "")[:19].replace("T", " "),
            duration,
            (r["error"] or "")[:60],
        )
    console.print(table)
    if page["next_cursor"]:
        console.print(f"more: --cursor {page['next_cursor']}")


def _status(status: str) -> str:
    colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan"}.get(status)
    return f"[{colour}]{status}[/{colour}]" if colour else status


@runs.command("show")
@click.argument("run_id", type=RUN_ID)
@click.pass_context
def runs_show(ctx: click.Context, run_id: UUID) -> None:
    """A run's summary and a table of its nodes."""
    with _client(ctx) as client:
        summary = _call(client, "GET", f"/v1/runs/{run_id}")
        lineage = _call(client, "GET", f"/v1/runs/{run_id}/lineage")
    console.print(
        f"run {summary['run_id']}  {summary['workflow_id']} {summary['workflow_version']}  "
        f"{_status(summary['status'])}  {summary['progress']}%"
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
            _status(n["status"]),
            str(n["attempts"]),
            duration,
            str(n["item_count"]),
            str(n["output_bytes"]),
            (n["error"] or n["skip_reason"] or "")[:60],
        )
    console.print(table)


def parse_override(pair: str) -> tuple[str, Any]:
    """``NODE=@file.json`` (the file's JSON) or ``NODE=<json or text>``."""
    node, sep, value = pair.partition("=")
    if not sep or not node:
        raise click.BadParameter(f"{pair!r} is not NODE=@output.json", param_hint="--override")
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            return node, json.loads(path.read_text())
        except FileNotFoundError:
            raise click.BadParameter(f"{path} does not exist", param_hint="--override") from None
        except ValueError as exc:
            raise click.BadParameter(f"{path} is not JSON: {exc}", param_hint="--override") from None
    return parse_input(pair)


def fork_run(
    ctx: click.Context,
    run_id: UUID,
    *,
    from_node: str | None,
    from_failure: bool,
    overrides: tuple[str, ...],
    workflow_version: str | None,
    follow: bool,
) -> None:
    """Start a fork of RUN over the API and (optionally) follow it."""
    body: dict[str, Any] = {
        "from_failure": from_failure,
        "overrides": dict(parse_override(o) for o in overrides),
    }
    if from_node:
        body["from_node"] = from_node
    if workflow_version:
        body["workflow_version"] = workflow_version
    with _client(ctx) as client:
        fork = _call(client, "POST", f"/v1/runs/{run_id}/replay", json=body)
        reused = ", ".join(fork["reused_nodes"]) or "nothing"
        console.print(
            f"run {fork['run_id']} forked from {run_id} ({fork['workflow_version']}); reusing {reused}"
        )
        if fork["overridden_nodes"]:
            console.print(f"overridden: {', '.join(fork['overridden_nodes'])}")
        if follow:
            sys.exit(follow_events(client, fork["run_id"], ndjson=False, follow=True))
