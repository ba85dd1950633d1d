"""A PostgreSQL LISTEN that outlives its connection.

A dropped session (server restart, ``pg_terminate_backend``, network) silently
ends a LISTEN: without this, a worker would miss cancel requests and new-run
wake-ups for good and fall back to polling. ``listen`` holds a dedicated pooled
connection, notices its loss, and listens again on a new one (after a fixed
``retry_s``, jittered); ``on_restored`` then runs, since notifications sent
meanwhile were lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

from service.infra.db import drop, is_usable
from service.retry import Backoff
from service.waiting import wait_set

log = structlog.get_logger(__name__)

Notify = Callable[[Any, int, str, Any], None]


async def listen(
    pool: asyncpg.Pool,
    channels: dict[str, Notify],
    *,
    on_restored: Callable[[], None] | None = None,
    retry_s: float = 1.0,
    check_s: float = 5.0,
) -> None:
    """LISTEN on each channel (calling its callback per notification) until cancelled.

    Any error (asyncpg raises several unrelated types for a dead session) means: wait about
    ``retry_s`` (never longer) and listen again on a new connection.
    """
    backoff = Backoff(first_s=retry_s, max_s=retry_s)
    lost_before = False
    while True:
        try:
            conn = await pool.acquire()
        except Exception as exc:
            delay = backoff.next_delay()
            log.warning(
                "listen_connect_failed",
                channels=sorted(channels),
                error=f"{type(exc).__name__}: {exc}",
                retry_in_s=round(delay, 3),
            )
            await asyncio.sleep(delay)
            continue
        closed = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _conn, closed=closed: closed.set())
            for channel, callback in channels.items():
                await conn.add_listener(channel, callback)
            if lost_before:
                log.info("listen_restored", channels=sorted(channels))
                if on_restored is not None:
                    on_restored()
            # The termination callback is the signal; the periodic check is a safety net.
            while is_usable(conn):
                await wait_set(closed, check_s)
        except Exception as exc:
            log.warning("listen_failed", channels=sorted(channels), error=f"{type(exc).__name__}: {exc}")
        finally:
            drop(conn)  # ends the LISTEN now (also on cancellation); the pool replaces it
            with contextlib.suppress(Exception):
                await pool.release(conn)
        lost_before = True
        delay = backoff.next_delay()
        log.warning("listen_lost", channels=sorted(channels), retry_in_s=round(delay, 3))
        await asyncio.sleep(delay)
