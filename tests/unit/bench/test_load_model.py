"""The pure part of ``bench load``: the rates it accepts and where it calls the load saturated."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.bench.load_model import ACHIEVED_FLOOR, StepResult, is_saturated, parse_rates, saturation_point


def step(
    offered: float, finished: int, latencies: tuple[float, ...] = (100.0,), seconds: float = 10.0
) -> StepResult:
    return StepResult(
        offered=offered,
        seconds=seconds,
        issued=int(offered * seconds),
        finished=finished,
        events=finished * 18,
        latencies_ms=latencies,
        backlog=0,
    )


def test_rates_are_parsed_in_order() -> None:
    assert parse_rates("50, 100,200.5") == (50.0, 100.0, 200.5)
    assert parse_rates("7") == (7.0,)


@pytest.mark.parametrize("text", ["", " , ", "0", "5,0", "-1", "ten", "nan", "inf", "5,,x"])
def test_rates_that_are_not_positive_numbers_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--rates"):
        parse_rates(text)


@given(st.lists(st.floats(min_value=0.001, max_value=1e6, allow_nan=False), min_size=1, max_size=10))
def test_any_positive_rates_round_trip(rates: list[float]) -> None:
    assert parse_rates(",".join(repr(r) for r in rates)) == tuple(rates)


def test_a_step_is_saturated_below_90_percent_of_the_offered_rate() -> None:
    assert not is_saturated(step(100, 900))  # 90 runs/s of 100: exactly the floor
    assert is_saturated(step(100, 899))
    assert ACHIEVED_FLOOR == 0.9


def test_a_step_is_saturated_when_p99_passes_the_bound() -> None:
    slow = tuple([100.0] * 98 + [2500.0] * 2)  # p99 (nearest rank) = 2,500 ms
    assert is_saturated(step(10, 100, slow))
    assert not is_saturated(step(10, 100, slow), p99_bound_ms=3000)
    assert step(10, 100, slow).p99_ms == 2500.0


def test_a_step_where_nothing_finished_is_saturated_and_has_no_latency() -> None:
    empty = step(10, 0, ())
    assert is_saturated(empty) and empty.p50_ms is None and empty.p99_ms is None
    assert empty.pg_cpu_ms_per_1k_events is None and empty.service_cpu_pct is None


def test_the_saturation_point_is_the_first_saturated_step() -> None:
    steps = [step(10, 100), step(20, 200), step(40, 250), step(80, 300)]
    assert saturation_point(steps) is steps[2]
    assert saturation_point(steps[:2]) is None


def test_cpu_figures_per_step() -> None:
    s = StepResult(10, 10.0, 100, 100, 2000, (1.0,), 0, service_cpu_s=5.0, pg_cpu_s=0.5, service_wait_s=2.0)
    assert s.service_cpu_pct == 50.0 and s.pg_cpu_pct == 5.0 and s.service_wait_pct == 20.0
    assert s.pg_cpu_ms_per_1k_events == pytest.approx(250.0)  # 500 ms of CPU for 2,000 events
    assert s.achieved == 10.0 and s.events_per_s == 200.0 and s.issued_rate == 10.0
