"""Archiving ended runs: write them to a verified audit bundle, then detach the log's partitions
that hold nothing but archived runs' events.

Order of work, each step only after the one before succeeded:
1. the runs whose terminal event was recorded before the cutoff and that no archive holds;
2. their bundle (the format of ``service.history.bundle``, built run by run, so memory does
   not grow with the archive), written atomically, fsynced (file and directory);
3. the bundle read back from disk and verified (chains, seq, schemas, legality, digest);
4. an ``archives`` row: the cutoff, the counts, each run's head (event count, head hash),
   the bundle's file name and digest;
5. the partitions to detach: entirely below the positions drawn so far (no append can land
   there any more) and holding events of archived runs only; each is detached, dropped and
   recorded in one transaction. A run whose events span a partition that stays is then
   partly out of the log: its first events are gone, its last ones stay (the audit checks
   those against the archive's record; importing the bundle puts the others back).

Dropped, not kept as a detached table: a detached table no longer refuses UPDATE or DELETE
(its cloned triggers go with the detach), so keeping it would keep a mutable copy of the
history; the verified bundle, whose digest the ``archives`` row records, is the copy kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from uuid import UUID

from service.history.audit import AuditProblem, plural
from service.history.bundle import BundleSpool, collect_runs, verify_bundle_file
from service.infra.db import Conn
from service.store.archive_sql import (
    ArchivedHead,
    Partition,
    archives_conn,
    attached_partitions_conn,
    detach_partition_conn,
    ended_runs_before_conn,
    insert_archive_conn,
    latest_archive_conn,
    partition_runs_conn,
    reader_positions_conn,
)
from service.store.event_store import EventStore
from service.store.workflow_store import WorkflowStore

RUNS_PER_READ = 200
"""Runs read (and verified) at a time while the bundle is built."""

Progress = Callable[[str, int, int], None]
"""Called with what is being done, how much of it is done and how much there is."""


class ArchiveFailed(Exception):
    """The bundle could not be made or did not verify from disk; nothing was detached."""

    def __init__(self, message: str, problems: Sequence[AuditProblem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


@dataclass
class KeptPartition:
    """A partition the archive left attached, and why."""

    name: str
    reason: str


@dataclass
class ArchiveResult:
    archive_id: int | None = None
    runs: int = 0
    events: int = 0
    bundle: Path | None = None
    digest: str = ""
    detached: list[Partition] = field(default_factory=list)
    kept: list[KeptPartition] = field(default_factory=list)


def bundle_name(before: datetime, now: datetime) -> str:
    """The archive bundle's file name: the cutoff and the time it was made (both UTC)."""
    return f"flowledger-archive-before-{before:%Y%m%dT%H%M%SZ}-at-{now:%Y%m%dT%H%M%S%fZ}.ndjson"


async def archive(
    store: EventStore,
    workflows: WorkflowStore,
    *,
    before: datetime,
    directory: Path,
    now: datetime,
    on_progress: Progress | None = None,
) -> ArchiveResult:
    """Archive the runs that ended before ``before`` into a bundle in ``directory`` and detach
    what can be detached (see the module's docstring). Raises ``ExportRefused`` when a run to
    archive fails the audit, ``ArchiveFailed`` when the written bundle does not verify."""
    progress = on_progress or (lambda _what, _done, _total: None)
    schema = store.schema
    result = ArchiveResult()
    async with store.pool.acquire() as conn:
        run_ids = await ended_runs_before_conn(conn, before, schema=schema)
    if not run_ids:
        # Nothing new: what earlier archives hold may have become detachable since (readers
        # caught up, a run that pinned a partition was archived). Recorded under the latest.
        async with store.pool.acquire() as conn:
            latest = await latest_archive_conn(conn, schema=schema)
            if latest is not None:
                await _detach_conn(conn, schema, latest, result, progress)
        return result
    spool = BundleSpool(directory)
    try:
        for start in range(0, len(run_ids), RUNS_PER_READ):
            for run in await collect_runs(store, workflows, run_ids[start : start + RUNS_PER_READ]):
                spool.add(run)
            progress("writing the bundle", min(start + RUNS_PER_READ, len(run_ids)), len(run_ids))
        path = directory / bundle_name(before, now)
        digest = spool.write(path, now)
    finally:
        spool.close()
    result.bundle, result.digest, result.runs, result.events = path, digest, len(run_ids), spool.events

    progress("verifying the bundle from disk", 0, 1)
    check = verify_bundle_file(path, expect_digest=digest)
    written = {str(r.run.run_id): (len(r.events), r.events[-1].hash) for r in check.runs}
    expected = {k: (h.events, h.head_hash) for k, h in spool.heads.items()}
    if not check.clean or written != expected:
        raise ArchiveFailed(
            f"the bundle written to {path} does not verify from disk; nothing was detached", check.problems
        )
    progress("verifying the bundle from disk", 1, 1)
    heads = {
        r.run.run_id: ArchivedHead(len(r.events), r.events[-1].hash, r.run.tenant, r.run.workflow_id)
        for r in check.runs
    }
    del check
    async with store.pool.acquire() as conn:
        result.archive_id = await insert_archive_conn(
            conn, before=before, heads=heads, bundle_file=path.name, bundle_sha256=digest, schema=schema
        )
        await _detach_conn(conn, schema, result.archive_id, result, progress)
    return result


async def _detach_conn(
    conn: Conn, schema: str, archive_id: int, result: ArchiveResult, progress: Progress
) -> None:
    """Detach and drop what can be (recorded under ``archive_id``); say what stays and why."""
    detach, result.kept = await _partitions_to_detach(conn, schema, progress)
    for done, partition in enumerate(detach, 1):
        await detach_partition_conn(conn, partition, archive_id, schema=schema)
        result.detached.append(partition)
        progress("detaching partitions", done, len(detach))


async def _partitions_to_detach(
    conn: Conn, schema: str, progress: Progress
) -> tuple[list[Partition], list[KeptPartition]]:
    """The partitions that hold events, all of them of archived runs and read by every reader
    of the log (``checkpoints``), no position still to be drawn, and no run whose earlier
    events are in a partition that stays; and those kept, with the reason. (Empty ones stay:
    nothing to gain.)

    The last condition keeps what leaves the log a prefix of each run: a run read from the log
    either starts at seq 0 or visibly does not (``RunArchived``), never silently lacks its
    middle or its end."""
    partitions, drawn = await attached_partitions_conn(conn, schema=schema)
    readers = await reader_positions_conn(conn, schema=schema)
    kept: list[KeptPartition] = []
    detach: list[Partition] = []
    stays: dict[UUID, str] = {}
    """Runs with events in a partition that stays (first such partition)."""
    full = [p for p in partitions if p.upper <= drawn + 1]
    for done, partition in enumerate(full, 1):
        runs, not_archived = await partition_runs_conn(conn, partition, schema=schema)
        progress("checking partitions", done, len(full))
        pinned = next((r for r in runs if r in stays), None)
        behind = next(((name, at) for name, at in readers.items() if at < partition.upper - 1), None)
        if behind is not None and runs:
            reason = (
                f"reader {behind[0]} has read the log up to position {behind[1]:,} only "
                "(the relay and the projections must have read these events first)"
            )
        elif not_archived:
            reason = (
                f"it holds events of {plural(len(not_archived), 'run')} not archived "
                f"(still running, or ended on or after the cutoff), e.g. run {not_archived[0]}"
            )
        elif pinned is not None:
            reason = (
                f"run {pinned} has events here and earlier ones in partition {stays[pinned]}, which stays "
                "(a run leaves the log from its first event on)"
            )
        else:
            if runs:
                detach.append(partition)
            continue
        kept.append(KeptPartition(partition.name, reason))
        for run_id in runs:
            stays.setdefault(run_id, partition.name)
    writable = [p for p in partitions if p.upper > drawn + 1]
    if writable:
        first = writable[0]
        kept.append(
            KeptPartition(
                first.name if len(writable) == 1 else f"{first.name} and {len(writable) - 1} later",
                f"new events are still appended there (positions from {first.lower:,} on; "
                f"{drawn:,} drawn so far)",
            )
        )
    return detach, kept


async def verify_archives(
    conn: Conn, schema: str, directory: Path, run_ids: set[UUID] | None = None
) -> tuple[list[AuditProblem], int]:
    """Check the archives' bundles in ``directory`` (those holding one of ``run_ids``, or all):
    each is there, verifies, has the digest its archive recorded, and holds each recorded run
    ending in its recorded head. Returns the problems and the number of bundles verified."""
    problems: list[AuditProblem] = []
    verified = 0
    for record in await archives_conn(conn, schema=schema):
        if run_ids is not None and not run_ids & record.heads.keys():
            continue
        path = directory / record.bundle_file
        label = f"archive {record.id} ({record.bundle_file})"
        if not path.is_file():
            problems.append(AuditProblem(None, None, "archive", f"{label}: the bundle is not in {directory}"))
            continue
        check = await asyncio.to_thread(verify_bundle_file, path, expect_digest=record.bundle_sha256)
        problems += [
            AuditProblem(p.run_id, p.seq, p.kind, f"{label}: {p.problem}", p.line) for p in check.problems
        ]
        in_bundle = {r.run.run_id: (len(r.events), r.events[-1].hash if r.events else "") for r in check.runs}
        for run_id, head in record.heads.items():
            if in_bundle.get(run_id) != (head.events, head.head_hash):
                problems.append(
                    AuditProblem(
                        run_id, None, "archive", f"{label}: the bundle does not hold the run as recorded"
                    )
                )
        verified += 1
    return problems, verified
