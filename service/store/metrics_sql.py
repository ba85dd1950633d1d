"""Metrics SQL: per workflow and per (workflow, node type) figures of the read models.

Guarantees:
- every SQL statement of the metrics lives here, built once per schema; the run and node
  figures are aggregates (``count``, ``percentile_cont``) over the read-model tables
  ``run_summaries`` and ``node_executions`` (plus the registered workflow specs, to name the
  type of nodes that were skipped and never executed) and never scan the event log;
- ``read_figures`` reads them and the projections' positions in one snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from schemas.names import DB_SCHEMA
from service.infra.db import Conn
from service.store.event_store import EventStore
from service.store.projection_log import ProjectorStatus, projection_status

QUANTILES = (0.5, 0.95, 0.99)
RUN_STATUSES = ("queued", "running", "waiting", "succeeded", "failed", "cancelled")
ENDED_RUN_STATUSES = ("succeeded", "failed", "cancelled")
ENDED_NODE_STATUSES = ("succeeded", "failed", "skipped")


@dataclass(frozen=True, slots=True)
class Quantiles:
    """Duration quantiles in milliseconds (``percentile_cont``: interpolated)."""

    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, values: list[float] | None) -> Quantiles | None:
        return None if values is None else cls(*(float(v) for v in values))


@dataclass(frozen=True, slots=True)
class WorkflowFigures:
    """The runs of one workflow, by status. ``duration_ms`` is over ended runs (started -> ended)."""

    workflow_id: str
    runs: int = 0
    queued: int = 0
    running: int = 0
    waiting: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    duration_ms: Quantiles | None = None

    @property
    def ended(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    @property
    def success_rate(self) -> float | None:
        """Succeeded / ended runs (None before any run ended)."""
        return self.succeeded / self.ended if self.ended else None

    def count(self, status: str) -> int:
        return int(getattr(self, status))


@dataclass(frozen=True, slots=True)
class NodeTypeFigures:
    """The node executions (one per run and node) of one node type within one workflow.

    ``duration_ms`` is over executions that ended (succeeded or failed; the last attempt's
    duration); ``retries`` counts retries scheduled over all attempts.
    """

    workflow_id: str
    node_type: str
    executions: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    in_progress: int = 0
    retries: int = 0
    duration_ms: Quantiles | None = None

    @property
    def success_rate(self) -> float | None:
        """Succeeded / (succeeded + failed): skipped nodes never ran (None before any ended)."""
        done = self.succeeded + self.failed
        return self.succeeded / done if done else None

    def count(self, status: str) -> int:
        return int(getattr(self, status))


# -- SQL ------------------------------------------------------------------------------------------


def _quantiles_sql(column: str, where: str) -> str:
    q = ", ".join(str(v) for v in QUANTILES)
    return (
        f"percentile_cont(ARRAY[{q}]::float8[]) WITHIN GROUP (ORDER BY {column}) "
        f"FILTER (WHERE {where}) AS duration_ms"
    )


class MetricsQueries:
    """The metrics' SQL for one schema: each statement built once, with and without a workflow filter.

    Two statements rather than ``$2 IS NULL OR workflow_id = $2``: a generic plan of the
    latter cannot use the (tenant, workflow_id, ...) indexes.
    """

    def __init__(self, schema: str = DB_SCHEMA) -> None:
        self.schema = schema
        s = f'"{schema}"'
        counts = ",\n".join(f"count(*) FILTER (WHERE status = '{st}') AS {st}" for st in RUN_STATUSES)
        runs = f"""
            SELECT workflow_id, count(*) AS runs,
                   {counts},
                   {_quantiles_sql("duration_ms", "duration_ms IS NOT NULL")}
              FROM {s}.run_summaries
             WHERE tenant = $1 {{filter}}
             GROUP BY workflow_id
             ORDER BY workflow_id"""
        self._sql_workflows = runs.format(filter="")
        self._sql_workflow = runs.format(filter="AND workflow_id = $2")
        # A skipped node never executed, so its row has no node type (node_skipped does not
        # carry one): it is read from the spec of the run's workflow version instead. Only
        # those rows look up their run (by primary key) and the specs; the typed rows, nearly
        # all of them, are aggregated straight from node_executions.
        nodes = f"""
            WITH spec_types AS (
                SELECT w.workflow_id, w.version, n->>'id' AS node_id, n->>'type' AS node_type
                  FROM {s}.workflows w CROSS JOIN LATERAL json_array_elements(w.spec->'nodes') AS n
                 {{spec_filter}}
            ), typed AS (
                SELECT workflow_id, node_type, status, retries, duration_ms
                  FROM {s}.node_executions
                 WHERE tenant = $1 AND node_type <> '' {{filter}}
                UNION ALL
                SELECT ne.workflow_id, coalesce(st.node_type, ''), ne.status, ne.retries, ne.duration_ms
                  FROM {s}.node_executions ne
                  JOIN {s}.run_summaries rs ON rs.run_id = ne.run_id
                  LEFT JOIN spec_types st
                         ON st.workflow_id = ne.workflow_id AND st.version = rs.workflow_version
                        AND st.node_id = ne.node_id
                 WHERE ne.tenant = $1 AND ne.node_type = '' {{filter_ne}}
            )
            SELECT workflow_id, node_type, count(*) AS executions,
                   count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
                   count(*) FILTER (WHERE status = 'failed') AS failed,
                   count(*) FILTER (WHERE status = 'skipped') AS skipped,
                   count(*) FILTER (WHERE status NOT IN ('succeeded', 'failed', 'skipped')) AS in_progress,
                   coalesce(sum(retries), 0) AS retries,
                   {_quantiles_sql("duration_ms", "status IN ('succeeded', 'failed')")}
              FROM typed
             GROUP BY workflow_id, node_type
             ORDER BY workflow_id, node_type"""
        self._sql_node_types = nodes.format(spec_filter="", filter="", filter_ne="")
        self._sql_node_type = nodes.format(
            spec_filter="WHERE w.workflow_id = $2",
            filter="AND workflow_id = $2",
            filter_ne="AND ne.workflow_id = $2",
        )

    async def workflows_conn(
        self, conn: Conn, tenant: str, workflow_id: str | None = None
    ) -> list[WorkflowFigures]:
        """Run figures per workflow (of ``workflow_id`` only, when given), by workflow id."""
        if workflow_id is None:
            rows = await conn.fetch(self._sql_workflows, tenant)
        else:
            rows = await conn.fetch(self._sql_workflow, tenant, workflow_id)
        return [
            WorkflowFigures(
                workflow_id=r["workflow_id"],
                runs=r["runs"],
                **{st: r[st] for st in RUN_STATUSES},
                duration_ms=Quantiles.of(r["duration_ms"]),
            )
            for r in rows
        ]

    async def node_types_conn(
        self, conn: Conn, tenant: str, workflow_id: str | None = None
    ) -> list[NodeTypeFigures]:
        """Node execution figures per (workflow, node type), by workflow id then node type."""
        if workflow_id is None:
            rows = await conn.fetch(self._sql_node_types, tenant)
        else:
            rows = await conn.fetch(self._sql_node_type, tenant, workflow_id)
        return [
            NodeTypeFigures(
                workflow_id=r["workflow_id"],
                node_type=r["node_type"],
                executions=r["executions"],
                succeeded=r["succeeded"],
                failed=r["failed"],
                skipped=r["skipped"],
                in_progress=r["in_progress"],
                retries=int(r["retries"]),
                duration_ms=Quantiles.of(r["duration_ms"]),
            )
            for r in rows
        ]


@dataclass(frozen=True, slots=True)
class Figures:
    """Run and node figures and the projection positions they reflect (one database snapshot)."""

    workflows: list[WorkflowFigures]
    node_types: list[NodeTypeFigures]
    projections: list[ProjectorStatus]


async def read_figures(
    pool: asyncpg.Pool,
    store: EventStore,
    queries: MetricsQueries,
    tenant: str,
    workflow_id: str | None = None,
) -> Figures:
    """Run and node figures with the projections' positions, all from one snapshot (a read-only
    repeatable-read transaction): the figures are exactly as current as the positions say."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        projections = await projection_status(conn, store)
        workflows = await queries.workflows_conn(conn, tenant, workflow_id)
        node_types = await queries.node_types_conn(conn, tenant, workflow_id)
    return Figures(workflows, node_types, projections)
