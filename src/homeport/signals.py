"""Waiting for the operator to stop a foreground process (Ctrl+C, ``docker stop``, systemd)."""

from __future__ import annotations

import asyncio
import contextlib
import signal

__all__ = ["until_stop_signal"]


async def until_stop_signal() -> None:
    """Return once SIGINT or SIGTERM arrives (where the loop can watch signals at all)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
