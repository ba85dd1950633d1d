"""``flowledger bench load``, the pure part: the offered rates, one step's figures, and where
the load saturates the service (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass

from service.bench.runs import percentile

ACHIEVED_FLOOR = 0.9
"""A step is saturated when fewer than this share of the offered runs/s complete..."""
P99_BOUND_MS = 2000.0
"""...or when its p99 run latency (run_queued -> run_finished) exceeds this (the default)."""


def parse_rates(text: str) -> tuple[float, ...]:
    """``"50,100,200"`` -> (50.0, 100.0, 200.0): each a positive number of runs/s."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError("--rates needs at least one rate (runs/s), e.g. 50,100,200")
    rates = []
    for part in parts:
        try:
            rate = float(part)
        except ValueError:
            raise ValueError(f"--rates: {part!r} is not a number of runs/s") from None
        if not rate > 0 or rate == float("inf"):
            raise ValueError(f"--rates: every rate must be a positive number of runs/s, not {part}")
        rates.append(rate)
    return tuple(rates)


@dataclass(frozen=True)
class StepResult:
    """One step: ``offered`` runs/s for ``seconds``, and what the service did meanwhile."""

    offered: float
    seconds: float
    issued: int
    """Runs the generator started in the step (fewer than offered x seconds when it fell behind)."""
    finished: int
    """Runs that finished (run_finished recorded) within the step."""
    events: int
    """Events appended to the log within the step."""
    latencies_ms: tuple[float, ...]
    """run_queued -> run_finished of the runs that finished within the step."""
    backlog: int
    """Runs started but not finished at the step's end."""
    service_cpu_s: float | None = None
    pg_cpu_s: float | None = None
    service_wait_s: float | None = None
    """Time the service's threads waited, runnable, for a CPU (a busy shared machine)."""

    @property
    def issued_rate(self) -> float:
        return self.issued / self.seconds

    @property
    def achieved(self) -> float:
        return self.finished / self.seconds

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    @property
    def p50_ms(self) -> float | None:
        return percentile(list(self.latencies_ms), 50) if self.latencies_ms else None

    @property
    def p99_ms(self) -> float | None:
        return percentile(list(self.latencies_ms), 99) if self.latencies_ms else None

    @property
    def service_cpu_pct(self) -> float | None:
        """Service CPU in % of one core (200 % = two cores busy)."""
        return None if self.service_cpu_s is None else 100 * self.service_cpu_s / self.seconds

    @property
    def service_wait_pct(self) -> float | None:
        return None if self.service_wait_s is None else 100 * self.service_wait_s / self.seconds

    @property
    def pg_cpu_pct(self) -> float | None:
        return None if self.pg_cpu_s is None else 100 * self.pg_cpu_s / self.seconds

    @property
    def pg_cpu_ms_per_1k_events(self) -> float | None:
        if self.pg_cpu_s is None or not self.events:
            return None
        return 1000 * self.pg_cpu_s / self.events * 1000


def is_saturated(step: StepResult, p99_bound_ms: float = P99_BOUND_MS) -> bool:
    """Completions fell below 90 % of the offered rate, or the p99 latency passed the bound."""
    if step.achieved < ACHIEVED_FLOOR * step.offered:
        return True
    p99 = step.p99_ms
    return p99 is not None and p99 > p99_bound_ms


def saturation_point(steps: list[StepResult], p99_bound_ms: float = P99_BOUND_MS) -> StepResult | None:
    """The first saturated step, or None when every step kept up."""
    return next((step for step in steps if is_saturated(step, p99_bound_ms)), None)
