"""``flowledger bench load``: the command line of the open-loop load generator."""

from __future__ import annotations

import sys

import click

from service.bench.load import LoadError, bench_load
from service.bench.load_model import P99_BOUND_MS, parse_rates
from service.bench.runs import Stalled
from service.cli._common import client_token, run_async, settings_of
from service.config import ENV_NATS_REPLICAS


def _rates(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        parse_rates(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("--rates: ")) from None
    return value


@click.command("load")
@click.option(
    "--rates",
    default="50,100,200,400,800",
    show_default=True,
    callback=_rates,
    help="Offered runs/s of each step, in order (comma-separated); the load stops at the first saturated step.",
)
@click.option(
    "--step-seconds",
    type=click.FloatRange(min=0.5),
    default=10.0,
    show_default=True,
    help="Length of each step.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Runs executing at once in the bench's own service (split among --processes).",
)
@click.option(
    "--processes",
    type=click.IntRange(0, 64),
    default=0,
    show_default=True,
    help="The bench's own service runs its workers in N processes; 0: in the bench's process.",
)
@click.option(
    "--url",
    default=None,
    help="Load a running service at this URL instead (runs started over HTTP; the key: --api-key, "
    "else --token / FLOWLEDGER_TOKEN / the admin token under the home).",
)
@click.option(
    "--replicas",
    envvar=ENV_NATS_REPLICAS,
    show_envvar=True,
    type=click.IntRange(1, 5),
    default=1,
    show_default=True,
    help="Replicas of the own service's scratch stream (more than 1 needs a NATS cluster).",
)
@click.option(
    "--api-key", default=None, help="API key (or JWT) for --url, with the runs:write and runs:read scopes."
)
@click.option(
    "--clients",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Concurrent HTTP connections starting runs (--url).",
)
@click.option(
    "--p99-bound-ms",
    type=click.FloatRange(min=1),
    default=P99_BOUND_MS,
    show_default=True,
    help="A step whose p99 run latency passes this is saturated (so is one below 90 % of the offered rate).",
)
@click.pass_context
def load(
    ctx: click.Context,
    /,
    rates: str,
    step_seconds: float,
    concurrency: int,
    processes: int,
    url: str | None,
    replicas: int,
    api_key: str | None,
    clients: int,
    p99_bound_ms: float,
) -> None:
    """Open-loop load: bench-shaped runs at stepped rates until the service saturates."""
    if url and not api_key:
        api_key = client_token(ctx)
    try:
        run_async(
            bench_load(
                settings_of(ctx),
                rates=rates,
                step_seconds=step_seconds,
                concurrency=concurrency,
                processes=processes,
                url=url,
                replicas=replicas,
                api_key=api_key,
                clients=clients,
                p99_bound_ms=p99_bound_ms,
            )
        )
    except (LoadError, Stalled) as exc:
        click.echo(f"flowledger: bench load: {exc}", err=True)
        sys.exit(2)
