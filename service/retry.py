"""Background loops that must live as long as the service does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

HEALTHY_RUN_S = 60.0
"""A loop that ran this long before failing is restarted after the first backoff again."""


async def supervised(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    first_backoff_s: float = 1.0,
    max_backoff_s: float = 30.0,
) -> None:
    """Run ``run()`` until cancelled, starting it again (with backoff) whenever it fails.

    The loops handle the failures they expect themselves; this is the net under
    them, so that one unforeseen exception (asyncpg has raised types nobody
    expected for a killed session) cannot leave a service that answers HTTP but
    never runs, relays or projects anything again.
    """
    backoff = first_backoff_s
    while True:
        started = time.monotonic()
        try:
            await run()
            log.warning("background_task_ended", task=name, restart_in_s=backoff)
        except Exception:
            log.exception("background_task_failed", task=name, restart_in_s=backoff)
        if time.monotonic() - started > HEALTHY_RUN_S:
            backoff = first_backoff_s  # it ran well for a while: this is a new failure, not a loop
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff_s)
