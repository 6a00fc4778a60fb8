"""Small asyncio helpers.

Python 3.11's ``asyncio.wait_for`` can swallow a cancellation when the awaited thing
completes at the same moment (fixed in 3.12); at shutdown that made a forwarder ignore
its cancel and run forever. ``asyncio.timeout`` does not have that race, so waits with a
timeout go through here.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; True if it was set."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
