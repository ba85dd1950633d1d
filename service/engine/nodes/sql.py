"""The ``sql`` node type: one statement on a PostgreSQL database named by a URL (normally a secret).

Parameters are always bound (``$1``, ``$2``... through asyncpg's extended protocol): values never
become SQL text. ``mode: query`` returns the rows as JSON objects; ``mode: execute`` returns the
row count.

An execute is recorded in the target database, in the same transaction as the statement: a row
of ``flowledger_sql_writes`` keyed by (run id, node id), holding the attempt that wrote and its
row count (the table is created on first use). When the key is already there, the statement has
already been committed for this node of this run, and the recorded row count is returned without
running it again. So a retried attempt, or a run recovered after a crash (whose interrupted node
runs again as the next attempt), never repeats a committed write, even when the commit's answer
was lost. Limits: the guarantee covers only what the statement does inside that database's
transaction (not effects like NOTIFY consumers, sequences' values, or other databases); a forked
run is another run and writes again; deleting the marker rows lets a write run again.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import ipaddress
import urllib.parse
import uuid
from typing import Annotated, Any, Literal

import asyncpg
import msgspec

from service.engine.nodes.registry import NodeContext, NodeFailure

WRITES_TABLE = "flowledger_sql_writes"

_CREATE_WRITES = f"""
CREATE TABLE IF NOT EXISTS {WRITES_TABLE} (
    run_id text NOT NULL,
    node_id text NOT NULL,
    attempt integer NOT NULL,
    rowcount bigint,
    written_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, node_id)
)"""

RETRYABLE_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")
"""Connection exceptions, transaction rollbacks (serialization, deadlock), insufficient resources,
operator intervention, system errors: the same statement may succeed later."""


class SqlConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    connection: str
    query: Annotated[str, msgspec.Meta(min_length=1)]
    params: list[Any] = []
    mode: Literal["query", "execute"] = "query"
    timeout_ms: Annotated[int, msgspec.Meta(gt=0)] = 30_000

    def __post_init__(self) -> None:
        # Never quote the value: it is a URL with a password.
        if not self.connection.startswith(("postgresql://", "postgres://")):
            raise ValueError("connection must be a postgresql:// URL (usually {$secret: NAME})")


def to_json_value(value: Any) -> Any:
    """A database value as JSON: timestamps and dates in ISO 8601, numerics as strings (exact),
    UUIDs and addresses as strings, bytes in base64, intervals in seconds, arrays as lists."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(v) for v in value]
    if isinstance(value, asyncpg.Record):
        return [to_json_value(v) for v in value.values()]
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address | ipaddress.IPv4Network):
        return str(value)
    return str(value)


def _rowcount(status: str) -> int:
    """The row count of a command status (``INSERT 0 3``, ``UPDATE 2``, ``CREATE TABLE``: 0)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _failure(exc: Exception, connection: str) -> NodeFailure:
    failure = _classify(exc)
    password = urllib.parse.urlsplit(connection).password
    if password:  # a driver message may quote parts of the URL; the whole URL is redacted upstream
        failure.message = failure.message.replace(password, "[password]")
        quoted = urllib.parse.quote(password, safe="")
        if quoted != password:
            failure.message = failure.message.replace(quoted, "[password]")
    return failure


def _classify(exc: Exception) -> NodeFailure:
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        retryable = state[:2] in RETRYABLE_SQLSTATE_CLASSES
        return NodeFailure("sql_error", f"{state} {type(exc).__name__}: {exc}".strip(), retryable=retryable)
    if isinstance(exc, asyncpg.InterfaceError):
        return NodeFailure("sql_error", f"{type(exc).__name__}: {exc}", retryable=False)
    # OSError, ConnectionError, TimeoutError: the database could not be reached in time
    return NodeFailure("sql_connection", f"{type(exc).__name__}: {exc}", retryable=True)


async def _json_codecs(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name,
            encoder=lambda v: msgspec.json.encode(v).decode(),
            decoder=msgspec.json.decode,
            schema="pg_catalog",
        )


async def _execute_once(conn: asyncpg.Connection, config: SqlConfig, ctx: NodeContext) -> int:
    # Looked up first: CREATE TABLE IF NOT EXISTS needs the right to create even when the
    # table exists (a role may be given only the table, created beforehand by its owner).
    if await conn.fetchval("SELECT to_regclass($1)", WRITES_TABLE) is None:
        try:
            await conn.execute(_CREATE_WRITES)
        except (asyncpg.UniqueViolationError, asyncpg.DuplicateTableError):
            pass  # created at the same moment by another node
    async with conn.transaction():
        # A concurrent attempt with the same key waits here until the other transaction ends.
        claimed = await conn.fetchval(
            f"INSERT INTO {WRITES_TABLE} (run_id, node_id, attempt) VALUES ($1, $2, $3) "
            "ON CONFLICT (run_id, node_id) DO NOTHING RETURNING true",
            ctx.run_id,
            ctx.node_id,
            ctx.attempt,
        )
        if not claimed:
            recorded = await conn.fetchval(
                f"SELECT rowcount FROM {WRITES_TABLE} WHERE run_id = $1 AND node_id = $2",
                ctx.run_id,
                ctx.node_id,
            )
            return int(recorded or 0)
        status = await conn.execute(config.query, *config.params)
        rowcount = _rowcount(status)
        await conn.execute(
            f"UPDATE {WRITES_TABLE} SET rowcount = $3 WHERE run_id = $1 AND node_id = $2",
            ctx.run_id,
            ctx.node_id,
            rowcount,
        )
    return rowcount


async def sql(config: SqlConfig, ctx: NodeContext) -> dict[str, Any]:
    """One statement with bound parameters on PostgreSQL; output ``{rows}`` (query) or ``{rowcount}`` (execute)."""
    seconds = config.timeout_ms / 1000
    try:
        conn = await asyncpg.connect(config.connection, timeout=seconds, command_timeout=seconds)
    except Exception as exc:
        raise _failure(exc, config.connection) from None
    try:
        await _json_codecs(conn)
        if config.mode == "execute":
            return {"rowcount": await _execute_once(conn, config, ctx)}
        records = await conn.fetch(config.query, *config.params)
        return {"rows": [{k: to_json_value(v) for k, v in record.items()} for record in records]}
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise _failure(exc, config.connection) from None
    finally:
        try:
            await conn.close(timeout=5)
        except Exception:
            conn.terminate()
