"""CLI for run history: the state at any event, the diff of two runs, republishing a run.

``show_state`` and ``diff`` talk to a running service over the HTTP API like
any other client; ``republish_run`` connects to Postgres and NATS directly
(it reads the log and publishes core NATS messages; the service need not run).
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import click
import httpx
from rich.markup import escape

from service.cli._common import RUN_ID, api_client, call_api, console, run_async, status_markup
from service.cli._output import Column, print_table
from service.config import Settings
from service.followers.republish import DEFAULT_REPLAY_PREFIX

_MAX_CELL = 60


def _short(value: Any, width: int = _MAX_CELL) -> str:
    """One line of at most ``width`` characters, escaped for rich markup (JSON has brackets)."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    return escape(text if len(text) <= width else text[: width - 1] + "…")


def _ms(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.1f} ms" if abs(value) < 10 else f"{value:.0f} ms"


# -- state at an event -----------------------------------------------------------------------------


def _saw(document: dict[str, Any] | None) -> str:
    """Which outputs a node's document holds: ``inputs`` plus the upstream node ids."""
    if document is None:
        return ""
    return ", ".join(["inputs", *document["nodes"]])


def show_state(
    client: httpx.Client, run_id: str, at_seq: int | None, *, as_json: bool = False
) -> dict[str, Any]:
    """Print the run's state right after event ``at_seq`` (None: latest) as a table; return it.

    The table lists every node; below it, the full document each ready or running
    node sees (its inputs: run inputs plus upstream outputs). ``as_json`` prints
    the state document as the API returns it instead.
    """
    params = {} if at_seq is None else {"at_seq": at_seq}
    view: dict[str, Any] = call_api(client, "GET", f"/v1/runs/{run_id}/state", params=params)
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return view
    console.print(f"run {view['run_id']}  {view['workflow_id']} {view['workflow_version']}")
    console.print(
        f"after event {view['at_seq']} of 0..{view['last_seq']}: [bold]{view['event_type']}[/bold] "
        f"at {view['recorded_at'][:23]}"
    )
    line = f"status {status_markup(view['status'])}"
    if view["cancel_requested"] and view["status"] != "cancelled":
        line += "  [yellow]cancel requested[/yellow]"
    if view["recoveries"]:
        line += f"  recovered {view['recoveries']}x"
    console.print(line)
    if view["error"]:
        console.print(f"[red]error[/red]: {escape(view['error'])}")
    rows = []
    for node_id, n in view["nodes"].items():
        error = n["error"]
        reason = f"{error['kind']}: {error['message']}" if error else (n["skip_reason"] or "")
        if n["marker"]:
            output = f"<{n['marker']['size_bytes']} bytes, sha256 {n['marker']['sha256'][:12]}>"
        else:
            output = _short(n["output"], 40) if n["status"] == "succeeded" else ""
        rows.append(
            [
                escape(node_id),
                escape(n["node_type"]),
                status_markup(n["status"]) + (" [cyan]▶ ready[/cyan]" if n["ready"] else ""),
                str(n["attempts"]),
                _ms(n["duration_ms"]) if n["status"] in ("succeeded", "failed") else "",
                _saw(n["inputs"]),
                output,
                _short(reason, 50),
            ]
        )
    print_table(rows, STATE_COLUMNS, markup=True)
    for node_id, n in view["nodes"].items():
        if n["inputs"] is not None and (n["ready"] or n["status"] == "running"):
            console.print(f"{node_id} sees: {_short(n['inputs'], 400)}")
    if view["ready"]:
        console.print(f"ready to run next: {', '.join(view['ready'])}")
    for skip in view["would_skip"]:
        console.print(f"would skip {skip['node_id']}: {escape(skip['reason'])}")
    if view["would_finish"]:
        console.print(f"would finish: {view['would_finish']}")
    return view


# -- diff ------------------------------------------------------------------------------------------


def _pair(a: Any, b: Any) -> str:
    a_text = "" if a is None else str(a)
    b_text = "" if b is None else str(b)
    return a_text if a_text == b_text else f"{a_text or '-'} → {b_text or '-'}"


def _duration_change(n: dict[str, Any]) -> str:
    if n["duration_change_ms"] is None:
        return _pair(_ms(n["duration_ms_a"]) or None, _ms(n["duration_ms_b"]) or None)
    text = _ms(n["duration_change_ms"])
    text = text if text.startswith("-") else "+" + text
    if n["duration_change_pct"] is not None:
        text += f" ({n['duration_change_pct']:+.0f}%)"
    return text


_MARKS = {"only_a": "-", "only_b": "+"}

_OUTPUT_STYLE = {
    "equal": "[green]equal[/green]",
    "changed": "[red]changed[/red]",
    "only_a": "[yellow]only a[/yellow]",
    "only_b": "[yellow]only b[/yellow]",
    "none": "[dim]none[/dim]",
}


def render_diff(body: dict[str, Any]) -> None:
    """Print a ``RunDiff`` (as the API returns it): a node table, then what differs in detail."""
    console.print(f"a: {body['run_a']}  {body['workflow_id_a']} {body['workflow_version_a']}")
    console.print(f"b: {body['run_b']}  {body['workflow_id_b']} {body['workflow_version_b']}")
    run_line = f"status {status_markup(body['status_a'])}"
    if body["status_b"] != body["status_a"]:
        run_line += f" → {status_markup(body['status_b'])}"
    if body["duration_change_ms"] is not None:
        run_line += f"  duration {_ms(body['duration_ms_a'])} → {_ms(body['duration_ms_b'])}"
        if body["duration_change_pct"] is not None:
            run_line += f" ({body['duration_change_pct']:+.0f}%)"
    console.print(run_line)
    if not body["inputs_equal"]:
        console.print("inputs differ:")
        for change in body["inputs_changes"]:
            console.print(f"  {_json_change(change)}")
    rows = []
    for n in body["nodes"]:
        mark = _MARKS[n["presence"]] if n["presence"] != "both" else ("=" if n["equal"] else "≠")
        status = _pair(n["status_a"], n["status_b"])
        branch = _pair(n["branch_a"], n["branch_b"]) if n["branch_a"] or n["branch_b"] else ""
        rows.append(
            [
                f"{mark} {escape(n['node_id'])}",
                status if n["status_a"] == n["status_b"] else f"[yellow]{status}[/yellow]",
                _pair(n["attempts_a"], n["attempts_b"]),
                _duration_change(n),
                _OUTPUT_STYLE[n["output"]],
                f"[red]{escape(branch)}[/red]" if n["branch_changed"] else escape(branch),
            ]
        )
    print_table(rows, DIFF_COLUMNS, markup=True)
    for n in body["nodes"]:
        node = f"[bold]{n['node_id']}[/bold]"
        for side in ("a", "b"):
            other = "b" if side == "a" else "a"
            for field, label in (("error", "error"), ("skip_reason", "skipped")):
                value = n[f"{field}_{side}"]
                if value is not None and value != n[f"{field}_{other}"]:
                    console.print(f"{node} {label} in {side}: {_short(value, 200)}")
        if n["json_changes"]:
            console.print(f"{node} output:")
            for change in n["json_changes"]:
                console.print(f"  {_json_change(change)}")
            if n["json_truncated"]:
                console.print("  … more paths differ")
        elif n["output"] == "changed":
            console.print(
                f"{node} output: sha256 {(n['output_sha256_a'] or '')[:12]} → "
                f"{(n['output_sha256_b'] or '')[:12]} (too large to diff path by path)"
            )
    summary = (
        f"{body['nodes_equal']} equal, {body['nodes_changed']} changed, "
        f"{body['nodes_only_a']} only in a, {body['nodes_only_b']} only in b"
    )
    console.print(("[green]runs are equal[/green]: " if body["equal"] else "runs differ: ") + summary)


def _json_change(change: dict[str, Any]) -> str:
    path = escape(change["path"])
    match change["op"]:
        case "added":
            return f"[green]+ {path}[/green] = {_short(change['b'])}"
        case "removed":
            return f"[red]- {path}[/red] = {_short(change['a'])}"
    return f"[yellow]~ {path}[/yellow]: {_short(change['a'])} → {_short(change['b'])}"


@click.command("diff")
@click.argument("run_a", type=RUN_ID)
@click.argument("run_b", type=RUN_ID)
@click.option("--json", "as_json", is_flag=True, help="Print the diff document as the API returns it.")
@click.pass_context
def diff(ctx: click.Context, run_a: UUID, run_b: UUID, as_json: bool) -> None:
    """Compare RUN_B against RUN_A node by node: status, attempts, duration, output and branch.

    Exits 0 whether or not the runs differ (1 only on an error such as an unknown run).
    """
    with api_client(ctx) as client:
        body = call_api(client, "GET", f"/v1/runs/{run_a}/diff/{run_b}")
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    render_diff(body)


# -- republish -------------------------------------------------------------------------------------


async def republish_run(settings: Settings, run_id: UUID, prefix: str = DEFAULT_REPLAY_PREFIX) -> int:
    """Re-send a run's stored events to ``<prefix>.<tenant>.<workflow>.<run>.<type>``; returns how many.

    Connects directly (Postgres and NATS from ``settings``); relay, worker and
    projections are not started, and the live stream gets nothing.
    """
    from service.followers.republish import republish
    from service.runtime import running

    async with running(settings, create=False) as runtime:
        assert runtime.store is not None and runtime.nats is not None
        return await republish(
            runtime.store, runtime.nats, run_id, prefix, live_prefix=settings.nats_subject_prefix
        )


def republish_command(settings: Settings, run_id: UUID | str, prefix: str = DEFAULT_REPLAY_PREFIX) -> None:
    """``flowledger replay RUN --republish``: republish and say where the events went."""
    from service.store.event_store import UnknownRun

    parsed = RUN_ID.convert(run_id, None, None)
    try:
        count = run_async(republish_run(settings, parsed, prefix))
    except (UnknownRun, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    console.print(f"republished {count} events of run {run_id} to {prefix}.*.*.{run_id}.<type>")


def _header(*names: str) -> tuple[Column, ...]:
    return tuple(Column(name, str, right=name in ("att", "duration")) for name in names)


STATE_COLUMNS = _header("node", "type", "status", "att", "duration", "saw", "output", "error / reason")
DIFF_COLUMNS = _header("node", "status", "att", "duration", "output", "branch")
