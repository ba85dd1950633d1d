"""Workflow definitions in ``flowledger.workflows``: immutable versions keyed by content hash."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg
import msgspec

from schemas.names import DB_SCHEMA
from schemas.workflow import WorkflowSpec, spec_version
from service.config import DEFAULT_TENANT

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
            f"INSERT INTO {s}.workflows (tenant, workflow_id, version, spec, registered_by) "
            "VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (tenant, workflow_id, version) DO NOTHING RETURNING created_at"
        )
        self._sql_get = (
            f"SELECT version, spec, created_at FROM {s}.workflows "
            "WHERE tenant = $1 AND workflow_id = $2 AND version = $3"
        )
        # The current version is the one registered last (see 0005_workflow_current_version.sql).
        current = "coalesce(current_since, created_at) DESC"
        self._sql_latest = (
            f"SELECT version, spec, created_at FROM {s}.workflows WHERE tenant = $1 AND workflow_id = $2 "
            f"ORDER BY {current} LIMIT 1"
        )
        self._sql_list = (
            f"SELECT DISTINCT ON (workflow_id) workflow_id, version, spec, created_at FROM {s}.workflows "
            f"WHERE tenant = $1 AND workflow_id > $2 ORDER BY workflow_id, {current} LIMIT $3"
        )
        self._sql_versions = (
            f"SELECT version, created_at FROM {s}.workflows WHERE tenant = $1 AND workflow_id = $2 "
            f"ORDER BY {current}"
        )
        self._sql_reinstate = (
            f"UPDATE {s}.workflows SET current_since = clock_timestamp() "
            "WHERE tenant = $1 AND workflow_id = $2 AND version = $3 RETURNING created_at"
        )
        self._cache: dict[tuple[str, str, str], WorkflowSpec] = {}

    async def register(
        self, spec: WorkflowSpec, *, tenant: str = DEFAULT_TENANT, actor: str = "system"
    ) -> tuple[StoredWorkflow, bool]:
        """Store ``spec`` as the current version of its workflow; returns it and whether it was new.

        An identical spec is not stored again: registering the current version changes
        nothing, and registering an older version makes it the current one again (what
        was registered last is what runs). Workflow ids are per tenant; ``actor`` is recorded
        as who registered the version.
        """
        version = spec_version(spec)
        async with self.pool.acquire() as conn, conn.transaction():
            created_at = await conn.fetchval(
                self._sql_insert, tenant, spec.id, version, msgspec.json.encode(spec), actor
            )
            if created_at is not None:
                return StoredWorkflow(spec.id, version, spec, created_at), True
            current = await conn.fetchrow(self._sql_latest, tenant, spec.id)
            if current is not None and current["version"] == version:
                return StoredWorkflow(spec.id, version, spec, current["created_at"]), False
            created_at = await conn.fetchval(self._sql_reinstate, tenant, spec.id, version)
        return StoredWorkflow(spec.id, version, spec, created_at), False

    async def get(
        self, workflow_id: str, version: str | None = None, *, tenant: str = DEFAULT_TENANT
    ) -> StoredWorkflow:
        """A version (the latest when ``version`` is None) of the tenant's workflow; raises
        ``UnknownWorkflow`` (also for another tenant's workflow: it does not exist here)."""
        async with self.pool.acquire() as conn:
            if version is None:
                row = await conn.fetchrow(self._sql_latest, tenant, workflow_id)
            else:
                row = await conn.fetchrow(self._sql_get, tenant, workflow_id, version)
        if row is None:
            what = f"workflow {workflow_id!r}" + (f" version {version!r}" if version else "")
            raise UnknownWorkflow(f"{what} is not registered")
        return StoredWorkflow(
            workflow_id, row["version"], _spec_decoder.decode(row["spec"]), row["created_at"]
        )

    async def spec(self, workflow_id: str, version: str, *, tenant: str = DEFAULT_TENANT) -> WorkflowSpec:
        """A version's spec, cached (versions are immutable)."""
        key = (tenant, workflow_id, version)
        cached = self._cache.get(key)
        if cached is None:
            cached = (await self.get(workflow_id, version, tenant=tenant)).spec
            self._cache[key] = cached
        return cached

    async def latest_each(
        self, after: str = "", limit: int = 100, *, tenant: str = DEFAULT_TENANT
    ) -> list[StoredWorkflow]:
        """Latest version of each of the tenant's workflows, by id."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self._sql_list, tenant, after, limit)
        return [
            StoredWorkflow(r["workflow_id"], r["version"], _spec_decoder.decode(r["spec"]), r["created_at"])
            for r in rows
        ]

    async def versions(self, workflow_id: str, *, tenant: str = DEFAULT_TENANT) -> list[tuple[str, datetime]]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self._sql_versions, tenant, workflow_id)
        return [(r["version"], r["created_at"]) for r in rows]
