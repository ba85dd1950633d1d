"""``flowledger bench relay``: Postgres log -> JetStream throughput vs raw pipelined nats-py.

Both sides publish the same envelopes to a fresh file-backed stream with the
same dedupe window. The relay also reads the log from Postgres, sets its
ordering headers and checkpoints; the baseline only publishes pre-encoded
payloads with ``Nats-Msg-Id``, as fast as nats-py's async publishing allows.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from nats.aio.client import Client as NATS
from rich.progress import Progress

from schemas.codec import json_encoder
from schemas.events import Event, NodeExecuteBefore, RunQueued
from service.bench.report import Comparison, print_comparisons
from service.bench.scratch import scratch_schema, scratch_stream
from service.config import Settings
from service.followers.relay import Relay
from service.infra.nats import event_subject
from service.runtime import running
from service.store.event_store import EventStore

EVENTS_PER_RUN = 10


async def _fill(store: EventStore, total: int, progress: Progress) -> None:
    task = progress.add_task("writing the log", total=total)
    body = NodeExecuteBefore(node_id="step", node_type="noop")

    async def writer(runs: int) -> None:
        for _ in range(runs):
            events: list[Event] = [RunQueued(workflow_version="bench"), *([body] * (EVENTS_PER_RUN - 1))]
            await store.append(uuid.uuid4(), events, 0, tenant="bench", workflow_id="bench-wf")
            progress.advance(task, EVENTS_PER_RUN)

    runs = total // EVENTS_PER_RUN
    await asyncio.gather(*[writer(runs // 16) for _ in range(16)], writer(runs % 16))


async def _relay_rate(
    store: EventStore, nc: NATS, total: int, progress: Progress, replicas: int = 1
) -> float:
    async with scratch_stream(nc, "RELAY", replicas) as (stream, prefix):
        relay = Relay(
            store,
            nc,
            stream=stream,
            subject_prefix=prefix,
            name=f"bench-{stream}",
            batch_size=500,
            max_batches_in_flight=6,
        )
        head = await store.head_position()
        task = progress.add_task("flowledger relay", total=total)
        start = time.perf_counter()
        runner = asyncio.create_task(relay.run())
        try:
            while relay.status.published_position < head:
                progress.update(task, completed=relay.status.published)
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - start
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        if relay.status.published != total:
            raise RuntimeError(f"relay published {relay.status.published} of {total} events")
        if relay.status.failures:
            progress.console.print(
                f"relay: {relay.status.failures} failed batches: {relay.status.last_error}"
            )
        return total / elapsed


async def _raw_rate(store: EventStore, nc: NATS, total: int, progress: Progress, replicas: int = 1) -> float:
    events = []
    position = 0
    while True:
        batch = await store.read_all(position, 10_000)
        if not batch:
            break
        events.extend(batch)
        position = batch[-1].global_position
    async with scratch_stream(nc, "RAW", replicas) as (_stream, prefix):
        payloads = [(event_subject(prefix, e), json_encoder.encode(e), str(e.event_id)) for e in events]
        js = nc.jetstream()
        task = progress.add_task("raw nats-py publish_async", total=total)
        start = time.perf_counter()
        futures = [
            await js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id})
            for subject, payload, msg_id in payloads
        ]
        acks = await asyncio.gather(*futures)
        elapsed = time.perf_counter() - start
        progress.update(task, completed=total)
        if len(acks) != total:
            raise RuntimeError(f"raw publish acked {len(acks)} of {total}")
        return total / elapsed


async def bench_relay(settings: Settings, events: int, replicas: int = 1) -> None:
    """``replicas``: of both scratch streams (3 needs a NATS cluster)."""
    events -= events % EVENTS_PER_RUN
    async with running(settings, relay=False) as runtime:
        assert runtime.pool is not None and runtime.nats is not None
        async with scratch_schema(runtime.pool) as schema:
            store = EventStore(runtime.pool, schema=schema)
            await store.start()
            try:
                with Progress(transient=True) as progress:
                    await _fill(store, events, progress)
                    raw = await _raw_rate(store, runtime.nats, events, progress, replicas)
                    ours = await _relay_rate(store, runtime.nats, events, progress, replicas)
            finally:
                await store.close()
    print_comparisons(
        "flowledger bench relay",
        [Comparison("relay to JetStream", ours, raw, "raw pipelined nats-py", "ev/s", 0.85)],
        [
            f"{events:,} events; both into fresh file-backed R{replicas} streams with a 600 s dedupe "
            "window (--replicas)."
        ],
    )
