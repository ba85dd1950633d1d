"""PostgreSQL connections: pool creation with our codecs and one clear error line, and which
errors are a failed connection (``is_retryable``)."""

from __future__ import annotations

import socket
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from service.urls import mask_url

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
"""A connection of our own or one borrowed from a pool: every ``*_txn``/``conn`` helper takes either."""


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL could not be reached; the message names the (masked) URL."""


async def init_connection(conn: asyncpg.Connection) -> None:
    """Per-connection set-up: ``json`` travels as raw bytes, never re-encoded.

    The event log stores the exact bytes that were hashed, so the driver must
    neither parse nor re-serialize them.
    """
    await conn.set_type_codec("json", encoder=bytes, decoder=bytes, schema="pg_catalog", format="binary")


async def create_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 20,
    timeout: float = 10.0,
    server_settings: dict[str, str] | None = None,
) -> asyncpg.Pool:
    """A pool whose connections are initialised by ``init_connection`` (and start with
    ``server_settings``, e.g. ``{"work_mem": "64MB"}``).

    Raises ``DatabaseUnavailable`` with one human-readable line on failure.
    """
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=init_connection,
            timeout=timeout,
            command_timeout=None,
            server_settings=server_settings,
        )
    except (TimeoutError, OSError, socket.gaierror) as exc:
        reason = str(exc) or type(exc).__name__
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {mask_url(dsn)}: {reason}") from exc
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        raise DatabaseUnavailable(f"cannot use PostgreSQL at {mask_url(dsn)}: {exc}") from exc
    assert pool is not None
    return pool


async def ping(pool: asyncpg.Pool) -> None:
    """One round trip on a pooled connection; raises if PostgreSQL does not answer."""
    async with pool.acquire() as conn:
        await conn.fetchval("SELECT 1")


def is_usable(conn: Conn) -> bool:
    """Whether ``conn`` can still run queries.

    A pooled connection whose server session died is detached from its proxy by
    asyncpg, and every call on the proxy then raises ``InterfaceError`` (even
    ``is_closed()``): a caller holding a connection across failures must check
    with this, never with ``conn.is_closed()`` alone.
    """
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


def drop(conn: Conn) -> None:
    """Close ``conn`` at once (ending its session's advisory locks and LISTENs), whatever state
    it is in; a pooled connection is replaced by the pool."""
    try:
        conn.terminate()
    except asyncpg.InterfaceError:
        pass  # already detached: the session is gone


CONNECTION_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a session killed mid-operation ("cannot switch to state ...")
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # terminated, shutting down, cannot connect now
)
"""Errors that say the database connection failed, not that the work was wrong: retrying the
same work on a new connection can succeed. asyncpg raises several unrelated types for one dead
session; this is the one list of them (test with ``is_retryable``)."""


def is_retryable(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed database connection (``CONNECTION_FAILURES``), so the same work
    may succeed on a new connection, rather than a failure of the work itself.

    The background loops retry every error with backoff regardless (a loop must not die); this
    decides what a failure means beyond that, e.g. whether the worker hands an interrupted run
    back at once instead of leaving its lease to expire.
    """
    return isinstance(exc, CONNECTION_FAILURES)
