"""CLI commands that work on the database directly (operators' tools): projections."""

from __future__ import annotations

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from projections.runner import PROJECTIONS
from service.cli._common import run_async, settings_of
from service.followers.parallel_rebuild import PARALLEL_FROM_EVENTS, RebuildWorkerFailed
from service.followers.projection_service import rebuild_projections
from service.runtime import log_database
from service.store.projection_log import projection_status

console = Console()


@click.group("projections")
def projections() -> None:
    """Read models built from the event log: their positions, lag and rebuilds.

    Database: --database-url (FLOWLEDGER_DATABASE_URL), else the embedded one under --home
    (FLOWLEDGER_HOME, default ./.flowledger). It reads an existing log and never creates
    one: with no database there it says so and exits 2.
    """


@projections.command("status")
@click.pass_context
def projections_status(ctx: click.Context) -> None:
    """Position, lag (events and seconds) and last error of every projection."""
    settings = settings_of(ctx)

    async def main() -> None:
        async with log_database(settings, create=False) as db, db.pool.acquire() as conn:
            rows = await projection_status(conn, db.store)
        table = Table(title="projections")
        for column in ("projection", "position", "log head", "lag (events)", "lag (s)", "last error"):
            table.add_column(column, justify="left" if column in ("projection", "last error") else "right")
        for s in rows:
            table.add_row(
                s.name,
                f"{s.position:,}",
                f"{s.head:,}",
                f"{s.lag_events:,}",
                f"{s.lag_seconds:.1f}",
                s.last_error or "",
            )
        console.print(table)

    run_async(main())


@projections.command("rebuild")
@click.argument("name", required=False, type=click.Choice(sorted(PROJECTIONS)))
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Processes folding the log, each a share of the runs (default: half the cores, at most 4; "
    f"1, or a log under {PARALLEL_FROM_EVENTS:,} events: this process alone).",
)
@click.pass_context
def projections_rebuild(ctx: click.Context, name: str | None, workers: int | None) -> None:
    """Rebuild NAME (default: all) from position 0 into a shadow table, then swap it in.

    The service keeps serving the old view until the swap.
    """
    settings = settings_of(ctx)
    names = [name] if name else sorted(PROJECTIONS)

    async def main() -> None:
        async with log_database(settings, create=False) as db:
            head = await db.store.head_position()
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            ) as progress:
                task = progress.add_task(f"rebuilding {', '.join(names)}", total=head)
                try:
                    position = await rebuild_projections(
                        db.pool,
                        db.store,
                        names,
                        on_progress=lambda k: progress.advance(task, k),
                        database_url=db.database_url,
                        workers=workers,
                    )
                except RebuildWorkerFailed as exc:
                    raise click.ClickException(f"{exc}; the live views are unchanged") from exc
                progress.update(task, completed=position, total=max(head, position))
        console.print(f"rebuilt {', '.join(names)}")

    run_async(main())
