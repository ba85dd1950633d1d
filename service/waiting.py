"""Bounded waits that never lose a cancellation.

Not ``asyncio.wait_for``: on Python 3.11 it returns normally when the awaited
thing completes in the same loop step as a cancellation of the waiter
(CPython gh-86296, fixed in 3.12). A loop that idles in it can then miss its
stop request and poll forever. ``asyncio.timeout`` does not have that flaw.
"""

from __future__ import annotations

import asyncio


async def wait_set(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set, at most ``seconds``; True if it was set."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
