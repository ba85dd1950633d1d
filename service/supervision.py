"""Background loops that must live as long as the service does."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


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
        try:
            await run()
            log.warning("background_task_ended", task=name, restart_in_s=backoff)
        except Exception:
            log.exception("background_task_failed", task=name, restart_in_s=backoff)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff_s)
