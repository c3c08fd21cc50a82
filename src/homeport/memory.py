"""Give freed heap memory back to the system, now and then (glibc only).

A relay under churn (connections, WebSockets and bodies coming and going)
frees everything it allocates, yet glibc's allocator keeps the freed pages of
its heap unless the very top of the heap is free: measured on the soak
(``bench/soak.py``), a relay serving thousands of short WebSockets grew by
~40 KB each of memory it had already freed, and one ``malloc_trim(0)`` gave
back all of it.  So the relay and the add-on call it every
:data:`TRIM_INTERVAL` seconds: an operator reading RSS sees what the process
really holds, and a leak (which this cannot hide) stands out.  Elsewhere
(musl, macOS) there is nothing to call and nothing is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Seconds between two trims (a trim of a 100 MiB heap takes a few milliseconds).
TRIM_INTERVAL = 30.0


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


malloc_trim = _find_malloc_trim()


def trim() -> bool:
    """Return free heap pages to the system now; False where there is no such call."""
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True


class MemoryTrimmer:
    """Calls :func:`trim` every ``interval`` seconds while started."""

    def __init__(self, interval: float = TRIM_INTERVAL) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if malloc_trim is not None and self._task is None and self.interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="memory-trim")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            trim()
