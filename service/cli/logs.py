"""``flowledger logs RUN``: a run's node log lines, from ``GET /v1/runs/{id}/logs``."""

from __future__ import annotations

import json
import sys
import time
from typing import Any
from uuid import UUID

import click
import httpx

from schemas.events import LOG_LEVELS
from service.cli._common import RUN_ID, api_client, call_api
from service.cli._output import format_option


def log_line_text(line: dict[str, Any]) -> str:
    """``HH:MM:SS.mmm node LEVEL message k=v ...`` (UTC), on one line."""
    clock = line["at"][11:23]
    fields = " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in line["fields"].items())
    message = line["message"].replace("\r", "\\r").replace("\n", "\n    ")  # a traceback stays readable
    text = f"{clock} {line['node_id']} {line['level'].upper():<7} {message}"
    return f"{text} {fields}" if fields else text


def read_logs(
    client: httpx.Client,
    run_id: str,
    *,
    node: str | None,
    level: str | None,
    follow: bool,
    emit: Any,
    poll_s: float = 0.3,
) -> dict[str, int]:
    """Pass every line to ``emit`` (and, with ``follow``, new ones until the run ends); returns
    the per-node drop counts."""
    params: dict[str, Any] = {"after_seq": -1}
    if node:
        params["node_id"] = node
    if level:
        params["level"] = level
    dropped: dict[str, int] = {}
    while True:
        page = call_api(client, "GET", f"/v1/runs/{run_id}/logs", params=params)
        for line in page["lines"]:
            emit(line)
        for node_id, count in page["dropped"].items():
            dropped[node_id] = max(dropped.get(node_id, 0), count)
        params["after_seq"] = page["last_seq"]
        if page["more"]:
            continue
        if not follow or page["ended"]:
            return dropped
        time.sleep(poll_s)


@click.command("logs")
@click.argument("run_id", type=RUN_ID)
@click.option("--node", "-n", "node", default=None, help="Only this node's lines.")
@click.option(
    "--level",
    "-l",
    type=click.Choice(LOG_LEVELS),
    default=None,
    help="Only lines at this level or above (debug < info < warning < error).",
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the run ends.")
@format_option()
@click.pass_context
def logs(
    ctx: click.Context, run_id: UUID, node: str | None, level: str | None, follow: bool, fmt: str
) -> None:
    """Print what a run's nodes logged (ctx.log, and print/logging of python nodes), in order.

    Each line: time (UTC), node, level, message, fields. A node attempt keeps at most 1,000
    lines and 64 KiB; its last line then says how many were dropped."""
    collected: list[dict[str, Any]] = []

    def emit(line: dict[str, Any]) -> None:
        if fmt == "json":
            collected.append(line)
        elif fmt == "ndjson":
            sys.stdout.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n")
            sys.stdout.flush()
        else:
            click.echo(log_line_text(line))

    with api_client(ctx) as client:
        dropped = read_logs(client, str(run_id), node=node, level=level, follow=follow, emit=emit)
    if fmt == "json":
        document = {"run_id": str(run_id), "lines": collected, "dropped": dropped}
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
