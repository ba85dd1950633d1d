"""``flowledger replay``: time travel (--at-seq), fork and re-run (--fork ...), republish to NATS (--republish)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import click

from service.cli._common import RUN_ID, api_client, call_api, console, settings_of
from service.cli.client import follow_events, parse_input
from service.followers.republish import DEFAULT_REPLAY_PREFIX, InvalidPrefix, check_prefix


def _replay_prefix(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Checked before anything connects: NATS would reject or silently misroute a bad prefix."""
    try:
        return check_prefix(value)
    except InvalidPrefix as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@click.command("replay")
@click.argument("run_id", type=RUN_ID)
@click.option(
    "--at-seq", type=click.IntRange(0), default=None, help="Show the run's state right after event N."
)
@click.option(
    "--fork", "fork", is_flag=True, help="Start a new run linked to RUN that reuses its recorded results."
)
@click.option("--from-node", default=None, help="With --fork: execute this node and everything after it.")
@click.option("--from-failure", is_flag=True, help="With --fork: start from the first failed node.")
@click.option(
    "--override", "overrides", multiple=True, help="With --fork: NODE=@output.json uses that output for NODE."
)
@click.option(
    "--workflow-version", default=None, help="With --fork: run the fork under this workflow version."
)
@click.option("--follow", "-f", is_flag=True, help="With --fork: show the new run live (exit 0 on success).")
@click.option("--republish", is_flag=True, help="Re-send RUN's events to flowledger.replay.<...> on NATS.")
@click.option(
    "--prefix",
    default=DEFAULT_REPLAY_PREFIX,
    show_default=True,
    callback=_replay_prefix,
    help="Subject prefix for --republish: dot-separated tokens, no spaces or wildcards (* >).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="With --at-seq: print the state document as the API returns it."
)
@click.pass_context
def replay(
    ctx: click.Context,
    run_id: UUID,
    at_seq: int | None,
    fork: bool,
    from_node: str | None,
    from_failure: bool,
    overrides: tuple[str, ...],
    workflow_version: str | None,
    follow: bool,
    republish: bool,
    prefix: str,
    as_json: bool,
) -> None:
    """Look at RUN at any event, fork it, or republish its history."""
    forking = fork or bool(from_node or from_failure or overrides or workflow_version)
    chosen = [
        name
        for name, on in (("--at-seq", at_seq is not None), ("--fork", forking), ("--republish", republish))
        if on
    ]
    if len(chosen) > 1:
        raise click.UsageError(f"choose one of --at-seq, --fork, --republish (got {', '.join(chosen)})")
    if republish:
        from service.cli.history import republish_command

        republish_command(settings_of(ctx), run_id, prefix)
        return
    if forking:
        fork_run(
            ctx,
            run_id,
            from_node=from_node,
            from_failure=from_failure,
            overrides=overrides,
            workflow_version=workflow_version,
            follow=follow,
        )
        return
    from service.cli.history import show_state

    with api_client(ctx) as client:
        show_state(client, str(run_id), at_seq, as_json=as_json)


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
    with api_client(ctx) as client:
        fork = call_api(client, "POST", f"/v1/runs/{run_id}/replay", json=body)
        reused = ", ".join(fork["reused_nodes"]) or "nothing"
        console.print(
            f"run {fork['run_id']} forked from {run_id} ({fork['workflow_version']}); reusing {reused}"
        )
        if fork["overridden_nodes"]:
            console.print(f"overridden: {', '.join(fork['overridden_nodes'])}")
        if follow:
            sys.exit(follow_events(client, fork["run_id"], ndjson=False, follow=True))
