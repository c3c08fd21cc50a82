"""Restart a test's Home Assistant Core when it asks to, as its service manager would.

``homeassistant.restart`` makes ``hass`` exit with code 100 and leaves the
restart to whatever runs it: the Supervisor, the container's s6, or systemd
with ``RestartForceExitStatus=100`` beside Home Assistant Core.  A test that
restarts Home Assistant through its API runs :func:`restart_on_request` beside
it to play that part.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ha_core import HomeAssistant

#: homeassistant.const.RESTART_EXIT_CODE
RESTART_EXIT_CODE = 100


@contextlib.asynccontextmanager
async def restart_on_request(ha: HomeAssistant) -> AsyncIterator[list[int]]:
    """While open, relaunch ``ha`` whenever it exits with 100; yields the exit codes seen."""
    seen: list[int] = []

    async def watch() -> None:
        while True:
            proc = ha._proc
            if proc is not None and proc.poll() is not None:
                seen.append(proc.returncode)
                if proc.returncode != RESTART_EXIT_CODE:
                    return
                ha._launch()
            await asyncio.sleep(0.1)

    task = asyncio.create_task(watch())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
