"""When each home's add-on connected and disconnected, written in batches.

Threat this stops: a reconnect storm taking the relay down with it.  When a
relay restarts or its network blips, every add-on dials back within seconds.
One write transaction per tunnel (each fsynced on SQLite, each a round trip on
PostgreSQL) queued thousands of writers behind one another; past the database's
busy timeout they failed ("database is locked") and, before this module, took
the tunnel that was being set up with them.  Measured by ``bench/idle.py``:
88 of 10,000 tunnels were left registered but never served.

These times are bookkeeping (the site's "online" and "offline since", the
operator's listing), never an access decision, so they are written a moment
later, many in one transaction, and a failed write is kept and retried: it is
never a reason to refuse or drop a tunnel.  The recorder keeps at most one
pending time per home and direction, so its memory is bounded by the number of
homes, whatever the churn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

from homeport.waits import wait_for_event

log = logging.getLogger(__name__)

#: How long connects and disconnects gather before one transaction writes them.
BATCH_DELAY = 0.2
#: After a failed write, the wait before the next try doubles up to this.
RETRY_CAP = 10.0

Writer = Callable[[Mapping[str, datetime], Mapping[str, datetime]], Awaitable[None]]


class PresenceRecorder:
    """Gathers connect and disconnect times and writes them in one transaction per batch.

    ``write(connected, disconnected)`` stores the two maps (instance id -> time);
    :meth:`Instances.record_presence` does it in one transaction.
    """

    def __init__(
        self,
        write: Writer,
        *,
        delay: float = BATCH_DELAY,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._write = write
        self._delay = delay
        self._clock = clock
        self._connected: dict[str, datetime] = {}
        self._disconnected: dict[str, datetime] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._failures = 0
        self._writing = 0
        self._wake = asyncio.Event()
        self._closing = False
        self.batches = 0  # transactions written, for tests and metrics

    @property
    def pending(self) -> int:
        """Times not yet in the database (those being written included)."""
        return len(self._connected) + len(self._disconnected) + self._writing

    def connected(self, instance_id: str) -> None:
        self._connected[instance_id] = self._clock()
        self._schedule()

    def disconnected(self, instance_id: str) -> None:
        self._disconnected[instance_id] = self._clock()
        self._schedule()

    def _schedule(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self.pending:
            if not self._closing:
                wait = self._delay if not self._failures else min(RETRY_CAP, 2**self._failures / 2)
                await wait_for_event(self._wake, wait)
            written = await self._flush_once()
            if self._closing and not written:
                return  # one try when closing: a database that is down stays down

    async def _flush_once(self) -> bool:
        connected, self._connected = self._connected, {}
        disconnected, self._disconnected = self._disconnected, {}
        if not connected and not disconnected:
            return True
        self._writing = len(connected) + len(disconnected)
        try:
            await self._write(connected, disconnected)
        except Exception as exc:  # the database is down or busy: keep them for the next try
            self._failures += 1
            # A newer time recorded meanwhile wins over the one that failed to write.
            self._connected = {**connected, **self._connected}
            self._disconnected = {**disconnected, **self._disconnected}
            self._writing = 0
            log.warning(
                "hub.presence_write_failed",
                extra={
                    "pending": self.pending,
                    "failures": self._failures,
                    "error": type(exc).__name__,
                },
            )
            return False
        finally:
            self._writing = 0
        self._failures = 0
        self.batches += 1
        return True

    async def close(self, timeout: float = 10.0) -> None:
        """Write what is pending now (one try, bounded by ``timeout``)."""
        self._closing = True
        self._wake.set()
        if self._flusher is None or self._flusher.done():
            self._schedule()
        assert self._flusher is not None
        with contextlib.suppress(TimeoutError):
            # Shielded: a write in progress is never cut half-way (its times would be lost).
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._flusher)
