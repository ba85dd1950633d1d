"""The log partitioned by ranges of global_position (migration 0011): it applies to a populated
log and keeps every row, every partition refuses UPDATE, DELETE and TRUNCATE like the parent,
(run_id, seq) and event_id stay unique, and appends that outrun the ranges
made ahead are neither lost nor reordered."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from schemas.events import NodeExecuteBefore
from service.history.audit import audit_log
from service.infra.migrations import apply_migrations
from service.store.bundle_sql import event_id_users
from service.store.event_store import ConcurrencyError, EventStore
from tests.helpers.stored_runs import TENANT, append_run, orders_history, started_store


async def set_partition_size(conn: asyncpg.Connection, schema: str, size: int) -> None:
    await conn.execute(f'UPDATE "{schema}".event_partitioning SET partition_size = $1', size)


async def partitions(conn: asyncpg.Connection, schema: str) -> list[str]:
    rows = await conn.fetch(
        f'SELECT name FROM "{schema}".event_partitions WHERE detached_at IS NULL ORDER BY lower_position'
    )
    return [r[0] for r in rows]


@pytest.fixture
async def old_schema(pool: asyncpg.Pool) -> AsyncIterator[str]:
    """A schema migrated up to 0010 only: the log as it was before partitioning."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    async with pool.acquire() as conn:
        await apply_migrations(conn, schema=name, until="0010_waiting_runs.sql")
    try:
        yield name
    finally:
        async with pool.acquire() as conn:
            await conn.execute(f'DROP SCHEMA "{name}" CASCADE')


async def test_the_migration_keeps_a_populated_log_and_continues_its_positions(
    pool: asyncpg.Pool, old_schema: str
) -> None:
    schema = old_schema
    old = EventStore(pool, schema=schema)  # not started: the old log has no partitions to make
    runs = []
    async with pool.acquire() as conn:
        for _ in range(5):
            run_id = uuid.uuid4()
            seq = 0
            for batch in orders_history():
                async with conn.transaction():
                    await old.append_txn(conn, run_id, batch, seq, tenant="acme", workflow_id="orders")
                seq += len(batch)
            runs.append(run_id)
        before = await conn.fetch(f'SELECT * FROM "{schema}".events ORDER BY global_position')
        assert len(before) == 5 * 9
        assert (
            await conn.fetchval(
                f"SELECT relkind::text FROM pg_class WHERE oid = '\"{schema}\".events'::regclass"
            )
            == "r"
        )

        assert await apply_migrations(conn, schema=schema) == ["0011_partitioned_events.sql"]

        assert (
            await conn.fetchval(
                f"SELECT relkind::text FROM pg_class WHERE oid = '\"{schema}\".events'::regclass"
            )
            == "p"
        )
        after = await conn.fetch(f'SELECT * FROM "{schema}".events ORDER BY global_position')
        assert [tuple(r) for r in after] == [tuple(r) for r in before]
        assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".events_initial') == len(before)
        # The old rows are a partition now: refused there as on the parent.
        for statement in (
            f'UPDATE "{schema}".events_initial SET type = type',
            f'DELETE FROM "{schema}".events_initial',
            f'TRUNCATE "{schema}".events_initial',
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(statement)

    async with started_store(pool, schema) as store:
        next_run = await append_run(store, orders_history())
        events = await store.read_run(next_run)
        assert events[0].global_position == before[-1]["global_position"] + 1
        async with pool.acquire() as conn:
            report = await audit_log(store, conn)
    assert report.clean, report.problems
    assert report.runs == 6


async def test_every_partition_and_the_parent_refuse_update_delete_truncate(
    pool: asyncpg.Pool, schema: str
) -> None:
    async with pool.acquire() as conn:
        await set_partition_size(conn, schema, 10)
    async with started_store(pool, schema) as store:
        for _ in range(4):
            await append_run(store, orders_history())
    async with pool.acquire() as conn:
        names = await partitions(conn, schema)
        holding = [name for name in names if await conn.fetchval(f'SELECT count(*) FROM "{schema}"."{name}"')]
        assert len(holding) >= 3, names
        tables = ["events", *names]
        for table in tables:
            statements = [f'TRUNCATE "{schema}"."{table}"']
            if table == "events" or table in holding:  # row triggers fire only on rows
                statements += [
                    f'UPDATE "{schema}"."{table}" SET type = type',
                    f'DELETE FROM "{schema}"."{table}"',
                ]
            for statement in statements:
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                    await conn.execute(statement)
        assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".events') == 4 * 9


async def test_duplicate_run_seq_or_event_id_is_refused(pool: asyncpg.Pool, schema: str) -> None:
    """Within a partition the database refuses it (the partition's own unique constraints);
    across partitions the writers do: the store's seq comes from the run's head in every
    partition, and an import looks event ids up in the whole log."""
    async with pool.acquire() as conn:
        await set_partition_size(conn, schema, 10)
    async with started_store(pool, schema) as store:
        first = await append_run(store, orders_history())
        for _ in range(3):
            await append_run(store, orders_history())
        async with pool.acquire() as conn:
            (origin,) = await conn.fetch(
                f'SELECT tableoid::regclass::text FROM "{schema}".events WHERE run_id = $1 ORDER BY seq LIMIT 1',
                first,
            )
            assert origin[0] != (await partitions(conn, schema))[-1]  # the run starts in an older partition
        # Appending seq 0 again: refused by the store, whose head of the run spans partitions.
        with pytest.raises(ConcurrencyError):
            await store.append(first, orders_history()[0], 0, tenant=TENANT, workflow_id="orders")
        events = await store.read_run(first)
    columns = "run_id, seq, type, tenant, workflow_id, recorded_at, schema_version, prev_hash, hash, data"
    async with pool.acquire() as conn:
        # The same (run_id, seq) or event_id within one partition: refused by the database.
        (last,) = await conn.fetch(
            f'SELECT run_id, seq, event_id FROM "{schema}".events ORDER BY global_position DESC LIMIT 1'
        )
        with pytest.raises(asyncpg.UniqueViolationError, match="run_seq_key"):
            await conn.execute(
                f'INSERT INTO "{schema}".events (event_id, {columns}) '
                f'SELECT gen_random_uuid(), {columns} FROM "{schema}".events WHERE run_id = $1 AND seq = $2',
                last[0],
                last[1],
            )
        with pytest.raises(asyncpg.UniqueViolationError, match="event_id_key"):
            await conn.execute(
                f'INSERT INTO "{schema}".events (event_id, {columns}) '
                f"SELECT event_id, gen_random_uuid(), 0, type, tenant, workflow_id, recorded_at, "
                f'schema_version, NULL, hash, data FROM "{schema}".events WHERE event_id = $1',
                last[2],
            )
        # An event id of the older partition, imported in another run: refused by the import.
        clashes = await event_id_users(conn, [events[0].event_id], schema=schema)
        assert clashes == [(events[0].event_id, first, 0)]
        assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".events') == 4 * 9


async def test_appends_that_outrun_the_ranges_made_ahead_are_all_read_in_order(
    pool: asyncpg.Pool, schema: str
) -> None:
    """Partitions of 7 positions and batches of up to 30 events: appends keep landing past
    the ranges made ahead, are retried after the ranges are made, and a tailing reader
    sees each committed event once, in order."""
    async with pool.acquire() as conn:
        await set_partition_size(conn, schema, 7)
    store = EventStore(pool, schema=schema, max_batch_events=30)
    await store.start()
    try:

        async def writer(n: int) -> list[int]:
            run_id = uuid.uuid4()
            positions = []
            for seq in range(0, n * 3, 3):
                events = [NodeExecuteBefore(node_id=f"n{seq + i}", node_type="noop") for i in range(3)]
                recorded = await store.append(run_id, events, seq, tenant="acme", workflow_id="wf")
                positions += [e.global_position for e in recorded]
            return positions

        written = await asyncio.gather(*(writer(10) for _ in range(12)))
        read = await store.read_all(0, limit=10_000)
    finally:
        await store.close()
    assert [e.global_position for e in read] == sorted(p for ps in written for p in ps)
    async with pool.acquire() as conn:
        assert len(await partitions(conn, schema)) > 360 // 7
