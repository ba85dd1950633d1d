"""The ``sql`` node against the test PostgreSQL, in a database of its own: bound parameters,
rows as JSON, row counts, writes recorded so that a retried or recovered attempt never repeats
one, and errors classified (retryable or not) without the connection's password."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from service.engine.nodes import InvalidNodeConfig, NodeContext, NodeFailure, NodeRegistry, default_registry
from service.engine.nodes.sql import WRITES_TABLE
from tests.helpers.databases import scratch_database


@pytest.fixture(scope="module")
async def target(database_url: str) -> AsyncIterator[str]:
    async with scratch_database(database_url, prefix="sqlnode") as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                """
                CREATE TABLE orders (
                    id serial PRIMARY KEY,
                    customer text NOT NULL,
                    amount numeric(10, 2) NOT NULL,
                    placed date NOT NULL,
                    ref uuid NOT NULL DEFAULT gen_random_uuid(),
                    tags jsonb NOT NULL DEFAULT '{}',
                    at timestamptz NOT NULL DEFAULT '2026-01-02T03:04:05Z'
                );
                INSERT INTO orders (customer, amount, placed, tags) VALUES
                    ('ada', 12.50, '2026-01-01', '{"vip": true}'),
                    ('bob', 3.10, '2026-01-02', '{}'),
                    ('ada', 7.00, '2026-01-03', '{}');
                CREATE TABLE audit (note text NOT NULL);
                """
            )
        finally:
            await conn.close()
        yield url


@pytest.fixture(scope="module")
async def registry() -> AsyncIterator[NodeRegistry]:
    registry = default_registry()
    yield registry
    await registry.aclose()


def ctx(run_id: str = "run-1", node_id: str = "write", attempt: int = 1) -> NodeContext:
    return NodeContext(
        run_id=run_id, node_id=node_id, node_type="sql", attempt=attempt, document={"inputs": {}, "nodes": {}}
    )


async def run(registry: NodeRegistry, config: dict[str, Any], context: NodeContext | None = None) -> Any:
    return await registry.execute("sql", registry.parse_config("sql", config), context or ctx())


async def count(url: str, sql: str, *args: Any) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


async def test_a_query_with_parameters_returns_json_rows(registry: NodeRegistry, target: str) -> None:
    output = await run(
        registry,
        {
            "connection": target,
            "query": "SELECT customer, amount, placed, ref, tags, at, amount > $2 AS big "
            "FROM orders WHERE customer = $1 ORDER BY id",
            "params": ["ada", 10],
        },
    )
    rows = output["rows"]
    assert [(r["customer"], r["amount"], r["placed"], r["big"]) for r in rows] == [
        ("ada", "12.50", "2026-01-01", True),
        ("ada", "7.00", "2026-01-03", False),
    ]
    assert rows[0]["tags"] == {"vip": True}  # jsonb decoded
    assert len(rows[0]["ref"]) == 36  # a UUID as text
    assert rows[0]["at"] == "2026-01-02T03:04:05+00:00"


async def test_an_execute_returns_its_rowcount(registry: NodeRegistry, target: str) -> None:
    output = await run(
        registry,
        {
            "connection": target,
            "query": "UPDATE orders SET amount = amount WHERE customer = $1",
            "params": ["ada"],
            "mode": "execute",
        },
        ctx("run-rowcount"),
    )
    assert output == {"rowcount": 2}


async def test_the_same_attempt_twice_writes_once(registry: NodeRegistry, target: str) -> None:
    config = {
        "connection": target,
        "query": "INSERT INTO audit (note) VALUES ($1), ($1)",
        "params": ["twice-same-attempt"],
        "mode": "execute",
    }
    first = await run(registry, config, ctx("run-twice", "audit", 1))
    again = await run(registry, config, ctx("run-twice", "audit", 1))
    assert first == again == {"rowcount": 2}
    assert await count(target, "SELECT count(*) FROM audit WHERE note = $1", "twice-same-attempt") == 2
    marker = await count(
        target, f"SELECT attempt FROM {WRITES_TABLE} WHERE run_id = $1 AND node_id = $2", "run-twice", "audit"
    )
    assert marker == 1


async def test_a_later_attempt_of_the_same_node_does_not_repeat_a_committed_write(
    registry: NodeRegistry, target: str
) -> None:
    """A run recovered after a crash runs the interrupted node as its next attempt: the write of
    the first attempt, committed before the crash, is not done again."""
    config = {
        "connection": target,
        "query": "INSERT INTO audit (note) VALUES ($1)",
        "params": ["recovered"],
        "mode": "execute",
    }
    assert await run(registry, config, ctx("run-recovered", "audit", 1)) == {"rowcount": 1}
    assert await run(registry, config, ctx("run-recovered", "audit", 2)) == {"rowcount": 1}
    assert await count(target, "SELECT count(*) FROM audit WHERE note = $1", "recovered") == 1
    # another run (or another node) writes again
    assert await run(registry, config, ctx("run-other", "audit", 1)) == {"rowcount": 1}
    assert await count(target, "SELECT count(*) FROM audit WHERE note = $1", "recovered") == 2


async def test_concurrent_executions_of_one_attempt_write_once(registry: NodeRegistry, target: str) -> None:
    config = {
        "connection": target,
        "query": "INSERT INTO audit (note) SELECT $1 FROM pg_sleep(0.2)",
        "params": ["concurrent"],
        "mode": "execute",
    }
    results = await asyncio.gather(*(run(registry, config, ctx("run-concurrent", "a", 1)) for _ in range(4)))
    assert results == [{"rowcount": 1}] * 4
    assert await count(target, "SELECT count(*) FROM audit WHERE note = $1", "concurrent") == 1


async def test_a_failed_execute_leaves_no_marker_and_can_be_retried(
    registry: NodeRegistry, target: str
) -> None:
    bad = {
        "connection": target,
        "query": "INSERT INTO audit (note) VALUES ($1)",
        "params": [None],
        "mode": "execute",
    }
    with pytest.raises(NodeFailure) as info:
        await run(registry, bad, ctx("run-retry", "n", 1))
    assert info.value.kind == "sql_error" and not info.value.retryable  # NOT NULL violated
    assert "23502" in info.value.message
    good = {**bad, "params": ["retried"]}
    assert await run(registry, good, ctx("run-retry", "n", 2)) == {"rowcount": 1}


async def test_sql_injection_through_params_is_inert(registry: NodeRegistry, target: str) -> None:
    evil = "x'); DROP TABLE orders; --"
    output = await run(
        registry,
        {
            "connection": target,
            "query": "SELECT count(*) AS n FROM orders WHERE customer = $1",
            "params": [evil],
        },
    )
    assert output == {"rows": [{"n": 0}]}
    await run(
        registry,
        {
            "connection": target,
            "query": "INSERT INTO audit (note) VALUES ($1)",
            "params": [evil],
            "mode": "execute",
        },
        ctx("run-evil"),
    )
    assert await count(target, "SELECT count(*) FROM orders") == 3  # still there
    assert await count(target, "SELECT count(*) FROM audit WHERE note = $1", evil) == 1  # stored as text


async def test_errors_are_classified(registry: NodeRegistry, target: str) -> None:
    with pytest.raises(NodeFailure) as info:
        await run(registry, {"connection": target, "query": "SELEKT 1"})
    assert info.value.kind == "sql_error" and not info.value.retryable and "42601" in info.value.message
    with pytest.raises(NodeFailure) as info:
        await run(registry, {"connection": target, "query": "SELECT * FROM nowhere"})
    assert info.value.kind == "sql_error" and not info.value.retryable and "nowhere" in info.value.message
    with pytest.raises(NodeFailure) as info:  # a parameter of the wrong type
        await run(registry, {"connection": target, "query": "SELECT $1::int", "params": ["one"]})
    assert info.value.kind == "sql_error" and not info.value.retryable


async def test_an_unreachable_database_is_retryable_and_no_password_is_quoted(registry: NodeRegistry) -> None:
    url = "postgresql://someone:pa55-w0rd-xyz@127.0.0.1:9/db"
    with pytest.raises(NodeFailure) as info:
        await run(registry, {"connection": url, "query": "SELECT 1", "timeout_ms": 2000})
    assert info.value.kind == "sql_connection" and info.value.retryable
    assert "pa55-w0rd-xyz" not in info.value.message


async def test_a_missing_database_is_not_retryable_and_no_password_is_quoted(
    registry: NodeRegistry, target: str
) -> None:
    parts = urlsplit(target)
    netloc = f"{parts.username or 'postgres'}:s3cret-pw@{parts.hostname}:{parts.port}"
    missing = urlunsplit(parts._replace(netloc=netloc, path="/no_such_db_here"))
    with pytest.raises(NodeFailure) as info:
        await run(registry, {"connection": missing, "query": "SELECT 1"})
    assert info.value.kind == "sql_error" and not info.value.retryable
    assert "no_such_db_here" in info.value.message and "s3cret-pw" not in info.value.message


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"connection": "mysql://u:p@h/db", "query": "SELECT 1"}, "postgresql://"),
        ({"connection": "postgresql://h/db", "query": "SELECT 1", "mode": "write"}, "mode"),
        ({"connection": "postgresql://h/db", "query": "SELECT 1", "sql": "x"}, "sql"),
        ({"connection": "postgresql://h/db", "query": ""}, "query"),
    ],
)
def test_bad_configs_are_refused(config: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidNodeConfig) as info:
        default_registry().parse_config("sql", config)
    assert expected in str(info.value)
    assert "u:p@" not in str(info.value)


def test_the_connection_must_be_a_secret_in_a_workflow_spec() -> None:
    registry = default_registry()
    with pytest.raises(InvalidNodeConfig, match="connection must be"):
        registry.check_config("sql", {"connection": "postgresql://u:pw@h/db", "query": "SELECT 1"})
    assert registry.check_config("sql", {"connection": {"$secret": "DB"}, "query": "SELECT 1"}) is None


async def test_a_role_without_create_rights_uses_a_table_made_beforehand(
    registry: NodeRegistry, target: str
) -> None:
    role = f"sqlnode_writer_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(target)
    try:
        await run(  # makes flowledger_sql_writes as the owner
            registry,
            {"connection": target, "query": "SELECT 1", "mode": "execute"},
            ctx("run-owner", "setup"),
        )
        await conn.execute(
            f"CREATE ROLE {role} LOGIN; REVOKE CREATE ON SCHEMA public FROM PUBLIC;"
            f"GRANT USAGE ON SCHEMA public TO {role}; GRANT INSERT ON audit TO {role};"
            f"GRANT SELECT, INSERT, UPDATE ON {WRITES_TABLE} TO {role}"
        )
        parts = urlsplit(target)
        as_role = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
        config = {
            "connection": as_role,
            "query": "INSERT INTO audit (note) VALUES ($1)",
            "params": ["limited"],
            "mode": "execute",
        }
        assert await run(registry, config, ctx("run-limited", "n")) == {"rowcount": 1}
        assert await run(registry, config, ctx("run-limited", "n", 2)) == {"rowcount": 1}
        assert await count(target, "SELECT count(*) FROM audit WHERE note = $1", "limited") == 1
    finally:
        await conn.execute(f"DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}")
        await conn.close()
