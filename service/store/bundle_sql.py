"""The SQL of importing an audit bundle (``service.history.bundle``), run in the import's transaction.

Reads what the target log already holds of the bundle's runs and event ids, and registers the
bundle's workflow versions with the registration time they had at the source.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import msgspec

from schemas.names import DB_SCHEMA
from schemas.workflow import WorkflowSpec
from service.infra.db import Conn


async def stored_chains(
    conn: Conn, run_ids: Sequence[UUID], *, schema: str = DB_SCHEMA
) -> dict[UUID, list[tuple[int, UUID, str]]]:
    """Per run of ``run_ids`` that has events: (seq, event_id, hash in hex) of each, in seq order."""
    rows = await conn.fetch(
        f"SELECT run_id, seq, event_id, encode(hash, 'hex') FROM \"{schema}\".events "
        "WHERE run_id = ANY($1::uuid[]) ORDER BY run_id, seq",
        list(run_ids),
    )
    chains: dict[UUID, list[tuple[int, UUID, str]]] = {}
    for run_id, seq, event_id, digest in rows:
        chains.setdefault(run_id, []).append((seq, event_id, digest))
    return chains


async def event_id_users(
    conn: Conn, event_ids: Sequence[UUID], *, schema: str = DB_SCHEMA
) -> list[tuple[UUID, UUID, int]]:
    """(event_id, run_id, seq) of every stored event whose id is one of ``event_ids``."""
    rows = await conn.fetch(
        f'SELECT event_id, run_id, seq FROM "{schema}".events WHERE event_id = ANY($1::uuid[])',
        list(event_ids),
    )
    return [(event_id, run_id, seq) for event_id, run_id, seq in rows]


async def register_version_txn(
    conn: Conn,
    tenant: str,
    workflow_id: str,
    version: str,
    spec: WorkflowSpec | None,
    registered_at: datetime | None,
    *,
    schema: str = DB_SCHEMA,
) -> bool:
    """Register a workflow version stamped ``registered_at`` (now when None) unless it exists.

    Returns whether it was new. Runs in the caller's transaction.
    """
    created = await conn.fetchval(
        f'INSERT INTO "{schema}".workflows (tenant, workflow_id, version, spec, created_at, registered_by) '
        "VALUES ($1, $2, $3, $4, coalesce($5, clock_timestamp()), 'import') "
        "ON CONFLICT (tenant, workflow_id, version) DO NOTHING RETURNING true",
        tenant,
        workflow_id,
        version,
        msgspec.json.encode(spec),
        registered_at,
    )
    return bool(created)
