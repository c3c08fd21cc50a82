"""Waiting for an event with a time limit, and stopping a task, without losing a cancellation.

Background loops (the presence writers, the hub's link poller, housekeeping,
the certificate keeper, the add-on's redial) wait "until woken or until the
next round" and are stopped by cancelling their task.  On Python 3.11,
``asyncio.wait_for(event.wait(), timeout)`` swallows a cancellation that
arrives just after the event was set (CPython gh-86296, fixed in 3.12 by
rebuilding ``wait_for`` on ``asyncio.timeout``): the loop goes round again
and whoever awaits its end, a node's shutdown for one, waits for ever.
``asyncio.timeout`` tells its own expiry from a cancellation from outside,
so a stop always stops.

A cancellation can also be lost further down, in a library that turns it into
a ``TimeoutError`` its caller then retries on; :func:`cancel_and_wait` asks
again until the task has ended, so a stop never waits for ever.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait", "wait_for_event"]


async def wait_for_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set, at most ``timeout`` seconds; True if it was set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def cancel_and_wait(task: asyncio.Task[Any], *, every: float = 0.5) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again every ``every``
    seconds while it goes on (its cancellation was lost on the way down).

    Raises what the task raised, if it ended with anything but its cancellation.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every)
    if not task.cancelled():
        task.result()
