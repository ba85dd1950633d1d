"""A background loop that fails is started again; cancelling it stops it for good."""

from __future__ import annotations

import asyncio
import contextlib

from service.retry import supervised


async def test_a_failing_loop_is_restarted_until_cancelled() -> None:
    starts = 0
    running = asyncio.Event()

    async def loop() -> None:
        nonlocal starts
        starts += 1
        if starts < 3:
            raise RuntimeError("an error nobody expected")
        running.set()
        await asyncio.Event().wait()  # runs until cancelled

    task = asyncio.create_task(supervised("test", loop, first_backoff_s=0.01))
    async with asyncio.timeout(5):
        await running.wait()
    assert starts == 3 and not task.done()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()
