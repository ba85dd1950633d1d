"""/ready says what is alive now, not only what came up at start."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from service.config import Settings
from service.infra.nats import connect_nats
from service.runtime import Runtime
from tests.helpers.servers import Servers


async def test_readiness_follows_background_tasks_and_nats(servers: Servers) -> None:
    token = uuid.uuid4().hex[:8]
    runtime = Runtime(
        Settings(
            database_url=servers.database_url,
            nats_url=servers.nats_url,
            nats_stream=f"READY_{token}",
            nats_subject_prefix=f"ready{token}.events",
        )
    )
    await runtime.start(relay=False, worker=False, projections=True)
    try:
        assert (await runtime.live_readiness()).ready
        (projections,) = [t for t in runtime._tasks if t.get_name() == "projections"]
        projections.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await projections
        stopped = await runtime.live_readiness()
        assert not stopped.ready and "projections task stopped" in (stopped.error or "")
        assert runtime.nats is not None
        await runtime.nats.close()
        disconnected = await runtime.live_readiness()
        assert not disconnected.nats and not disconnected.ready
    finally:
        await runtime.stop()
        nc = await connect_nats(servers.nats_url)
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(f"READY_{token}")
        await nc.close()
