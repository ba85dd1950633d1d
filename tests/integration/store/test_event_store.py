"""Event store guarantees against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import msgspec
import pytest

from schemas.canonical import verify_chain
from schemas.codec import InvalidEvent, decode_event
from schemas.events import NodeExecuteBefore, RunQueued, RunStarted
from service.store.event_store import ConcurrencyError, EmptyAppend, EventStore, StreamMismatch


def _new_run() -> uuid.UUID:
    return uuid.uuid4()


async def test_append_and_read_back_in_seq_order(store: EventStore) -> None:
    run = _new_run()
    stored = await store.append(
        run,
        [RunQueued(workflow_version="v1", inputs={"a": 1}), RunStarted()],
        0,
        tenant="t",
        workflow_id="wf",
    )
    assert [e.seq for e in stored] == [0, 1]
    more = await store.append(
        run, [NodeExecuteBefore(node_id="n1", node_type="noop")], 2, tenant="t", workflow_id="wf"
    )
    events = await store.read_run(run)
    assert [e.seq for e in events] == [0, 1, 2]
    assert events[2] == more[0]
    assert events[:2] == stored
    assert decode_event(events[0].data) == RunQueued(workflow_version="v1", inputs={"a": 1})
    assert [e.seq for e in await store.read_run(run, after_seq=0)] == [1, 2]
    assert verify_chain(events) == []


async def test_stale_expected_seq_is_refused_and_writes_nothing(store: EventStore) -> None:
    run = _new_run()
    await store.append(run, [RunQueued(workflow_version="v1")], 0, tenant="t", workflow_id="wf")
    with pytest.raises(ConcurrencyError) as info:
        await store.append(run, [RunStarted(), RunStarted()], 0, tenant="t", workflow_id="wf")
    assert info.value.actual_seq == 1
    assert len(await store.read_run(run)) == 1


async def test_two_appenders_with_same_expected_seq_exactly_one_wins(store: EventStore) -> None:
    for _ in range(20):
        run = _new_run()
        await store.append(run, [RunQueued(workflow_version="v1")], 0, tenant="t", workflow_id="wf")
        results = await asyncio.gather(
            store.append(run, [RunStarted(worker_id="a")], 1, tenant="t", workflow_id="wf"),
            store.append(run, [RunStarted(worker_id="b")], 1, tenant="t", workflow_id="wf"),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["ConcurrencyError", "list"]
        assert len(await store.read_run(run)) == 2


async def test_two_stores_on_separate_connections_exactly_one_wins(pool: asyncpg.Pool, schema: str) -> None:
    a, b = EventStore(pool, schema=schema), EventStore(pool, schema=schema)
    await a.start()
    await b.start()
    try:
        for _ in range(20):
            run = _new_run()
            results = await asyncio.gather(
                a.append(run, [RunQueued(workflow_version="a")], 0, tenant="t", workflow_id="wf"),
                b.append(run, [RunQueued(workflow_version="b")], 0, tenant="t", workflow_id="wf"),
                return_exceptions=True,
            )
            assert sorted(type(r).__name__ for r in results) == ["ConcurrencyError", "list"]
    finally:
        await a.close()
        await b.close()


async def test_a_refused_request_does_not_fail_its_batch_mates(store: EventStore) -> None:
    runs = [_new_run() for _ in range(50)]
    results = await asyncio.gather(
        *[
            store.append(
                run, [RunQueued(workflow_version="v1")], 0 if i % 5 else 7, tenant="t", workflow_id="wf"
            )
            for i, run in enumerate(runs)
        ],
        return_exceptions=True,
    )
    for i, result in enumerate(results):
        if i % 5:
            assert isinstance(result, list)
        else:
            assert isinstance(result, ConcurrencyError)


async def test_a_request_the_database_refuses_does_not_fail_its_batch_mates(store: EventStore) -> None:
    # PostgreSQL cannot store NUL in text: that append's transaction is refused by the server.
    runs = [_new_run() for _ in range(40)]
    results = await asyncio.gather(
        *[
            store.append(
                run,
                [RunQueued(workflow_version="v1")],
                0,
                tenant="t",
                workflow_id="wf" if i % 4 else "w\x00f",
            )
            for i, run in enumerate(runs)
        ],
        return_exceptions=True,
    )
    for i, result in enumerate(results):
        if i % 4:
            assert isinstance(result, list), result
        else:
            assert isinstance(result, asyncpg.PostgresError), result


async def test_append_to_another_workflows_run_is_refused(store: EventStore) -> None:
    run = _new_run()
    await store.append(run, [RunQueued(workflow_version="v1")], 0, tenant="t", workflow_id="wf")
    with pytest.raises(StreamMismatch):
        await store.append(run, [RunStarted()], 1, tenant="t", workflow_id="other")


async def test_malformed_bodies_are_refused_before_anything_is_written(store: EventStore) -> None:
    run = _new_run()
    with pytest.raises(InvalidEvent, match="RunQueued"):
        await store.append(run, [RunQueued(workflow_version=5)], 0, tenant="t", workflow_id="wf")  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent, match="node_id"):
        await store.append(
            run,
            [RunQueued(workflow_version="v"), NodeExecuteBefore(node_id="bad id!", node_type="noop")],
            0,
            tenant="t",
            workflow_id="wf",
        )
    with pytest.raises(EmptyAppend):
        await store.append(run, [], 0, tenant="t", workflow_id="wf")
    assert await store.read_run(run) == []
    assert await store.head_position() == 0


def test_unknown_event_types_and_bad_json_get_clear_errors() -> None:
    with pytest.raises(InvalidEvent, match="unknown event type 'run_exploded'"):
        decode_event(b"{}", "run_exploded")
    with pytest.raises(InvalidEvent, match="Invalid value 'run_exploded'"):
        decode_event(b'{"type": "run_exploded"}')
    with pytest.raises(InvalidEvent, match=r"malformed|truncated|JSON"):
        decode_event(b'{"type": "run_started", ')
    with pytest.raises(InvalidEvent, match="status"):
        decode_event(b'{"node_id": "n", "node_type": "noop", "status": "maybe"}', "node_execute_after")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE {s}.events SET type = 'run_started'",
        "DELETE FROM {s}.events",
        "TRUNCATE {s}.events",
    ],
)
async def test_database_refuses_to_rewrite_history(
    store: EventStore, pool: asyncpg.Pool, schema: str, statement: str
) -> None:
    await store.append(_new_run(), [RunQueued(workflow_version="v1")], 0, tenant="t", workflow_id="wf")
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute(statement.format(s=f'"{schema}"'))
        assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".events') == 1


async def test_concurrent_appends_are_group_committed(
    store: EventStore, pool: asyncpg.Pool, schema: str
) -> None:
    """Many concurrent callers share far fewer transactions than calls (xmin = writing transaction)."""
    runs = [_new_run() for _ in range(400)]
    await asyncio.gather(
        *[store.append(r, [RunQueued(workflow_version="v1")], 0, tenant="t", workflow_id="wf") for r in runs]
    )
    async with pool.acquire() as conn:
        rows, transactions = await conn.fetchrow(
            f'SELECT count(*), count(DISTINCT xmin::text) FROM "{schema}".events'
        )
    assert rows == 400
    assert transactions <= 40, f"{transactions} transactions for 400 concurrent appends"


async def test_envelope_json_round_trips(store: EventStore) -> None:
    run = _new_run()
    stored = await store.append(
        run, [RunQueued(workflow_version="v1", inputs={"x": [1, 2.5, None]})], 0, tenant="t", workflow_id="wf"
    )
    from schemas.codec import encode, envelope_decoder, raw_envelope_decoder

    wire = encode(stored[0])
    assert raw_envelope_decoder.decode(wire) == stored[0]
    typed = envelope_decoder.decode(wire)
    assert typed.data == RunQueued(workflow_version="v1", inputs={"x": [1, 2.5, None]})
    assert msgspec.json.decode(wire)["global_position"] == stored[0].global_position
