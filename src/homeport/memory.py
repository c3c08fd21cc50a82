"""Keep glibc's heap from growing with memory the process has already freed.

A relay under churn (connections, WebSockets and bodies coming and going)
frees everything it allocates, yet its RSS grew on the soak
(``bench/soak.py``): about 40 KB per short WebSocket, all of it memory
already freed (one ``malloc_trim(0)`` gave it back).  Two glibc behaviours:

* the *dynamic mmap threshold*: once a block above 128 KiB is freed, glibc
  raises the threshold (up to 32 MiB) and puts later such blocks on the
  heap, so how large a block has to be before it is mmap'ed (and returned
  the moment it is freed) depends on what the process happened to free
  first.  :func:`configure_allocator` fixes it at :data:`MMAP_THRESHOLD`
  (1 MiB): above the data plane's own buffers (a TLS read, a 256 KiB body
  batch, a tunnel write of ``SEND_BATCH``; TLS reads themselves go through
  one reused buffer, :mod:`homeport.tls.reads`), which come and go thousands of
  times a second during a transfer and are reused from the heap instead of
  being mapped, faulted in page by page, zeroed and unmapped every time
  (at 128 KiB that cost a third of an upload's CPU, docs/performance.md);
  anything larger is mmap'ed and returned when freed;
* freed pages in the middle of the heap (those buffers' included) are only
  returned by ``malloc_trim``: :class:`MemoryTrimmer` calls it every
  :data:`TRIM_INTERVAL` seconds.  With the threshold at 1 MiB and a trim
  every 30 s, a 120 s soak peaked at 549 MiB of relay RSS against 349 MiB at
  128 KiB; trimming every 5 s brought it to 333 MiB with the CPU saving kept
  (upload 3.4 against 5.1 ms of relay+add-on CPU per MB, same machine).

So an operator reading RSS sees what the process really holds, and a leak
(which neither can hide) stands out.  Elsewhere (musl, macOS) there is
nothing to call and nothing is done.
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
TRIM_INTERVAL = 5.0


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

#: mallopt's M_MMAP_THRESHOLD, and the value glibc starts with.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1024 * 1024


def configure_allocator() -> bool:
    """Fix glibc's mmap threshold (see the module docstring); False where there is none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


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
        configure_allocator()
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
