"""Retrying with backoff, and background loops that must live as long as the service does.

Every retry loop of the service waits with one ``Backoff``: exponential growth
with jitter, a cap, and a reset once things went well for a while. Which errors
a loop treats as a failed connection rather than failed work is decided in one
place too, ``service.infra.db.is_retryable``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

JITTER = 0.2
"""By default a delay is drawn from +-20% around the exponential sequence (never above the cap),
so that processes failing together do not retry in lockstep."""


class Backoff:
    """The delays between retries: ``first_s``, then times ``multiplier`` each time, up to ``max_s``.

    Each delay is spread by ``jitter`` (a fraction: 0.2 means +-20%, drawn from
    ``rng``) and never exceeds ``max_s``. A caller resets the sequence with
    ``reset()`` after a success; with ``healthy_after_s`` it also starts again at
    ``first_s`` by itself when a failure comes at least that long after the end
    of the previous delay (the work ran well in between: a new failure, not the
    same one repeating). ``first_s == max_s`` gives a fixed delay.
    """

    def __init__(
        self,
        *,
        first_s: float,
        max_s: float,
        multiplier: float = 2.0,
        jitter: float = JITTER,
        healthy_after_s: float | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= first_s <= max_s:
            raise ValueError(f"need 0 <= first_s <= max_s (got {first_s}, {max_s})")
        if multiplier < 1:
            raise ValueError(f"multiplier must be at least 1 (got {multiplier})")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1) (got {jitter})")
        if healthy_after_s is not None and healthy_after_s <= 0:
            raise ValueError(f"healthy_after_s must be positive (got {healthy_after_s})")
        self.first_s = first_s
        self.max_s = max_s
        self.multiplier = multiplier
        self.jitter = jitter
        self.healthy_after_s = healthy_after_s
        self._rng = rng or random.Random()
        self._clock = clock
        self._base = first_s
        self._resumed_at: float | None = None

    def reset(self) -> None:
        """Start again at ``first_s``: the last attempt succeeded."""
        self._base = self.first_s
        self._resumed_at = None

    def to_cap(self) -> None:
        """Make the next delay the longest (not undone by ``healthy_after_s``): the failure is
        not one that clears up soon."""
        self._base = self.max_s
        self._resumed_at = None

    def next_delay(self) -> float:
        """The delay before the next attempt (jittered, at most ``max_s``); advances the sequence."""
        now = self._clock()
        if (
            self.healthy_after_s is not None
            and self._resumed_at is not None
            and now - self._resumed_at >= self.healthy_after_s
        ):
            self.reset()
        base = self._base
        self._base = min(base * self.multiplier, self.max_s)
        delay = min(base * (1 + self.jitter * self._rng.uniform(-1.0, 1.0)), self.max_s)
        self._resumed_at = now + delay
        return delay

    async def sleep(self) -> float:
        """Wait ``next_delay()`` seconds; returns the delay waited."""
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay


HEALTHY_RUN_S = 60.0
"""A supervised loop that ran this long before failing is restarted after the first backoff again."""


async def supervised(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    first_backoff_s: float = 1.0,
    max_backoff_s: float = 30.0,
    healthy_after_s: float = HEALTHY_RUN_S,
    rng: random.Random | None = None,
) -> None:
    """Run ``run()`` until cancelled, starting it again (with backoff) whenever it fails.

    The loops handle the failures they expect themselves; this is the net under
    them, so that one unforeseen exception (asyncpg has raised types nobody
    expected for a killed session) cannot leave a service that answers HTTP but
    never runs, relays or projects anything again. A loop that ran for
    ``healthy_after_s`` before it failed is restarted after ``first_backoff_s``
    again.
    """
    backoff = Backoff(first_s=first_backoff_s, max_s=max_backoff_s, healthy_after_s=healthy_after_s, rng=rng)
    while True:
        try:
            await run()
        except Exception:
            delay = backoff.next_delay()
            log.exception("background_task_failed", task=name, restart_in_s=round(delay, 3))
        else:
            delay = backoff.next_delay()
            log.warning("background_task_ended", task=name, restart_in_s=round(delay, 3))
        await asyncio.sleep(delay)
