"""Metrics: per workflow and per (workflow, node type) figures of the read models, service gauges,
and their Prometheus rendering.

Guarantees:
- every SQL statement of the metrics lives here, built once per schema; the run and node
  figures are aggregates (``count``, ``percentile_cont``) over the read-model tables
  ``run_summaries`` and ``node_executions`` (plus the registered workflow specs, to name the
  type of nodes that were skipped and never executed) and never scan the event log;
- the Prometheus registry is per app (``ServiceMetrics``), not the library's global one;
  its collector renders a snapshot gathered beforehand, asynchronously, so ``collect()``
  (synchronous, called by ``generate_latest``) does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector

from service.db import Conn
from service.event_store import EventStore
from service.projection_service import ProjectorStatus, projection_status
from service.runtime import Runtime

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


@dataclass(frozen=True, slots=True)
class ServiceFigures:
    """How far behind the log the service's readers are, and the work in hand."""

    projections: list[ProjectorStatus]
    log_head: int
    queued: int
    running: int
    in_flight: int
    """Runs executing in this process (its worker's executors)."""
    relay_active: bool | None = None
    """None: no relay in this process; False: a standby (another process relays)."""
    relay_lag_events: int | None = None
    """Log head minus the position the active relay published up to."""


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    workflows: list[WorkflowFigures] = field(default_factory=list)
    node_types: list[NodeTypeFigures] = field(default_factory=list)
    service: ServiceFigures | None = None


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

    def __init__(self, schema: str = "flowledger") -> None:
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


async def read_service(runtime: Runtime, projections: list[ProjectorStatus]) -> ServiceFigures:
    """Queue depth (all instances), this process's in-flight runs and its relay's lag, beside
    the ``projections`` lag (read from the checkpoints, so it too covers every instance)."""
    assert runtime.store is not None
    queued, running = await runtime.queue.depth()
    head = projections[0].head if projections else await runtime.store.head_position()
    relay = runtime.relay
    relay_lag = None
    if relay is not None and relay.status.active:
        relay_lag = max(0, head - relay.status.published_position)
    return ServiceFigures(
        projections=projections,
        log_head=head,
        queued=queued,
        running=running,
        in_flight=len(runtime.worker.executors) if runtime.worker is not None else 0,
        relay_active=None if relay is None else relay.status.active,
        relay_lag_events=relay_lag,
    )


# -- Prometheus -----------------------------------------------------------------------------------


def _seconds(ms: float) -> float:
    return ms / 1000


class SnapshotCollector:
    """A prometheus_client custom collector that renders the snapshot handed to it."""

    def __init__(self) -> None:
        self.snapshot = MetricsSnapshot()

    def describe(self) -> Iterator[Metric]:
        # The families without samples: lets the registry refuse clashing names up front.
        return _families(MetricsSnapshot())

    def collect(self) -> Iterator[Metric]:
        return _families(self.snapshot)


def _families(snap: MetricsSnapshot) -> Iterator[Metric]:
    wf, wfs, nt = ["workflow_id"], ["workflow_id", "status"], ["workflow_id", "node_type"]
    runs_ended = CounterMetricFamily(
        "flowledger_runs", "Runs that ended, by workflow and final status.", labels=wfs
    )
    runs_open = GaugeMetricFamily(
        "flowledger_runs_open", "Runs not ended yet, by workflow and status.", labels=wfs
    )
    run_success = GaugeMetricFamily(
        "flowledger_run_success_ratio", "Succeeded / ended runs, by workflow.", labels=wf
    )
    run_duration = GaugeMetricFamily(
        "flowledger_run_duration_seconds",
        "Duration quantiles of ended runs (started -> ended), by workflow.",
        labels=[*wf, "quantile"],
    )
    for w in snap.workflows:
        for status in ENDED_RUN_STATUSES:
            runs_ended.add_metric([w.workflow_id, status], w.count(status))
        for status in ("queued", "running", "waiting"):
            runs_open.add_metric([w.workflow_id, status], w.count(status))
        if w.success_rate is not None:
            run_success.add_metric([w.workflow_id], w.success_rate)
        _add_quantiles(run_duration, [w.workflow_id], w.duration_ms)
    yield from (runs_ended, runs_open, run_success, run_duration)

    nodes_ended = CounterMetricFamily(
        "flowledger_node_executions",
        "Node executions that ended, by workflow, node type and status.",
        labels=[*nt, "status"],
    )
    nodes_open = GaugeMetricFamily(
        "flowledger_node_executions_in_progress",
        "Node executions started or awaiting a retry, by workflow and node type.",
        labels=nt,
    )
    retries = CounterMetricFamily(
        "flowledger_node_retries", "Node retries scheduled, by workflow and node type.", labels=nt
    )
    node_success = GaugeMetricFamily(
        "flowledger_node_success_ratio",
        "Succeeded / (succeeded + failed) node executions, by workflow and node type.",
        labels=nt,
    )
    node_duration = GaugeMetricFamily(
        "flowledger_node_duration_seconds",
        "Duration quantiles of ended node executions (last attempt), by workflow and node type.",
        labels=[*nt, "quantile"],
    )
    for n in snap.node_types:
        key = [n.workflow_id, n.node_type]
        for status in ENDED_NODE_STATUSES:
            nodes_ended.add_metric([*key, status], n.count(status))
        nodes_open.add_metric(key, n.in_progress)
        retries.add_metric(key, n.retries)
        if n.success_rate is not None:
            node_success.add_metric(key, n.success_rate)
        _add_quantiles(node_duration, key, n.duration_ms)
    yield from (nodes_ended, nodes_open, retries, node_success, node_duration)

    yield from _service_families(snap.service)


def _add_quantiles(family: GaugeMetricFamily, labels: list[str], q: Quantiles | None) -> None:
    if q is None:
        return
    for quantile, value in zip(QUANTILES, (q.p50, q.p95, q.p99), strict=True):
        family.add_metric([*labels, str(quantile)], _seconds(value))


def _service_families(service: ServiceFigures | None) -> Iterator[Metric]:
    lag_events = GaugeMetricFamily(
        "flowledger_projection_lag_events",
        "Log events not yet applied, by projection.",
        labels=["projection"],
    )
    lag_seconds = GaugeMetricFamily(
        "flowledger_projection_lag_seconds",
        "Age of the oldest unapplied event relative to the log head, by projection.",
        labels=["projection"],
    )
    position = GaugeMetricFamily(
        "flowledger_projection_position", "Log position applied, by projection.", labels=["projection"]
    )
    head = GaugeMetricFamily("flowledger_log_head_position", "Highest committed global_position.")
    relay_active = GaugeMetricFamily(
        "flowledger_relay_active", "1 when this process's relay holds the relay lock, else 0."
    )
    relay_lag = GaugeMetricFamily(
        "flowledger_relay_lag_events", "Log head minus the position this process's relay published."
    )
    depth = GaugeMetricFamily(
        "flowledger_run_queue_depth", "Runs in the queue (all instances), by status.", labels=["status"]
    )
    in_flight = GaugeMetricFamily("flowledger_runs_in_flight", "Runs executing in this process.")
    if service is not None:
        for p in service.projections:
            lag_events.add_metric([p.name], p.lag_events)
            lag_seconds.add_metric([p.name], p.lag_seconds)
            position.add_metric([p.name], p.position)
        head.add_metric([], service.log_head)
        if service.relay_active is not None:
            relay_active.add_metric([], 1 if service.relay_active else 0)
        if service.relay_lag_events is not None:
            relay_lag.add_metric([], service.relay_lag_events)
        depth.add_metric(["queued"], service.queued)
        depth.add_metric(["running"], service.running)
        in_flight.add_metric([], service.in_flight)
    yield from (lag_events, lag_seconds, position, head, relay_active, relay_lag, depth, in_flight)


class ServiceMetrics:
    """One app's metrics: its SQL and its own Prometheus registry (process, GC and ours)."""

    def __init__(self, schema: str = "flowledger") -> None:
        # A plain class, not a dataclass: Litestar inspects dataclass dependencies field by field.
        self.queries = MetricsQueries(schema)
        self.registry = CollectorRegistry()
        self.collector = SnapshotCollector()
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    async def snapshot(self, runtime: Runtime, tenant: str) -> MetricsSnapshot:
        assert runtime.pool is not None and runtime.store is not None
        figures = await read_figures(runtime.pool, runtime.store, self.queries, tenant)
        service = await read_service(runtime, figures.projections)
        return MetricsSnapshot(figures.workflows, figures.node_types, service)

    def render(self, snapshot: MetricsSnapshot) -> bytes:
        """The Prometheus text format (0.0.4) of ``snapshot`` and the process collectors.

        Synchronous from setting the snapshot to rendering it, so concurrent scrapes on the
        event loop never see each other's snapshot.
        """
        self.collector.snapshot = snapshot
        try:
            return generate_latest(self.registry)
        finally:
            self.collector.snapshot = MetricsSnapshot()
