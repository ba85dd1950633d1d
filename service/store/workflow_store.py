"""Workflow definitions in ``flowledger.workflows``: immutable versions keyed by content hash."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg
import msgspec

from schemas.names import DB_SCHEMA
from schemas.workflow import WorkflowSpec, spec_version

_spec_decoder = msgspec.json.Decoder(WorkflowSpec)


class UnknownWorkflow(LookupError):
    """No workflow (or no such version) is registered under that id."""


@dataclass(frozen=True)
class StoredWorkflow:
    workflow_id: str
    version: str
    spec: WorkflowSpec
    created_at: datetime


class WorkflowStore:
    """Register and look up workflow versions. Specs are validated before they get here."""

    def __init__(self, pool: asyncpg.Pool, *, schema: str = DB_SCHEMA) -> None:
        self.pool = pool
        s = f'"{schema}"'
        self._table = f"{s}.workflows"
        self._sql_insert = (
            f"INSERT INTO {s}.workflows (workflow_id, version, spec) VALUES ($1, $2, $3) "
            "ON CONFLICT (workflow_id, version) DO NOTHING RETURNING created_at"
        )
        self._sql_get = (
            f"SELECT version, spec, created_at FROM {s}.workflows WHERE workflow_id = $1 AND version = $2"
        )
        # The current version is the one registered last (see 0005_workflow_current_version.sql).
        current = "coalesce(current_since, created_at) DESC"
        self._sql_latest = (
            f"SELECT version, spec, created_at FROM {s}.workflows WHERE workflow_id = $1 "
            f"ORDER BY {current} LIMIT 1"
        )
        self._sql_list = (
            f"SELECT DISTINCT ON (workflow_id) workflow_id, version, spec, created_at FROM {s}.workflows "
            f"WHERE workflow_id > $1 ORDER BY workflow_id, {current} LIMIT $2"
        )
        self._sql_versions = (
            f"SELECT version, created_at FROM {s}.workflows WHERE workflow_id = $1 ORDER BY {current}"
        )
        self._sql_reinstate = (
            f"UPDATE {s}.workflows SET current_since = clock_timestamp() "
            "WHERE workflow_id = $1 AND version = $2 RETURNING created_at"
        )
        self._cache: dict[tuple[str, str], WorkflowSpec] = {}

    async def register(self, spec: WorkflowSpec) -> tuple[StoredWorkflow, bool]:
        """Store ``spec`` as the current version of its workflow; returns it and whether it was new.

        An identical spec is not stored again: registering the current version changes
        nothing, and registering an older version makes it the current one again (what
        was registered last is what runs).
        """
        version = spec_version(spec)
        async with self.pool.acquire() as conn, conn.transaction():
            created_at = await conn.fetchval(self._sql_insert, spec.id, version, msgspec.json.encode(spec))
            if created_at is not None:
                return StoredWorkflow(spec.id, version, spec, created_at), True
            current = await conn.fetchrow(self._sql_latest, spec.id)
            if current is not None and current["version"] == version:
                return StoredWorkflow(spec.id, version, spec, current["created_at"]), False
            created_at = await conn.fetchval(self._sql_reinstate, spec.id, version)
        return StoredWorkflow(spec.id, version, spec, created_at), False

    async def get(self, workflow_id: str, version: str | None = None) -> StoredWorkflow:
        """A version (the latest when ``version`` is None); raises ``UnknownWorkflow``."""
        async with self.pool.acquire() as conn:
            if version is None:
                row = await conn.fetchrow(self._sql_latest, workflow_id)
            else:
                row = await conn.fetchrow(self._sql_get, workflow_id, version)
        if row is None:
            what = f"workflow {workflow_id!r}" + (f" version {version!r}" if version else "")
            raise UnknownWorkflow(f"{what} is not registered")
        return StoredWorkflow(
            workflow_id, row["version"], _spec_decoder.decode(row["spec"]), row["created_at"]
        )

    async def spec(self, workflow_id: str, version: str) -> WorkflowSpec:
        """A version's spec, cached (versions are immutable)."""
        key = (workflow_id, version)
        cached = self._cache.get(key)
        if cached is None:
            cached = (await self.get(workflow_id, version)).spec
            self._cache[key] = cached
        return cached

    async def latest_each(self, after: str = "", limit: int = 100) -> list[StoredWorkflow]:
        """Latest version of each workflow, by id."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self._sql_list, after, limit)
        return [
            StoredWorkflow(r["workflow_id"], r["version"], _spec_decoder.decode(r["spec"]), r["created_at"])
            for r in rows
        ]

    async def versions(self, workflow_id: str) -> list[tuple[str, datetime]]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self._sql_versions, workflow_id)
        return [(r["version"], r["created_at"]) for r in rows]
