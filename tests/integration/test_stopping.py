"""Long-running loops stop when cancelled, even when a wake-up arrives in the same instant.

On Python 3.11 ``asyncio.wait_for`` swallows a cancellation that coincides with
the awaited event being set (CPython gh-86296). Our idle loops used it, so a
worker whose last run ended just as it was stopped kept polling forever, and
whoever awaited it (a test, ``Runtime.stop``) hung. Each case below parks a loop
in its idle wait, then sets the wake-up and cancels in one step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS

from service.config import WorkerSettings
from service.engine.nodes import default_registry
from service.engine.worker import Worker
from service.followers.projection_service import ProjectionService
from service.followers.relay import Relay
from service.store.event_store import EventStore
from service.store.run_queue import RunQueue
from service.store.workflow_store import WorkflowStore
from tests.helpers.servers import StreamTarget


async def _stops_when_woken_and_cancelled_together(
    run: Callable[[], Coroutine[Any, Any, None]], wake: Callable[[], None]
) -> None:
    task = asyncio.create_task(run())
    await asyncio.sleep(0.5)  # started and idle: waiting for a wake-up or its poll interval
    assert not task.done()
    wake()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    if not done:  # the old behaviour: still running; stop it for good before failing
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise AssertionError("the loop ignored its cancellation")
    assert task.cancelled()


async def test_worker_stops(pool: asyncpg.Pool, schema: str, store: EventStore) -> None:
    registry = default_registry()
    worker = Worker(
        store,
        RunQueue(store, schema=schema),
        WorkflowStore(pool, schema=schema),
        registry,
        WorkerSettings(poll_s=30),
    )
    try:
        await _stops_when_woken_and_cancelled_together(worker.run, worker._wake.set)
    finally:
        await registry.aclose()


async def test_projection_service_stops(store: EventStore) -> None:
    service = ProjectionService(store, idle_poll_s=30)
    await _stops_when_woken_and_cancelled_together(service.run, service._wake.set)


async def test_relay_stops(store: EventStore, nats_client: NATS, stream: StreamTarget) -> None:
    relay = Relay(
        store, nats_client, stream=stream.name, subject_prefix=stream.subject_prefix, idle_poll_s=30
    )
    await _stops_when_woken_and_cancelled_together(relay.run, relay._wakeup.set)
