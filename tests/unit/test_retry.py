"""``Backoff``: the delays of every retry loop; ``supervised`` restarts a failing loop with it.

Jitter comes from a seeded ``random.Random`` and time from a fake clock, so
nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest

from service.infra.db import CONNECTION_FAILURES, is_retryable
from service.retry import Backoff, supervised


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _delays(backoff: Backoff, n: int) -> list[float]:
    return [backoff.next_delay() for _ in range(n)]


def test_without_jitter_the_delay_doubles_up_to_the_cap() -> None:
    backoff = Backoff(first_s=0.1, max_s=1.0, jitter=0)
    assert _delays(backoff, 7) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_the_multiplier_is_an_argument() -> None:
    backoff = Backoff(first_s=1.0, max_s=100.0, multiplier=3.0, jitter=0)
    assert _delays(backoff, 5) == pytest.approx([1.0, 3.0, 9.0, 27.0, 81.0])


def test_first_equal_to_max_is_a_fixed_delay() -> None:
    assert _delays(Backoff(first_s=1.0, max_s=1.0, jitter=0), 3) == [1.0, 1.0, 1.0]


def test_jitter_stays_within_its_fraction_and_never_passes_the_cap() -> None:
    backoff = Backoff(first_s=0.1, max_s=5.0, jitter=0.2, rng=random.Random(7))
    base = 0.1
    for _ in range(200):
        delay = backoff.next_delay()
        assert base * 0.8 <= delay <= min(base * 1.2, 5.0)
        base = min(base * 2, 5.0)
    fixed = Backoff(first_s=1.0, max_s=1.0, jitter=0.2, rng=random.Random(7))
    assert all(0.8 <= d <= 1.0 for d in _delays(fixed, 200))


def test_jitter_is_deterministic_for_a_seeded_rng_and_does_spread() -> None:
    first = _delays(Backoff(first_s=1.0, max_s=1000.0, rng=random.Random(42)), 8)
    again = _delays(Backoff(first_s=1.0, max_s=1000.0, rng=random.Random(42)), 8)
    assert first == again
    assert first != pytest.approx([2.0**i for i in range(8)])


def test_reset_starts_the_sequence_again() -> None:
    backoff = Backoff(first_s=0.1, max_s=5.0, jitter=0)
    _delays(backoff, 4)
    backoff.reset()
    assert _delays(backoff, 2) == pytest.approx([0.1, 0.2])


def test_a_failure_after_a_healthy_period_starts_from_the_first_delay() -> None:
    clock = FakeClock()
    backoff = Backoff(first_s=1.0, max_s=30.0, jitter=0, healthy_after_s=60.0, clock=clock)
    assert backoff.next_delay() == 1.0
    clock.now += 1.0 + 5.0  # the delay, then 5 s of running: the same trouble
    assert backoff.next_delay() == 2.0
    clock.now += 2.0 + 59.0  # just short of healthy
    assert backoff.next_delay() == 4.0
    clock.now += 4.0 + 60.0  # ran a healthy minute after the delay ended
    assert backoff.next_delay() == 1.0
    clock.now += 1.0
    assert backoff.next_delay() == 2.0


def test_without_healthy_after_s_time_alone_never_resets() -> None:
    clock = FakeClock()
    backoff = Backoff(first_s=1.0, max_s=30.0, jitter=0, clock=clock)
    backoff.next_delay()
    clock.now += 3600.0
    assert backoff.next_delay() == 2.0


def test_to_cap_makes_the_next_delay_the_longest_even_after_a_healthy_period() -> None:
    clock = FakeClock()
    backoff = Backoff(first_s=0.1, max_s=5.0, jitter=0, healthy_after_s=60.0, clock=clock)
    backoff.next_delay()
    clock.now += 3600.0
    backoff.to_cap()
    assert _delays(backoff, 2) == [5.0, 5.0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"first_s": 2.0, "max_s": 1.0},
        {"first_s": -1.0, "max_s": 1.0},
        {"first_s": 0.1, "max_s": 1.0, "multiplier": 0.5},
        {"first_s": 0.1, "max_s": 1.0, "jitter": 1.0},
        {"first_s": 0.1, "max_s": 1.0, "jitter": -0.1},
        {"first_s": 0.1, "max_s": 1.0, "healthy_after_s": 0},
    ],
)
def test_nonsensical_arguments_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


async def test_sleep_waits_the_next_delay_and_returns_it() -> None:
    backoff = Backoff(first_s=0.001, max_s=0.01, jitter=0)
    assert await backoff.sleep() == 0.001
    assert await backoff.sleep() == 0.002


def test_only_connection_failures_are_retryable() -> None:
    assert all(is_retryable(kind.__new__(kind)) for kind in CONNECTION_FAILURES)
    assert is_retryable(ConnectionResetError())  # an OSError
    assert not is_retryable(ValueError("bad input"))
    assert not is_retryable(KeyError("node"))


async def test_supervised_restarts_a_loop_that_fails_or_ends_until_cancelled() -> None:
    starts = 0
    running = asyncio.Event()

    async def loop() -> None:
        nonlocal starts
        starts += 1
        if starts in (1, 3):
            raise RuntimeError("an error nobody expected")
        if starts == 2:
            return  # ending is restarted too: the loop must live as long as the service
        running.set()
        await asyncio.Event().wait()  # runs until cancelled

    task = asyncio.create_task(
        supervised("test", loop, first_backoff_s=0.001, max_backoff_s=0.004, rng=random.Random(1))
    )
    async with asyncio.timeout(5):
        await running.wait()
    assert starts == 4 and not task.done()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled() and starts == 4
