"""CLI commands for auditors: ``audit verify``, ``export``, ``verify-bundle``, ``import``.

Problems go to stdout, one line each (``run <id> seq <n>: <kind>: <what>``), then
a summary line; progress bars go to stderr. Exit codes: 0 clean, 1 problems
found (or an export/import refused, or nothing to verify), 2 the database
could not be used or the command line is wrong.

These commands need PostgreSQL only (``verify-bundle`` not even that): an audit
must work while NATS is down, so they start the pool, migrations and event store
without the rest of the runtime.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar
from uuid import UUID

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from service.cli._common import RUN_ID, reader_may_leave, run_async, settings_of
from service.history.archive import verify_archives
from service.history.audit import AuditProblem, AuditReport, audit_log, audit_runs, plural, sort_key
from service.history.bundle import (
    ExportRefused,
    ImportRefused,
    ImportResult,
    RunExport,
    bundle_digest,
    bundle_lines,
    collect_runs,
    import_bundle,
    verify_bundle_file,
    write_bundle,
)
from service.infra.db import Conn
from service.runtime import log_database
from service.store.event_store import EventStore

T = TypeVar("T")

progress_console = Console(stderr=True)


def _print_problems(problems: list[AuditProblem]) -> None:
    with reader_may_leave():  # `audit verify --all | head`: the exit code still tells
        for problem in problems:
            click.echo(problem.describe())


@contextlib.contextmanager
def _progress() -> Iterator[Progress]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[events]:>12,} events"),
        TimeElapsedColumn(),
        console=progress_console,
        transient=True,
    ) as progress:
        yield progress


# -- audit verify ----------------------------------------------------------------------------------


@click.group("audit")
def audit() -> None:
    """Check stored run histories: hash chains, seq, schemas and legality.

    Database: --database-url (FLOWLEDGER_DATABASE_URL), else the embedded one under --home
    (FLOWLEDGER_HOME, default ./.flowledger). It reads an existing log and never creates
    one: with no database there it says so and exits 2.
    """


@audit.command("verify")
@click.argument("run_ids", metavar="[RUN]...", nargs=-1, type=RUN_ID)
@click.option("--all", "all_runs", is_flag=True, help="Every run of the log, in one pass.")
@click.option("--workflow", "-w", default=None, help="Every run of this workflow id.")
@click.option(
    "--archive-dir",
    default=None,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Also verify the archive bundles in this directory (`flowledger archive -o DIR`).",
)
@click.option(
    "--page-size",
    default=10_000,
    type=click.IntRange(100),
    help="Events per read when scanning the log (--all, --workflow).",
)
@click.pass_context
def audit_verify(
    ctx: click.Context,
    run_ids: tuple[UUID, ...],
    all_runs: bool,
    workflow: str | None,
    archive_dir: Path | None,
    page_size: int,
) -> None:
    """Verify RUN(s), --all runs or those of --workflow W.

    Each event is checked: seq contiguous from 0, hash chain, envelope schema
    (the body decodes strictly and its tag equals the type column) and legality
    (the history is one the state machine accepts: it starts with run_queued,
    nodes start before they finish, nothing follows the terminal event). Runs
    the run queue marks ended must end with a terminal event. Exit 0 when all is
    intact, 1 with one line per problem otherwise (or when --workflow W has no
    runs: nothing was verified), 2 when the database is missing or unusable.
    An empty log is said to be empty (exit 0).

    Runs that `flowledger archive` took out of the log are reported as archived,
    not missing: each is checked against the head its archive recorded, and with
    --archive-dir DIR against its bundle too (the file is there, verifies, has the
    recorded digest and holds the run as recorded).
    """
    chosen = sum([bool(run_ids), all_runs, workflow is not None])
    if chosen != 1:
        raise click.UsageError("name RUN ids, or give --all, or --workflow W (exactly one of them)")
    settings = settings_of(ctx)

    bundles_verified = 0

    async def scan(store: EventStore, conn: Conn) -> AuditReport:
        if run_ids:
            return await audit_runs(store, conn, list(run_ids))
        head = await store.head_position()
        label = f"auditing workflow {workflow}" if workflow else "auditing the log"
        with _progress() as progress:
            task = progress.add_task(label, total=head or None, events=0)

            def advance(position: int, events: int) -> None:
                progress.update(task, completed=position, events=events)

            return await audit_log(
                store, conn, workflow_id=workflow, page_size=page_size, on_progress=advance
            )

    async def main() -> AuditReport:
        nonlocal bundles_verified
        async with log_database(settings, create=False) as db, db.pool.acquire() as conn:
            report = await scan(db.store, conn)
            if archive_dir is not None:
                problems, bundles_verified = await verify_archives(
                    conn, db.store.schema, archive_dir, set(run_ids) if run_ids else None
                )
                report.problems += problems
                report.problems.sort(key=sort_key)
            return report

    report = run_async(main())
    if all_runs and report.runs == 0 and report.archived == 0:
        click.echo("the log is empty: it holds no runs, so there is nothing to verify")
        sys.exit(0)
    if workflow is not None and report.runs == 0 and report.archived == 0:
        # "ok: 0 runs verified" would pass a typo off as a clean audit.
        click.echo(f"no runs of workflow {workflow!r} exist; nothing was verified")
        sys.exit(1)
    _print_problems(report.problems)
    click.echo(report.summary())
    if archive_dir is not None:
        click.echo(f"{plural(bundles_verified, 'archive bundle')} checked in {archive_dir}")
    sys.exit(0 if report.clean else 1)


# -- bundles ---------------------------------------------------------------------------------------


@click.command("export")
@click.argument("run_ids", metavar="RUN...", nargs=-1, required=True, type=RUN_ID)
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Bundle file to write (`-` for stdout).",
)
@click.pass_context
def export_bundle(ctx: click.Context, run_ids: tuple[UUID, ...], output: Path) -> None:
    """Write RUN(s) to a self-verifying audit bundle (NDJSON).

    Header line, then per run its workflow version spec and every event
    envelope (hash and prev_hash included), then a digest line: SHA-256 over all
    lines before it and each run's head hash. Only runs that pass the audit are
    exported. The printed digest is worth recording elsewhere: `verify-bundle
    --expect-digest` then proves the bundle is the one exported.

    Database: --database-url (FLOWLEDGER_DATABASE_URL), else the embedded one under --home
    (FLOWLEDGER_HOME, default ./.flowledger). It reads an existing log and never creates
    one: with no database there it says so and exits 2.
    """
    settings = settings_of(ctx)
    to_stdout = str(output) == "-"
    if not to_stdout:
        _check_writable_dir(output)

    async def main() -> list[RunExport]:
        async with log_database(settings, create=False) as db:
            return await collect_runs(db.store, db.workflows, list(run_ids))

    try:
        runs = run_async(main())
    except ExportRefused as exc:
        _print_problems(exc.problems)
        click.echo(f"refused: {len(exc.problems)} problem(s) in the runs to export; no bundle written")
        sys.exit(1)
    lines = list(bundle_lines(runs, datetime.now(UTC)))
    digest = bundle_digest(lines)
    if to_stdout:
        out = sys.stdout.buffer
        for line in lines:
            out.write(line)
        out.flush()
    else:
        try:
            write_bundle(output, lines)
        except OSError as exc:
            raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
    events = sum(len(r.events) for r in runs)
    click.echo(
        f"exported {events:,} events of {len(runs)} run{'s' if len(runs) != 1 else ''}"
        f"{'' if to_stdout else f' to {output}'}; digest sha256:{digest}",
        err=to_stdout,
    )


def _check_writable_dir(output: Path) -> None:
    """Fail before the export reads anything when the bundle's directory is missing."""
    directory = output.resolve().parent
    if not directory.is_dir():
        raise click.ClickException(f"cannot write {output}: directory {directory} does not exist")


@click.command("verify-bundle")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--expect-digest",
    default=None,
    metavar="SHA256",
    help="Also require this digest (as printed by `export`): proves it is that very bundle.",
)
def verify_bundle_command(file: Path, expect_digest: str | None) -> None:
    """Verify an audit bundle offline (no database): chains, seq, schemas, legality and digest."""
    check = verify_bundle_file(file, expect_digest=expect_digest)
    _print_problems(check.problems)
    click.echo(f"{file}: {check.summary()}")
    sys.exit(0 if check.clean else 1)


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--expect-digest", default=None, metavar="SHA256", help="Refuse unless the bundle has this digest."
)
@click.pass_context
def import_bundle_command(ctx: click.Context, file: Path, expect_digest: str | None) -> None:
    """Load an audit bundle into this Flowledger, keeping every event exactly as exported.

    The bundle is verified first; one that fails is refused and nothing is
    written. Runs already present with the same events are skipped (importing
    twice writes nothing the second time); a run present with other events
    refuses the whole import. The bundle's workflow versions are registered.
    Imported runs are history only: they are not queued for execution.

    A bundle `flowledger archive` wrote from this log brings its runs back: the
    events an archive took out of the log return to their own positions.

    Database: --database-url (FLOWLEDGER_DATABASE_URL), else the embedded one under --home
    (FLOWLEDGER_HOME, default ./.flowledger). With no database there, the embedded one is
    created (an empty Flowledger can start from a bundle).
    """
    settings = settings_of(ctx)
    check = verify_bundle_file(file, expect_digest=expect_digest)
    if not check.clean:
        _print_problems(check.problems)
        click.echo(
            f"refused: {file} does not verify ({len(check.problems)} problem(s)); nothing was imported"
        )
        sys.exit(1)

    async def main() -> ImportResult:
        async with log_database(settings, create=True) as db:  # a new Flowledger may start from a bundle
            return await import_bundle(db.pool, check, schema=db.store.schema)

    try:
        result = run_async(main())
    except ImportRefused as exc:
        _print_problems(exc.problems)
        click.echo(f"refused: {file} conflicts with this log; nothing was imported")
        sys.exit(1)
    click.echo(result.summary())


COMMANDS: tuple[click.Command, ...] = (audit, export_bundle, verify_bundle_command, import_bundle_command)
"""Every command of this module (for ``cli.add_command``)."""
