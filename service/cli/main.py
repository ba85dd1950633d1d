"""The ``flowledger`` command line. Every option has an environment variable of the same meaning."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from schemas.names import STREAM_NAME, SUBJECT_PREFIX
from service.cli._common import api_url, reader_may_leave, run_async, settings_of
from service.cli.access import keys, secrets
from service.cli.admin import projections
from service.cli.archive import archive_command
from service.cli.audit import audit, export_bundle, import_bundle_command, verify_bundle_command
from service.cli.client import cancel, events, history, lineage, metrics, run, runs, signal, workflows
from service.cli.history import diff
from service.cli.logs import logs
from service.cli.node_options import node_options, node_settings
from service.cli.processes import LISTEN_FD_OPTION, default_processes, supervise, watch_parent
from service.cli.replay import replay
from service.cli.schedules import schedules as schedules_group
from service.cli.serve_options import access_options, access_settings
from service.cli.vectors import vectors
from service.config import (
    DEFAULT_HOME,
    DEFAULT_MAX_JSON_DEPTH,
    ENV_CORS_ORIGINS,
    ENV_DATABASE_URL,
    ENV_HOME,
    ENV_HTTP_HOST,
    ENV_HTTP_PORT,
    ENV_LOG_FORMAT,
    ENV_LOG_LEVEL,
    ENV_MAX_JSON_DEPTH,
    ENV_NATS_REPLICAS,
    ENV_NATS_URL,
    Settings,
    WorkerSettings,
    parse_origins,
)
from service.logs import configure_logging

T = TypeVar("T")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--database-url",
    envvar=ENV_DATABASE_URL,
    show_envvar=True,
    default=None,
    help="PostgreSQL URL. Unset: start the embedded PostgreSQL under --home.",
)
@click.option(
    "--nats-url",
    envvar=ENV_NATS_URL,
    show_envvar=True,
    default=None,
    help="NATS URL (JetStream enabled), or a cluster's seed list: nats://h1:4222,nats://h2:4222,... "
    "Unset: start the embedded nats-server under --home.",
)
@click.option(
    "--nats-stream",
    envvar="FLOWLEDGER_NATS_STREAM",
    show_envvar=True,
    default=STREAM_NAME,
    help="JetStream stream of this log's events (each log needs its own stream and subject prefix).",
)
@click.option(
    "--nats-subject-prefix",
    envvar="FLOWLEDGER_NATS_SUBJECT_PREFIX",
    show_envvar=True,
    default=SUBJECT_PREFIX,
    help="Events are published on <prefix>.<tenant>.<workflow_id>.<run_id>.<type>.",
)
@click.option(
    "--api-url",
    envvar="FLOWLEDGER_API_URL",
    show_envvar=True,
    default=None,
    help="HTTP API used by the client commands (workflows, run, runs, events, cancel, signal, "
    "lineage, diff, replay, ...). "
    "Unset: http://FLOWLEDGER_HTTP_HOST:FLOWLEDGER_HTTP_PORT (127.0.0.1:8000), where serve listens.",
)
@click.option(
    "--token",
    envvar="FLOWLEDGER_TOKEN",
    show_envvar=True,
    default=None,
    help="Credential of the client commands (an API key or a JWT). Unset: <home>/admin.token, "
    "written by the first `serve`.",
)
@click.option(
    "--secret-key",
    envvar="FLOWLEDGER_SECRET_KEY",
    show_envvar=True,
    default=None,
    help="Key that encrypts stored secrets (serve and `secrets`). Unset: <home>/secret.key, created once.",
)
@click.option(
    "--home",
    envvar=ENV_HOME,
    show_envvar=True,
    default=DEFAULT_HOME,
    type=click.Path(file_okay=False, path_type=Path),
    help="Data directory of the embedded servers.",
)
@click.option(
    "--log-format",
    envvar=ENV_LOG_FORMAT,
    show_envvar=True,
    default="auto",
    type=click.Choice(["auto", "json", "console"]),
    help="auto: JSON when stderr is not a terminal.",
)
@click.option(
    "--log-level",
    envvar=ENV_LOG_LEVEL,
    show_envvar=True,
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.pass_context
def cli(
    ctx: click.Context,
    database_url: str | None,
    nats_url: str | None,
    nats_stream: str,
    nats_subject_prefix: str,
    api_url: str | None,
    token: str | None,
    secret_key: str | None,
    home: Path,
    log_format: str,
    log_level: str,
) -> None:
    """Flowledger: event-sourced workflow runs, recorded in PostgreSQL and fanned out on NATS."""
    configure_logging(log_format, log_level)
    ctx.obj = Settings(
        database_url=database_url or None,
        nats_url=nats_url or None,
        nats_stream=nats_stream,
        nats_subject_prefix=nats_subject_prefix,
        home=home,
        log_format=log_format,
        log_level=log_level,
        secret_key=secret_key or None,
    )


@cli.command()
@click.option(
    "--host", envvar=ENV_HTTP_HOST, show_envvar=True, default="127.0.0.1", help="HTTP bind address."
)
@click.option("--port", envvar=ENV_HTTP_PORT, show_envvar=True, default=8000, type=int, help="HTTP port.")
@click.option(
    "--max-runs",
    envvar="FLOWLEDGER_MAX_RUNS",
    show_envvar=True,
    default=200,
    type=click.IntRange(1),
    help="Runs this process executes at once (global run limit).",
)
@click.option(
    "--max-node-tasks",
    envvar="FLOWLEDGER_MAX_NODE_TASKS",
    show_envvar=True,
    default=512,
    type=click.IntRange(1),
    help="Node handlers running at once across all runs of this process.",
)
@click.option(
    "--max-parallel-nodes",
    envvar="FLOWLEDGER_MAX_PARALLEL_NODES",
    show_envvar=True,
    default=16,
    type=click.IntRange(1),
    help="Node handlers running at once within one run.",
)
@click.option(
    "--lease-seconds",
    envvar="FLOWLEDGER_LEASE_SECONDS",
    show_envvar=True,
    default=15.0,
    type=click.FloatRange(1.0),
    help="Run lease; a crashed worker's runs are recovered once it expires.",
)
@click.option(
    "--park-after",
    "park_after_s",
    envvar="FLOWLEDGER_PARK_AFTER_SECONDS",
    show_envvar=True,
    default=2.0,
    type=click.FloatRange(0.0),
    help="Seconds: a run whose every unfinished node waits longer gives its slot and lease back.",
)
@click.option(
    "--output-cap-bytes",
    envvar="FLOWLEDGER_OUTPUT_CAP_BYTES",
    show_envvar=True,
    default=1024 * 1024,
    type=click.IntRange(1024),
    help="The event payload cap: a node output whose JSON is larger is stored whole in the blob "
    "store and its event references it.",
)
@click.option(
    "--max-output-bytes",
    envvar="FLOWLEDGER_MAX_OUTPUT_BYTES",
    show_envvar=True,
    default=64 * 1024 * 1024,
    type=click.IntRange(1024),
    help="A node output whose JSON is larger fails the node with output_too_large.",
)
@click.option(
    "--worker/--no-worker",
    envvar="FLOWLEDGER_WORKER",
    show_envvar=True,
    default=True,
    help="Execute runs in this process (off: API and relay only).",
)
@click.option(
    "--max-json-depth",
    envvar=ENV_MAX_JSON_DEPTH,
    show_envvar=True,
    default=DEFAULT_MAX_JSON_DEPTH,
    type=click.IntRange(1, 500),
    help="Levels of arrays/objects a request body, workflow spec or push message may nest (deeper: 400).",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    envvar=ENV_CORS_ORIGINS,
    show_envvar=True,
    multiple=True,
    help="An origin (scheme://host[:port]) whose browser pages may call the API and follow its "
    "streams; repeat it, or list them in the variable, comma-separated; '*' for any. Default: none.",
)
@click.option(
    "--nats-replicas",
    envvar=ENV_NATS_REPLICAS,
    show_envvar=True,
    default=None,
    type=click.IntRange(1, 5),
    help="Replicas of the JetStream stream: created so, or an existing stream scaled to it. "
    "More than 1 needs a NATS cluster (3: survives the loss of one node). "
    "Unset: a new stream gets 1, an existing one keeps its count.",
)
@click.option(
    "--processes",
    envvar="FLOWLEDGER_PROCESSES",
    show_envvar=True,
    default=None,
    type=click.IntRange(1, 256),
    help="Service processes sharing the port, each with its own event loop, worker, relay and "
    "projection runners (one relay and one runner per projection are active across all). "
    "Default: one per core.",
)
@click.option(
    "--role",
    "roles",
    envvar="FLOWLEDGER_ROLE",
    show_envvar=True,
    multiple=True,
    type=click.Choice(["all", "api", "worker", "relay", "projections"]),
    help="What this instance runs beside the HTTP API (which every role serves): worker, relay, "
    "projections, or all (the default); repeat it, or list them in the variable, space-separated. "
    "'api' alone serves the API and push only.",
)
@click.option(LISTEN_FD_OPTION, "listen_fd", type=int, default=None, hidden=True)
@access_options
@node_options
@click.pass_context
def serve(
    ctx: click.Context,
    /,
    host: str,
    port: int,
    max_runs: int,
    max_node_tasks: int,
    max_parallel_nodes: int,
    lease_seconds: float,
    park_after_s: float,
    output_cap_bytes: int,
    max_output_bytes: int,
    worker: bool,
    max_json_depth: int,
    cors_origins: tuple[str, ...],
    nats_replicas: int | None,
    processes: int | None,
    roles: tuple[str, ...],
    listen_fd: int | None,
    **access: Any,
) -> None:
    """Serve the HTTP API, execute runs and relay events to NATS (Ctrl-C stops everything it started)."""
    import dataclasses

    import uvicorn

    from service.api.app import begin_shutdown, create_app
    from service.infra.nats import InvalidNatsUrl, parse_nats_servers

    worker_settings = WorkerSettings(
        max_runs=max_runs,
        max_node_tasks=max_node_tasks,
        max_parallel_nodes=max_parallel_nodes,
        lease_s=lease_seconds,
        park_after_s=park_after_s,
        output_cap_bytes=output_cap_bytes,
        max_output_bytes=max_output_bytes,
    )
    role = set(roles) or {"all"}

    def runs(part: str) -> bool:
        return "all" in role or part in role

    settings = dataclasses.replace(
        settings_of(ctx),
        http_host=host,
        http_port=port,
        worker=worker_settings,
        worker_enabled=worker and runs("worker"),
        relay_enabled=runs("relay"),
        projections_enabled=runs("projections"),
        max_json_depth=max_json_depth,
        cors_origins=parse_origins(" ".join(cors_origins)),
        nats_replicas=nats_replicas,
    )
    auth, limits = access_settings(host, access)
    settings = dataclasses.replace(settings, auth=auth, limits=limits, nodes=node_settings(access))
    if settings.nats_url:  # a typo in the seed list is reported before anything starts
        try:
            parse_nats_servers(settings.nats_url)
        except InvalidNatsUrl as exc:
            click.echo(f"flowledger: {exc}", err=True)
            sys.exit(2)
    count = processes if processes is not None else default_processes()
    if listen_fd is None and count > 1:
        from service.runtime import STARTUP_ERRORS

        try:
            sys.exit(
                supervise(
                    processes=count,
                    host=host,
                    port=port,
                    home=Path(settings.home),
                    database_url=settings.database_url,
                    nats_url=settings.nats_url,
                )
            )
        except STARTUP_ERRORS as exc:
            click.echo(f"flowledger: {exc}", err=True)
            sys.exit(2)
    fatal: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(message: str) -> None:
        fatal.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            begin_shutdown(app)

    # A request still open 10 s after Ctrl-C is cut off: the service stops in bounded time.
    if listen_fd is not None:  # a process of `serve --processes N`: the parent's socket
        watch_parent(os.getppid())
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        fd=listen_fd,
        log_config=None,
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    server = Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if fatal:
        click.echo(f"flowledger: {fatal[0]}", err=True)
        sys.exit(2)


_ASYNCAPI_FILE = Path(__file__).resolve().parents[2] / "schemas" / "asyncapi.json"


@cli.group()
def schemas() -> None:
    """The JSON Schema contract generated from the msgspec Structs."""


@schemas.command("export")
@click.option(
    "--out",
    default=str(Path(__file__).resolve().parents[2] / "schemas" / "json"),
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write the *.json files to.",
)
@click.option(
    "--asyncapi-out",
    default=str(_ASYNCAPI_FILE),
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the AsyncAPI document of the NATS channels.",
)
def schemas_export(out: Path, asyncapi_out: Path) -> None:
    """Write JSON Schema for every event type, the envelope and the workflow spec, and the AsyncAPI document."""
    from schemas.asyncapi import write_asyncapi
    from schemas.export import write_json_schemas

    written = write_json_schemas(out)
    click.echo(f"wrote {len(written)} schema files to {out}")
    state = "wrote" if write_asyncapi(asyncapi_out) else "unchanged:"
    click.echo(f"{state} AsyncAPI document {asyncapi_out}")


@schemas.command("asyncapi")
@click.option(
    "--out",
    default="-",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="File to write; `-` prints it.",
)
def schemas_asyncapi(out: Path) -> None:
    """The AsyncAPI 3.0 document of the NATS channels (flowledger.events.*), headers and payloads."""
    from schemas.asyncapi import render_asyncapi, write_asyncapi

    if str(out) == "-":
        click.echo(render_asyncapi().decode(), nl=False)
        return
    state = "wrote" if write_asyncapi(out) else "unchanged:"
    click.echo(f"{state} AsyncAPI document {out}")


@cli.command("tail")
@click.option("--workflow", "-w", default=None, help="Only this workflow id.")
@click.option("--run", "-r", "run_id", default=None, help="Only this run id (UUID).")
@click.option(
    "--type", "-t", "types", multiple=True, help="Only this event type (repeatable), e.g. run_finished."
)
@click.option("--tenant", default="default", help="Tenant whose events to show.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["line", "ndjson"]),
    default="line",
    help="line: one readable line per event; ndjson: each envelope exactly as published.",
)
@click.option(
    "--from-start", is_flag=True, help="Start at the oldest event the stream keeps, not at new ones."
)
@click.pass_context
def tail_command(
    ctx: click.Context,
    workflow: str | None,
    run_id: str | None,
    types: tuple[str, ...],
    tenant: str,
    fmt: str,
    from_start: bool,
) -> None:
    """Print run events live from NATS as they are published (Ctrl-C stops).

    Subscribes like any consumer would (an ephemeral ordered consumer on the
    --nats-stream stream; nothing durable is left behind). Options narrow the
    subject <prefix>.<tenant>.<workflow>.<run>.<type>; a left-out one matches all.

    NATS: --nats-url (FLOWLEDGER_NATS_URL), else the embedded nats-server under --home
    (FLOWLEDGER_HOME, default ./.flowledger), which must exist: tail never creates one.
    """
    from service.cli.tail import TailError, TailOptionError, run_tail, subject_filters

    settings = settings_of(ctx)
    prefix = settings.nats_subject_prefix
    try:  # validate before connecting: a typo is reported at once
        subject_filters(prefix, tenant=tenant, workflow=workflow, run=run_id, types=types)
    except TailOptionError as exc:
        raise click.BadParameter(str(exc), param_hint=exc.option) from None
    try:
        with reader_may_leave():
            run_async(
                run_tail(
                    settings,
                    tenant=tenant,
                    workflow=workflow,
                    run=run_id,
                    types=types,
                    fmt=fmt,
                    from_start=from_start,
                    stream=settings.nats_stream,
                    subject_prefix=prefix,
                    api_url=api_url(ctx),
                )
            )
    except TailError as exc:
        click.echo(f"flowledger: {exc}", err=True)
        sys.exit(2)


@cli.group()
def bench() -> None:
    """Benchmarks, each printed side by side with a baseline measured in the same run."""


def _bench_command(
    name: str, runner: Callable[..., Awaitable[Any]], help_text: str, **options: click.Option
) -> None:
    @click.pass_context
    def command(ctx: click.Context, /, **kwargs: Any) -> None:
        run_async(runner(settings_of(ctx), **kwargs))

    command.__doc__ = help_text
    cmd = click.command(name)(command)
    for option in options.values():
        cmd.params.append(option)
    bench.add_command(cmd)


def _register_benches() -> None:
    from service.bench.append import bench_append
    from service.bench.projections import bench_projections
    from service.bench.push import bench_push
    from service.bench.relay import bench_relay
    from service.bench.runs import bench_runs
    from service.cli.bench_load import load

    _bench_command(
        "append",
        bench_append,
        "Event store appends vs raw asyncpg: 100-event batches and single events from 64 tasks.",
        events=click.Option(["--events"], default=100_000, show_default=True, help="Events per measurement."),
        tasks=click.Option(
            ["--tasks"], default=64, show_default=True, help="Concurrent single-event writers."
        ),
    )
    _bench_command(
        "projections",
        bench_projections,
        "Projection rebuild rate vs raw asyncpg reads of the same log; GET /v1/runs/{id} vs GET /health.",
        events=click.Option(
            ["--events"], default=1_000_000, show_default=True, help="Events in the generated log."
        ),
        http=click.Option(
            ["--http/--no-http"],
            default=True,
            show_default=True,
            help="Also load GET /v1/runs/{id} (runs created in the flowledger schema) beside GET /health.",
        ),
        profile=click.Option(
            ["--profile"], is_flag=True, default=False, help="Profile both rebuilds (cProfile) afterwards."
        ),
        workers=click.Option(
            ["--workers"],
            type=click.IntRange(1, 64),
            default=None,
            help="Processes folding the log in each rebuild (default: half the cores, at most 4).",
        ),
    )
    _bench_command(
        "relay",
        bench_relay,
        "Relay throughput (Postgres log -> JetStream) vs raw pipelined nats-py publishing.",
        events=click.Option(["--events"], default=50_000, show_default=True, help="Events to relay."),
        replicas=click.Option(
            ["--replicas"],
            envvar=ENV_NATS_REPLICAS,
            show_envvar=True,
            type=click.IntRange(1, 5),
            default=1,
            show_default=True,
            help="Replicas of the scratch streams (more than 1 needs a NATS cluster).",
        ),
    )
    _bench_command(
        "runs",
        bench_runs,
        "Whole-path run throughput (enqueue, execute, relay) of a 5-node noop workflow vs DBOS.",
        runs=click.Option(["--runs"], default=2000, show_default=True, help="Runs per side."),
        concurrency=click.Option(
            ["--concurrency"], default=100, show_default=True, help="Runs executing at once, per side."
        ),
        node_type=click.Option(
            ["--node-type"],
            type=click.Choice(["noop", "python"]),
            default="noop",
            show_default=True,
            help="Our nodes: noop, or python (json:dumps in the isolated worker processes: the cost of isolation).",
        ),
        baseline=click.Option(
            ["--baseline/--no-baseline"],
            default=True,
            show_default=True,
            help="Also run the DBOS baseline (off: ours only, e.g. to profile it).",
        ),
        processes=click.Option(
            ["--processes"],
            default=0,
            show_default=True,
            type=click.IntRange(0, 64),
            help="Run our workers in N processes of their own, after a run with 1, and print the "
            "scaling; 0: the worker in the bench's own process.",
        ),
    )

    bench.add_command(load)

    _bench_command(
        "push",
        bench_push,
        "Live push (SSE) delivery latency at 1,000 clients, on one run and over many runs, vs raw NATS subscribers.",
        clients=click.Option(["--clients"], default=1000, show_default=True, help="Concurrent SSE clients."),
        runs=click.Option(
            ["--runs"],
            default=100,
            show_default=True,
            help="Runs the clients spread over in the second scenario.",
        ),
        nodes=click.Option(
            ["--nodes"], default=20, show_default=True, help="Delay nodes per run (3 events each)."
        ),
        delay_ms=click.Option(["--delay-ms"], default=100, show_default=True, help="Each delay node's wait."),
        baseline=click.Option(
            ["--baseline/--no-baseline"],
            default=True,
            show_default=True,
            help="Also measure the same fan-out with raw nats-py subscribers.",
        ),
    )


_register_benches()

cli.add_command(workflows)
cli.add_command(run)
cli.add_command(events)
cli.add_command(logs)
cli.add_command(cancel)
cli.add_command(signal)
cli.add_command(projections)
cli.add_command(runs)
cli.add_command(schedules_group)
cli.add_command(keys)
cli.add_command(secrets)
cli.add_command(vectors)
cli.add_command(lineage)
cli.add_command(metrics)
cli.add_command(history)
cli.add_command(replay)
cli.add_command(diff)
cli.add_command(audit)
cli.add_command(export_bundle)
cli.add_command(verify_bundle_command)
cli.add_command(import_bundle_command)
cli.add_command(archive_command)


def main() -> None:
    cli(prog_name="flowledger")


if __name__ == "__main__":
    main()
