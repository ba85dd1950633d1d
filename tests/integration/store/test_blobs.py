"""The blob store: written in the append's transaction, content-addressed, append-only."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from schemas.events import RunQueued
from service.store.blobs import Blob, BlobStore, check_blobs_conn
from service.store.event_store import EventStore


async def _keys(pool: asyncpg.Pool, schema: str) -> list[str]:
    async with pool.acquire() as conn:
        return [r[0] for r in await conn.fetch(f'SELECT sha256 FROM "{schema}".blobs ORDER BY sha256')]


async def test_blobs_commit_with_their_append_and_only_then(store: EventStore, schema: str) -> None:
    pool = store.pool
    kept, lost = Blob.of(b'"kept"'), Blob.of(b'"lost"')
    await store.append(
        uuid.uuid4(), [RunQueued(workflow_version="v1")], 0, tenant="t", workflow_id="wf", blobs=[kept, kept]
    )
    assert await _keys(pool, schema) == [kept.sha256]

    async def breaks_the_transaction(conn: asyncpg.Connection) -> None:
        await conn.execute("SELECT * FROM no_such_table")

    with pytest.raises(asyncpg.UndefinedTableError):
        await store.append(
            uuid.uuid4(),
            [RunQueued(workflow_version="v1")],
            0,
            tenant="t",
            workflow_id="wf",
            with_txn=breaks_the_transaction,
            blobs=[lost],
        )
    assert await _keys(pool, schema) == [kept.sha256]  # rolled back with the events

    # The same content again (another run's identical output) is one blob, unchanged.
    await store.append(
        uuid.uuid4(), [RunQueued(workflow_version="v1")], 0, tenant="t", workflow_id="wf", blobs=[kept]
    )
    assert await _keys(pool, schema) == [kept.sha256]
    blobs = BlobStore(pool, schema=schema)
    assert await blobs.fetch([kept.sha256, lost.sha256]) == {kept.sha256: b'"kept"'}
    assert await blobs.load({kept.sha256: kept.size_bytes}) == {kept.sha256: "kept"}
    async with pool.acquire() as conn:
        (check,) = (await check_blobs_conn(conn, [kept.sha256], schema=schema)).values()
        assert check.intact and check.size_bytes == kept.size_bytes


async def test_the_database_refuses_to_change_or_remove_a_blob(store: EventStore, schema: str) -> None:
    blob = Blob.of(b"[1,2,3]")
    await store.append(
        uuid.uuid4(), [RunQueued(workflow_version="v1")], 0, tenant="t", workflow_id="wf", blobs=[blob]
    )
    async with store.pool.acquire() as conn:
        for statement in (
            f'UPDATE "{schema}".blobs SET data = $1::bytea',
            f'DELETE FROM "{schema}".blobs WHERE $1::bytea IS NOT NULL',
            f'TRUNCATE "{schema}".blobs',
        ):
            args = () if statement.startswith("TRUNCATE") else (b"[]",)
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(statement, *args)
        with pytest.raises(asyncpg.CheckViolationError):  # a key that is not a SHA-256 hex digest
            await conn.execute(
                f'INSERT INTO "{schema}".blobs (sha256, size_bytes, data) VALUES ($1, 1, $2)', "nope", b"1"
            )
    assert await _keys(store.pool, schema) == [blob.sha256]
