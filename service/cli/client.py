"""CLI commands that talk to a running service over its HTTP API (like any other client)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

import click
import httpx
from rich.markup import escape

from service.cli._common import (
    RUN_ID,
    TERMINAL_TYPES,
    api_client,
    call_api,
    console,
    describe_event,
    status_markup,
)
from service.cli._output import Column, format_option, ms, one_line, print_items, print_table


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
    for warning in body.get("warnings", []):
        console.print(f"[yellow]warning[/yellow]: {escape(warning)}")


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
@format_option()
@click.pass_context
def workflows_list(ctx: click.Context, fmt: str) -> None:
    """Registered workflows with their current version."""
    with api_client(ctx) as client:
        items = list(_pages(client, "/v1/workflows", {"limit": 500}))
    print_items(fmt, items, WORKFLOW_COLUMNS)


WORKFLOW_COLUMNS = (
    Column("workflow", lambda w: w["id"]),
    Column("version", lambda w: w["version"]),
    Column("nodes", lambda w: str(w["node_count"]), right=True),
    Column("name", lambda w: w["name"] or ""),
    Column("registered", lambda w: _when(w["created_at"])),
)


def _pages(client: httpx.Client, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every item of a cursor-paged listing."""
    while True:
        page = call_api(client, "GET", path, params=params)
        yield from page["items"]
        if not page["next_cursor"]:
            return
        params = {**params, "cursor": page["next_cursor"]}


def _when(timestamp: str | None) -> str:
    """``2026-12-04 05:12:03.123`` (UTC) from an RFC 3339 timestamp; empty for none."""
    return "" if not timestamp else timestamp.replace("T", " ").rstrip("Z")[:23]


_NODE_MARKS = {"node_execute_before": "▶", "node_retry_scheduled": "↻", "node_log": "✎"}


def follow_line(event: dict[str, Any]) -> str | None:
    """How ``run --follow`` shows one event (rich markup), or None for events it leaves out."""
    kind, data = event["type"], event["data"]
    if kind == "node_execute_after_data" or (kind == "node_execute_before" and data.get("reused_from")):
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
    client: httpx.Client,
    run_id: str,
    *,
    ndjson: bool,
    follow: bool,
    timestamps: bool = False,
    poll_s: float = 0.2,
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
                console.print(f"[dim]{_when(event['recorded_at'])[11:]}[/dim] {line}" if timestamps else line)
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
            code = follow_events(client, run_id, ndjson=False, follow=True)
            print_run_result(client, run_id)
            sys.exit(code)


def run_outputs(state: dict[str, Any], edges: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's outputs: the output of each succeeded node that no edge leaves (its end nodes)."""
    sources = {e["from"] for e in edges}
    return {
        node_id: node["output"]
        for node_id, node in state["nodes"].items()
        if node_id not in sources and node["status"] == "succeeded"
    }


def print_run_result(client: httpx.Client, run_id: str) -> None:
    """After following a run: its outputs when it succeeded, else its error."""
    state = call_api(client, "GET", f"/v1/runs/{run_id}/state")
    if state["status"] == "succeeded":
        lineage = call_api(client, "GET", f"/v1/runs/{run_id}/lineage")
        outputs = run_outputs(state, lineage["edges"])
        console.print("outputs:", markup=False)
        console.print(json.dumps(outputs, indent=2, ensure_ascii=False, default=str), markup=False)
    else:
        console.print(f"[red]{state['status']}[/red]: {escape(state['error'] or 'no error recorded')}")


@click.command("events")
@click.argument("run_id", type=RUN_ID)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until the run ends.")
@click.option("--format", "fmt", type=click.Choice(["table", "ndjson"]), default="table")
@click.pass_context
def events(ctx: click.Context, run_id: UUID, follow: bool, fmt: str) -> None:
    """Print a run's events in order, each with the time it was recorded (UTC)."""
    with api_client(ctx) as client:
        code = follow_events(client, str(run_id), ndjson=fmt == "ndjson", follow=follow, timestamps=True)
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


@click.command("signal")
@click.argument("run_id", type=RUN_ID)
@click.argument("name")
@click.option("--payload", default=None, help="JSON value: the output of the wait nodes it resumes.")
@click.option(
    "--payload-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Read the JSON payload from a file ('-' is not accepted; use --payload).",
)
@click.pass_context
def signal(
    ctx: click.Context, run_id: UUID, name: str, payload: str | None, payload_file: Path | None
) -> None:
    """Send signal NAME to a run waiting for it (its wait nodes resume with the payload)."""
    if payload is not None and payload_file is not None:
        raise click.UsageError("give --payload or --payload-file, not both")
    body: dict[str, Any] = {}
    text, hint = (
        (payload, "--payload") if payload_file is None else (payload_file.read_text(), "--payload-file")
    )
    if text is not None:
        try:
            body["payload"] = json.loads(text)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint=hint) from exc
    with api_client(ctx) as client:
        answer = call_api(client, "POST", f"/v1/runs/{run_id}/signals/{name}", json=body)
    nodes = ", ".join(answer["resumed_nodes"])
    console.print(f"signal {name} sent to run {run_id}: resumed {nodes}")


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
@format_option()
@click.pass_context
def runs_list(
    ctx: click.Context, workflow_id: str | None, status: str | None, limit: int, cursor: str | None, fmt: str
) -> None:
    """Runs, newest first (one page; the next page's --cursor is printed below a table)."""
    params: dict[str, Any] = {"limit": limit}
    for name, value in (("workflow_id", workflow_id), ("status", status), ("cursor", cursor)):
        if value:
            params[name] = value
    with api_client(ctx) as client:
        page = call_api(client, "GET", "/v1/runs", params=params)
    print_items(fmt, page["items"], RUN_COLUMNS)
    if page["next_cursor"] and fmt == "table":
        click.echo(f"more: --cursor {page['next_cursor']}", err=True)


RUN_COLUMNS = (
    Column("run", lambda r: r["run_id"]),
    Column("workflow", lambda r: r["workflow_id"]),
    Column("status", lambda r: r["status"], status=True),
    Column("progress", lambda r: f"{r['progress']}%", right=True),
    Column("current", lambda r: ",".join(r["current_nodes"])),
    Column("started", lambda r: _when(r["started_at"])),
    Column("duration", lambda r: ms(r["duration_ms"]), right=True),
    Column("error", lambda r: one_line(r["error"], 60)),
)

NODE_COLUMNS = (
    Column("node", lambda n: n["id"]),
    Column("type", lambda n: n["type"]),
    Column("status", lambda n: n["status"], status=True),
    Column("attempts", lambda n: str(n["attempts"]), right=True),
    Column("duration", lambda n: ms(n["duration_ms"]), right=True),
    Column("items", lambda n: str(n["item_count"]), right=True),
    Column("bytes", lambda n: str(n["output_bytes"]), right=True),
    Column("error / reason", lambda n: one_line(_node_note(n), 60)),
)


def _node_note(node: dict[str, Any]) -> str | None:
    """What the lineage says of a node beside its figures: its error or skip reason, else what
    it waits for, or the child run it started."""
    if node["error"] or node["skip_reason"]:
        return str(node["error"] or node["skip_reason"])
    if node.get("status") == "waiting" and node.get("signal"):
        return f"waits for signal {node['signal']}"
    if node.get("child_run_id"):
        return f"child run {node['child_run_id']}"
    return None


@runs.command("show")
@click.argument("run_id", type=RUN_ID)
@format_option()
@click.pass_context
def runs_show(ctx: click.Context, run_id: UUID, fmt: str) -> None:
    """A run's summary and a table of its nodes (json/ndjson: the summary with its lineage)."""
    with api_client(ctx) as client:
        summary = call_api(client, "GET", f"/v1/runs/{run_id}")
        lineage = call_api(client, "GET", f"/v1/runs/{run_id}/lineage")
    if fmt != "table":
        print_items(fmt, [{**summary, "lineage": lineage}], ())
        return
    console.print(
        f"run {summary['run_id']}  {summary['workflow_id']} {summary['workflow_version']}  "
        f"{status_markup(summary['status'])}  {summary['progress']}%"
    )
    if summary["duration_ms"] is not None:
        console.print(f"duration {summary['duration_ms']:.0f} ms, retries {summary['retries']}")
    if summary["error"]:
        console.print(f"[red]error[/red]: {escape(summary['error'])}")
    if summary.get("parent_node_id"):
        console.print(f"child of run {summary['parent_run_id']} (its node {summary['parent_node_id']})")
    elif summary["parent_run_id"]:
        console.print(f"forked from {summary['parent_run_id']}")
    if summary.get("waiting_nodes"):
        console.print(f"waiting: {', '.join(summary['waiting_nodes'])}")
    print_table([[c.text(n) for c in NODE_COLUMNS] for n in lineage["nodes"]], NODE_COLUMNS)


@click.command("lineage")
@click.argument("run_id", type=RUN_ID)
@format_option()
@click.pass_context
def lineage(ctx: click.Context, run_id: UUID, fmt: str) -> None:
    """A run's DAG: each node with its figures, then each edge, whether it was taken and its items."""
    with api_client(ctx) as client:
        body = call_api(client, "GET", f"/v1/runs/{run_id}/lineage")
    if fmt != "table":
        print_items(fmt, [body], ())
        return
    print_table([[c.text(n) for c in NODE_COLUMNS] for n in body["nodes"]], NODE_COLUMNS, title="nodes")
    print_table([[c.text(e) for c in EDGE_COLUMNS] for e in body["edges"]], EDGE_COLUMNS, title="edges")
    for key in ("parent_run_id", "fork"):
        if body.get(key):
            console.print(f"{key}: {body[key]}", markup=False)


EDGE_COLUMNS = (
    Column("from", lambda e: e["from"]),
    Column("to", lambda e: e["to"]),
    Column("when", lambda e: e["when"] or ""),
    Column("taken", lambda e: {True: "taken", False: "not taken", None: "pending"}[e["taken"]]),
    Column("items", lambda e: "" if e["items"] is None else str(e["items"]), right=True),
)


@click.command("metrics")
@click.option("--workflow", "-w", "workflow_id", default=None, help="Only this workflow.")
@format_option()
@click.pass_context
def metrics(ctx: click.Context, workflow_id: str | None, fmt: str) -> None:
    """Per workflow and node type: run counts by status, success rate, duration p50/p95/p99."""
    params = {"workflow_id": workflow_id} if workflow_id else {}
    with api_client(ctx) as client:
        body = call_api(client, "GET", "/v1/metrics/summary", params=params)
    if fmt != "table":
        print_items(fmt, body["workflows"], ())
        return
    rows = [[c.text(w) for c in WORKFLOW_METRIC_COLUMNS] for w in body["workflows"]]
    print_table(rows, WORKFLOW_METRIC_COLUMNS, title="workflows")
    node_rows = [
        [w["workflow_id"], *(c.text(n) for c in NODE_METRIC_COLUMNS[1:])]
        for w in body["workflows"]
        for n in w["node_types"]
    ]
    print_table(node_rows, NODE_METRIC_COLUMNS, title="node types")
    lag = max((p["lag_events"] for p in body["projections"]), default=0)
    if lag:
        console.print(f"[yellow]the read models are {lag} event(s) behind the log[/yellow]")


def _count_column(status: str) -> Column:
    return Column(status, lambda w: str(w[status]), right=True)


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.1f}%"


def _quantiles(item: dict[str, Any]) -> str:
    values = [item[f"duration_{q}_ms"] for q in ("p50", "p95", "p99")]
    return "" if values[0] is None else " / ".join(f"{v:.0f}" for v in values) + " ms"


WORKFLOW_METRIC_COLUMNS = (
    Column("workflow", lambda w: w["workflow_id"]),
    Column("runs", lambda w: str(w["runs"]), right=True),
    *(_count_column(s) for s in ("running", "waiting", "succeeded", "failed", "cancelled")),
    Column("success", lambda w: _rate(w["success_rate"]), right=True),
    Column("p50 / p95 / p99", _quantiles, right=True),
)

NODE_METRIC_COLUMNS = (
    Column("workflow", lambda n: ""),
    Column("node type", lambda n: n["node_type"]),
    Column("executions", lambda n: str(n["executions"]), right=True),
    Column("failed", lambda n: str(n["failed"]), right=True),
    Column("skipped", lambda n: str(n["skipped"]), right=True),
    Column("retries", lambda n: str(n["retries"]), right=True),
    Column("success", lambda n: _rate(n["success_rate"]), right=True),
    Column("p50 / p95 / p99", _quantiles, right=True),
)


@click.command("history")
@click.argument("workflow_id")
@click.argument("node_id")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@click.option("--cursor", default=None, help="next_cursor of a previous page.")
@format_option()
@click.pass_context
def history(
    ctx: click.Context, workflow_id: str, node_id: str, limit: int, cursor: str | None, fmt: str
) -> None:
    """NODE_ID of WORKFLOW_ID across runs, newest first: status, attempts, duration, error."""
    params: dict[str, Any] = {"limit": limit}
    if cursor:
        params["cursor"] = cursor
    with api_client(ctx) as client:
        page = call_api(client, "GET", f"/v1/workflows/{workflow_id}/nodes/{node_id}/history", params=params)
    print_items(fmt, page["items"], NODE_HISTORY_COLUMNS)
    if page["next_cursor"] and fmt == "table":
        click.echo(f"more: --cursor {page['next_cursor']}", err=True)


NODE_HISTORY_COLUMNS = (
    Column("run", lambda n: n["run_id"]),
    Column("status", lambda n: n["status"], status=True),
    Column("attempts", lambda n: str(n["attempts"]), right=True),
    Column("started", lambda n: _when(n["started_at"])),
    Column("duration", lambda n: ms(n["duration_ms"]), right=True),
    Column("items", lambda n: str(n["item_count"]), right=True),
    Column("error / reason", lambda n: one_line(n["error_message"] or n["skip_reason"], 60)),
)
