"""The relay against real PostgreSQL and real NATS JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from pathlib import Path

import asyncpg
import msgspec
from nats.aio.client import Client as NATS

from schemas.events import NodeExecuteAfterData, RunQueued, RunStarted
from service.bench.scratch import scratch_schema
from service.followers.relay import Relay
from service.infra.embedded import EmbeddedNats
from service.infra.nats import connect_nats, ensure_stream, stream_config
from service.store.event_store import EventStore
from tests.helpers.relay import (
    assert_exactly_once_in_order,
    stream_messages,
    wait_relayed,
    write_runs,
)
from tests.helpers.servers import StreamTarget


def _relay(store: EventStore, nc: NATS, stream: StreamTarget, **kw: object) -> Relay:
    return Relay(store, nc, stream=stream.name, subject_prefix=stream.subject_prefix, **kw)  # type: ignore[arg-type]


async def _stop(*tasks: asyncio.Task[None]) -> None:
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t


async def test_every_event_arrives_once_in_order_with_headers(
    store: EventStore, nats_client: NATS, stream: StreamTarget
) -> None:
    before = await write_runs(store, runs=10, events_per_run=5)
    relay = _relay(store, nats_client, stream)
    task = asyncio.create_task(relay.run())
    try:
        after = await write_runs(store, runs=10, events_per_run=5)  # while it is running
        await wait_relayed([relay], store)
    finally:
        await _stop(task)
    messages = await stream_messages(nats_client, stream.name)
    assert_exactly_once_in_order(messages, before + after, stream.subject_prefix)


async def test_restarted_relay_resumes_without_duplicates(
    store: EventStore, nats_client: NATS, stream: StreamTarget, pool: asyncpg.Pool, schema: str
) -> None:
    events = await write_runs(store, runs=5, events_per_run=4)
    relay = _relay(store, nats_client, stream)
    task = asyncio.create_task(relay.run())
    await wait_relayed([relay], store)
    await _stop(task)
    # Simulate a crash between publishing and checkpointing: the checkpoint lags the stream.
    async with pool.acquire() as conn:
        await conn.execute(f'UPDATE "{schema}".checkpoints SET position = 3 WHERE name = $1', relay.name)
    events += await write_runs(store, runs=5, events_per_run=4)
    relay2 = _relay(store, nats_client, stream)
    task2 = asyncio.create_task(relay2.run())
    try:
        await wait_relayed([relay2], store)
    finally:
        await _stop(task2)
    assert_exactly_once_in_order(
        await stream_messages(nats_client, stream.name), events, stream.subject_prefix
    )

    # A relay started on a log it already relayed reports no lag before anything new is written.
    relay3 = _relay(store, nats_client, stream)
    task3 = asyncio.create_task(relay3.run())
    try:
        async with asyncio.timeout(10):
            while not relay3.status.active or relay3.status.published_position == 0:
                await asyncio.sleep(0.02)
        assert relay3.status.published_position == events[-1].global_position
        assert relay3.status.stream_sequence == len(events)
    finally:
        await _stop(task3)


async def test_two_relays_at_once_publish_nothing_twice(
    store: EventStore, nats_client: NATS, stream: StreamTarget
) -> None:
    relays = [_relay(store, nats_client, stream, standby_poll_s=0.05) for _ in range(2)]
    tasks = [asyncio.create_task(r.run()) for r in relays]
    try:
        events = await write_runs(store, runs=20, events_per_run=5)
        await wait_relayed(relays, store)
        assert sum(r.status.active for r in relays) == 1
        # Kill the active one: the standby takes over and continues where it stopped.
        active = next(i for i, r in enumerate(relays) if r.status.active)
        await _stop(tasks[active])
        events += await write_runs(store, runs=20, events_per_run=5)
        standby = relays[1 - active]
        await wait_relayed([standby], store)
        assert standby.status.active
    finally:
        await _stop(*[t for t in tasks if not t.done()])
    assert_exactly_once_in_order(
        await stream_messages(nats_client, stream.name), events, stream.subject_prefix
    )


async def test_dropped_postgres_connection_loses_and_duplicates_nothing(
    store: EventStore, nats_client: NATS, stream: StreamTarget, pool: asyncpg.Pool
) -> None:
    relay = _relay(store, nats_client, stream, batch_size=50)
    task = asyncio.create_task(relay.run())
    events = []
    try:
        for _ in range(5):
            events += await write_runs(store, runs=20, events_per_run=5)
            async with pool.acquire() as conn:  # terminate the relay's own connection
                if relay.status.backend_pid:
                    await conn.execute("SELECT pg_terminate_backend($1)", relay.status.backend_pid)
            await asyncio.sleep(0.05)
        await wait_relayed([relay], store)
    finally:
        await _stop(task)
    assert relay.status.failures >= 1
    assert_exactly_once_in_order(
        await stream_messages(nats_client, stream.name), events, stream.subject_prefix
    )


async def test_nats_restart_mid_stream_leaves_each_event_exactly_once(
    store: EventStore, tmp_path: Path
) -> None:
    """Stop the (embedded) nats-server process while the relay publishes, start it again."""
    server = EmbeddedNats(tmp_path / "home")
    url = await asyncio.to_thread(server.start)
    nc = await connect_nats(url, name="relay-under-test")
    target = StreamTarget(name="FLOWLEDGER", subject_prefix="flowledger.events")
    await ensure_stream(nc.jetstream(), stream_config(target.name, target.subject_prefix))
    relay = _relay(store, nc, target, batch_size=200, ack_timeout_s=1.0)
    task = asyncio.create_task(relay.run())
    events = []
    try:
        events += await write_runs(store, runs=50, events_per_run=10)
        while relay.status.published == 0:  # stop it mid-stream, not before the first publish
            await asyncio.sleep(0.005)
        writing = asyncio.create_task(write_runs(store, runs=100, events_per_run=10))
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(1.0)
        server = EmbeddedNats(tmp_path / "home")
        assert await asyncio.to_thread(server.start) == url
        events += await writing
        await wait_relayed([relay], store, timeout=60)
        assert relay.status.failures >= 1, "the restart should have interrupted publishing"
        await _stop(task)
        assert_exactly_once_in_order(await stream_messages(nc, target.name), events, target.subject_prefix)
    finally:
        await _stop(task)
        await nc.close()
        await asyncio.to_thread(server.stop)


async def test_a_relay_refuses_a_stream_that_another_log_writes(
    store: EventStore, nats_client: NATS, stream: StreamTarget, pool: asyncpg.Pool
) -> None:
    """Two logs (here: two schemas) misconfigured onto one stream: the second relay stops, loudly."""
    relay = _relay(store, nats_client, stream)
    task = asyncio.create_task(relay.run())
    events = await write_runs(store, runs=3, events_per_run=3)
    await wait_relayed([relay], store)
    await _stop(task)

    async with scratch_schema(pool, prefix="t_other") as other_schema:
        other = EventStore(pool, schema=other_schema)
        await other.start()
        try:
            await write_runs(other, runs=2, events_per_run=2)
            intruder = _relay(other, nats_client, stream)
            task = asyncio.create_task(intruder.run())
            for _ in range(200):
                if intruder.status.last_error:
                    break
                await asyncio.sleep(0.02)
            await _stop(task)
            assert "another Flowledger log" in (intruder.status.last_error or "")
            assert intruder.status.published == 0
        finally:
            await other.close()
    assert_exactly_once_in_order(
        await stream_messages(nats_client, stream.name), events, stream.subject_prefix
    )


async def test_an_event_larger_than_a_nats_message_is_relayed_trimmed(
    store: EventStore, nats_client: NATS, stream: StreamTarget
) -> None:
    run = uuid.uuid4()
    big = "x" * (nats_client.max_payload + 10)
    stored = await store.append(
        run,
        [RunQueued(workflow_version="v"), NodeExecuteAfterData(node_id="n", output=big), RunStarted()],
        0,
        tenant="acme",
        workflow_id="wf-1",
    )
    relay = _relay(store, nats_client, stream)
    task = asyncio.create_task(relay.run())
    try:
        await wait_relayed([relay], store)
    finally:
        await _stop(task)
    messages = await stream_messages(nats_client, stream.name)
    assert len(messages) == 3
    _, headers, data = messages[1]
    assert headers["Flowledger-Trimmed"] == "true" and headers["Flowledger-Seq"] == "1"
    envelope = msgspec.json.decode(data)
    assert envelope["hash"] == stored[1].hash and envelope["seq"] == 1
    assert envelope["data"]["trimmed"] is True and envelope["data"]["size_bytes"] == len(
        bytes(stored[1].data)
    )
    assert envelope["data"]["sha256"] == hashlib.sha256(bytes(stored[1].data)).hexdigest()
    assert "Flowledger-Trimmed" not in messages[0][1] and "Flowledger-Trimmed" not in messages[2][1]
