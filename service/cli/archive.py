"""``flowledger archive --before DATE -o DIR``: ended runs to a verified bundle, then the log's
partitions that hold nothing else are detached and dropped (``service.history.archive``).

Like the audit commands it needs PostgreSQL only. Progress goes to stderr; what was archived
and which partitions were detached (or why none could be) to stdout. Exit codes: 0 done
(also when there was nothing to archive), 1 refused (a run to archive fails the audit, or the
written bundle does not verify), 2 bad input or no usable database.
"""

from __future__ import annotations

import sys
import tempfile
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn

from service.cli._common import run_async, settings_of
from service.history.archive import ArchiveFailed, ArchiveResult, archive
from service.history.audit import plural
from service.history.bundle import ExportRefused
from service.runtime import log_database

progress_console = Console(stderr=True)


class CutoffType(click.ParamType):
    """``--before``: a date (midnight UTC at its start) or an ISO 8601 time (UTC when no offset)."""

    name = "date"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        try:
            if len(text) == 10:
                return datetime.combine(date.fromisoformat(text), time(), UTC)
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{value!r} is not a date (YYYY-MM-DD) or an ISO 8601 time", param, ctx)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def latest_cutoff(now: datetime) -> datetime:
    """The latest ``--before`` accepted: the start of tomorrow (UTC), i.e. every run ended so far."""
    return datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), time(), UTC)


def _check_directory(directory: Path) -> None:
    """Fail before anything is read when the bundle cannot be written into ``directory``."""
    if not directory.is_dir():
        raise click.ClickException(f"cannot write to {directory}: it is not an existing directory")
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise click.ClickException(f"cannot write to {directory}: {exc.strerror or exc}") from None


@click.command("archive")
@click.option(
    "--before",
    required=True,
    type=CutoffType(),
    help="Archive the runs that ended before this date (YYYY-MM-DD, UTC) or ISO 8601 time.",
)
@click.option(
    "--output",
    "-o",
    "directory",
    required=True,
    type=click.Path(path_type=Path),
    help="Existing directory the archive bundle is written to.",
)
@click.pass_context
def archive_command(ctx: click.Context, before: datetime, directory: Path) -> None:
    """Move runs that ended before DATE out of the log into a verified audit bundle.

    The runs whose terminal event was recorded before DATE, and that no earlier
    archive holds, are written to one bundle in DIR (the format of `export`),
    fsynced, read back and verified. Only then is the archive recorded
    (flowledger.archives: the runs' heads, the bundle's name and digest) and are
    the log's partitions that hold nothing but archived runs' events detached and
    dropped. A partition that holds any other event, or is still being appended
    to, stays; the command says which and why. `audit verify` checks archived runs
    against the recorded heads; `import BUNDLE` brings them back.

    DATE is at most tomorrow (UTC): everything that has ended so far.

    Database: --database-url (FLOWLEDGER_DATABASE_URL), else the embedded one under --home
    (FLOWLEDGER_HOME, default ./.flowledger). It never creates a log.
    """
    now = datetime.now(UTC)
    if before > latest_cutoff(now):
        raise click.BadParameter(
            f"{before:%Y-%m-%d %H:%M:%S}Z is in the future; the latest cutoff is "
            f"{latest_cutoff(now):%Y-%m-%d} (every run ended so far)",
            param_hint="'--before'",
        )
    _check_directory(directory)
    settings = settings_of(ctx)

    async def main() -> ArchiveResult:
        async with log_database(settings, create=False) as db:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=progress_console,
                transient=True,
            ) as progress:
                tasks: dict[str, TaskID] = {}

                def advance(what: str, done: int, total: int) -> None:
                    if what not in tasks:
                        tasks[what] = progress.add_task(what, total=total or None)
                    progress.update(tasks[what], completed=done, total=total or None)

                return await archive(
                    db.store, db.workflows, before=before, directory=directory, now=now, on_progress=advance
                )

    try:
        result = run_async(main())
    except ExportRefused as exc:
        for problem in exc.problems:
            click.echo(problem.describe())
        click.echo(
            f"refused: {plural(len(exc.problems), 'problem')} in the runs to archive; nothing archived"
        )
        sys.exit(1)
    except ArchiveFailed as exc:
        for problem in exc.problems:
            click.echo(problem.describe())
        click.echo(f"refused: {exc}")
        sys.exit(1)
    except OSError as exc:
        raise click.ClickException(f"cannot write to {directory}: {exc.strerror or exc}") from None
    _report(result, before)


def _report(result: ArchiveResult, before: datetime) -> None:
    cutoff = f"{before:%Y-%m-%d %H:%M:%S}Z"
    if result.archive_id is None:
        click.echo(f"nothing to archive: no run ended before {cutoff} that is not archived already")
    else:
        click.echo(
            f"archive {result.archive_id}: {plural(result.runs, 'run')} ({plural(result.events, 'event')}) "
            f"ended before {cutoff} written to {result.bundle}, verified; digest sha256:{result.digest}"
        )
    for partition in result.detached:
        click.echo(
            f"detached and dropped partition {partition.name} "
            f"(positions {max(partition.lower, 1):,} to {partition.upper - 1:,})"
        )
    for kept in result.kept:
        click.echo(f"kept partition {kept.name}: {kept.reason}")
    if result.detached:
        if result.bundle is not None:
            click.echo(f"keep {result.bundle} safe: it is now the only copy of the detached events")
        else:
            click.echo("keep the archive bundles safe: they are now the only copy of the detached events")
    elif result.kept:
        click.echo(
            "no partition could be detached: the archived runs stay readable in the log "
            "(a later `flowledger archive` detaches their partitions once nothing else is in them)"
        )
