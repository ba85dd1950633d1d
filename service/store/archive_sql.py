"""The SQL of archiving (``service.history.archive``): the log's partitions, the runs an archive
takes, the ``archives`` records, detaching a partition and making one again for a restore.

The partitions and their bookkeeping are made by migration 0011 (``event_partitions``,
``ensure_event_partitions``); an archive's per-run heads are the ``archived_runs`` view of
its ``heads`` column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import msgspec

from schemas.events import TERMINAL_TYPES
from schemas.names import DB_SCHEMA
from service.infra.db import Conn


@dataclass(frozen=True, slots=True)
class Partition:
    """One range of the log: positions ``lower`` (inclusive) to ``upper`` (exclusive)."""

    name: str
    lower: int
    upper: int


class ArchivedHead(msgspec.Struct, frozen=True):
    """What an archive recorded of one run: its event count, head hash, tenant and workflow."""

    events: int
    head_hash: str
    tenant: str
    workflow_id: str


@dataclass(frozen=True, slots=True)
class ArchiveRecord:
    """A row of ``archives``."""

    id: int
    created_at: datetime
    before: datetime
    run_count: int
    event_count: int
    bundle_file: str
    bundle_sha256: str
    partitions_detached: list[str]
    heads: dict[UUID, ArchivedHead]


_heads_decoder = msgspec.json.Decoder(dict[UUID, ArchivedHead])


async def ended_runs_before_conn(conn: Conn, before: datetime, *, schema: str = DB_SCHEMA) -> list[UUID]:
    """Runs whose terminal event was recorded before ``before`` and that no archive holds yet,
    in the order they ended."""
    rows = await conn.fetch(
        f'SELECT e.run_id FROM "{schema}".events e WHERE e.type = ANY($1::text[]) AND e.recorded_at < $2 '
        f'AND NOT EXISTS (SELECT 1 FROM "{schema}".archived_runs a WHERE a.run_id = e.run_id) '
        "ORDER BY e.global_position",
        sorted(TERMINAL_TYPES),
        before,
    )
    return list(dict.fromkeys(r[0] for r in rows))


async def insert_archive_conn(
    conn: Conn,
    *,
    before: datetime,
    heads: dict[UUID, ArchivedHead],
    bundle_file: str,
    bundle_sha256: str,
    schema: str = DB_SCHEMA,
) -> int:
    """Record an archive whose bundle was written and verified; returns its id."""
    archive_id: int = await conn.fetchval(
        f'INSERT INTO "{schema}".archives (before, run_count, event_count, heads, bundle_file, bundle_sha256) '
        "VALUES ($1, $2, $3, $4::jsonb, $5, $6) RETURNING id",
        before,
        len(heads),
        sum(h.events for h in heads.values()),
        msgspec.json.encode(heads).decode(),
        bundle_file,
        bundle_sha256,
    )
    return archive_id


async def archives_conn(conn: Conn, *, schema: str = DB_SCHEMA) -> list[ArchiveRecord]:
    """Every archive, oldest first."""
    rows = await conn.fetch(
        "SELECT id, created_at, before, run_count, event_count, bundle_file, bundle_sha256, "
        f'partitions_detached, heads::text FROM "{schema}".archives ORDER BY id'
    )
    return [
        ArchiveRecord(
            id=row[0],
            created_at=row[1],
            before=row[2],
            run_count=row[3],
            event_count=row[4],
            bundle_file=row[5],
            bundle_sha256=row[6],
            partitions_detached=list(row[7]),
            heads=_heads_decoder.decode(row[8]),
        )
        for row in rows
    ]


async def archive_with_digest_conn(conn: Conn, sha256: str, *, schema: str = DB_SCHEMA) -> int | None:
    """The id of the archive whose bundle has this digest (None: no archive wrote it)."""
    value: int | None = await conn.fetchval(
        f'SELECT id FROM "{schema}".archives WHERE bundle_sha256 = $1 ORDER BY id LIMIT 1', sha256
    )
    return value


async def latest_archive_conn(conn: Conn, *, schema: str = DB_SCHEMA) -> int | None:
    """The id of the latest archive (None: there is none)."""
    value: int | None = await conn.fetchval(f'SELECT max(id) FROM "{schema}".archives')
    return value


async def attached_partitions_conn(conn: Conn, *, schema: str = DB_SCHEMA) -> tuple[list[Partition], int]:
    """The log's attached partitions in position order, and the highest position drawn so far
    (a partition whose upper bound is past it may still receive appends)."""
    rows = await conn.fetch(
        f'SELECT name, lower_position, upper_position FROM "{schema}".event_partitions '
        "WHERE detached_at IS NULL ORDER BY lower_position"
    )
    drawn = await conn.fetchval(
        f"SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('\"{schema}\".events', "
        "'global_position')), 0)"
    )
    return [Partition(*row) for row in rows], int(drawn)


async def reader_positions_conn(conn: Conn, *, schema: str = DB_SCHEMA) -> dict[str, int]:
    """Where each reader tailing the log (relay, projections: ``checkpoints``) has read up to."""
    rows = await conn.fetch(f'SELECT name, position FROM "{schema}".checkpoints ORDER BY name')
    return {name: int(position) for name, position in rows}


async def partition_runs_conn(
    conn: Conn, partition: Partition, *, schema: str = DB_SCHEMA
) -> tuple[list[UUID], list[UUID]]:
    """The runs with events in ``partition``, and those of them that no archive holds."""
    rows = await conn.fetch(
        f'SELECT p.run_id, EXISTS (SELECT 1 FROM "{schema}".archived_runs a WHERE a.run_id = p.run_id) '
        f'FROM (SELECT DISTINCT run_id FROM "{schema}"."{partition.name}") p ORDER BY p.run_id'
    )
    return [r[0] for r in rows], [r[0] for r in rows if not r[1]]


async def detach_partition_conn(
    conn: Conn, partition: Partition, archive_id: int, *, schema: str = DB_SCHEMA
) -> None:
    """Detach and drop ``partition`` and record it, all in one transaction.

    A plain DETACH (not CONCURRENTLY): it takes an ACCESS EXCLUSIVE lock on the log for a
    moment, and in exchange the detach, the drop and both records commit together or not at
    all. ``lock_timeout`` bounds how long appends queue behind it while it waits for readers.
    """
    async with conn.transaction():
        await conn.execute("SET LOCAL lock_timeout = '10s'")
        await conn.execute(f'ALTER TABLE "{schema}".events DETACH PARTITION "{schema}"."{partition.name}"')
        await conn.execute(f'DROP TABLE "{schema}"."{partition.name}"')
        await conn.execute(
            f'UPDATE "{schema}".event_partitions SET detached_at = now(), archive_id = $2 WHERE name = $1',
            partition.name,
            archive_id,
        )
        await conn.execute(
            f'UPDATE "{schema}".archives SET partitions_detached = partitions_detached || $2::text '
            "WHERE id = $1",
            archive_id,
            partition.name,
        )


async def live_runs_conn(conn: Conn, run_ids: Sequence[UUID], *, schema: str = DB_SCHEMA) -> set[UUID]:
    """Those of ``run_ids`` that have events in the log (not detached)."""
    rows = await conn.fetch(
        f'SELECT DISTINCT run_id FROM "{schema}".events WHERE run_id = ANY($1::uuid[])', list(run_ids)
    )
    return {r[0] for r in rows}


async def detached_partitions_conn(conn: Conn, *, schema: str = DB_SCHEMA) -> list[Partition]:
    """The partitions an archive detached and dropped, in position order."""
    rows = await conn.fetch(
        f'SELECT name, lower_position, upper_position FROM "{schema}".event_partitions '
        "WHERE detached_at IS NOT NULL ORDER BY lower_position"
    )
    return [Partition(*row) for row in rows]


async def restore_partition_conn(conn: Conn, partition: Partition, *, schema: str = DB_SCHEMA) -> None:
    """Make a detached partition's range a partition of the log again (empty), so that the
    archived events can go back to their own positions; in one transaction."""
    async with conn.transaction():
        await conn.execute(
            f'SELECT "{schema}".attach_event_partition($1, $2, $3)',
            partition.name,
            partition.lower,
            partition.upper,
        )
        await conn.execute(
            f'UPDATE "{schema}".event_partitions SET detached_at = NULL, archive_id = NULL WHERE name = $1',
            partition.name,
        )
