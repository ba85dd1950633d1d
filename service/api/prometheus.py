"""Prometheus at ``/metrics``: the read-model figures (``store.metrics_sql``), the service's own
gauges (lag, queue depth, in-flight runs) and the process collectors.

The registry is per app (``ServiceMetrics``), not the library's global one; its
collector renders a snapshot gathered beforehand, asynchronously, so
``collect()`` (synchronous, called by ``generate_latest``) does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector

from schemas.names import DB_SCHEMA
from service.runtime import Runtime
from service.store.metrics_sql import (
    ENDED_NODE_STATUSES,
    ENDED_RUN_STATUSES,
    QUANTILES,
    MetricsQueries,
    NodeTypeFigures,
    Quantiles,
    WorkflowFigures,
    read_figures,
)
from service.store.projection_log import ProjectorStatus


@dataclass(frozen=True, slots=True)
class ServiceFigures:
    """How far behind the log the service's readers are, and the work in hand."""

    projections: list[ProjectorStatus]
    log_head: int
    queued: int
    running: int
    in_flight: int
    """Runs executing in this process (its worker's executors)."""
    waiting: int = 0
    """Parked runs (all instances): every unfinished node waits; they hold no slot or lease."""
    relay_active: bool | None = None
    """None: no relay in this process; False: a standby (another process relays)."""
    relay_lag_events: int | None = None
    """Log head minus the position the active relay published up to."""


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    workflows: list[WorkflowFigures] = field(default_factory=list)
    node_types: list[NodeTypeFigures] = field(default_factory=list)
    service: ServiceFigures | None = None


async def read_service(runtime: Runtime, projections: list[ProjectorStatus]) -> ServiceFigures:
    """Queue depth (all instances), this process's in-flight runs and its relay's lag, beside
    the ``projections`` lag (read from the checkpoints, so it too covers every instance)."""
    assert runtime.store is not None
    queued, running, waiting = await runtime.queue.depth()
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
        waiting=waiting,
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
        depth.add_metric(["waiting"], service.waiting)
        in_flight.add_metric([], service.in_flight)
    yield from (lag_events, lag_seconds, position, head, relay_active, relay_lag, depth, in_flight)


class ServiceMetrics:
    """One app's metrics: its SQL and its own Prometheus registry (process, GC and ours)."""

    def __init__(self, schema: str = DB_SCHEMA) -> None:
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
