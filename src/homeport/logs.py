"""Structured logs: one JSON object a line, metadata only.

Log calls pass their fields through ``extra``; nothing here ever formats a
request body, a header value or a token, so relayed bytes cannot end up in a
log by accident.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import time
import traceback
from collections.abc import Callable

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info and record.exc_info[0] is not None:
            # Type and frames only: an exception's message may quote relayed data.
            entry["exception"] = record.exc_info[0].__name__
            entry["traceback"] = "".join(traceback.format_tb(record.exc_info[2]))
        return json.dumps(entry, separators=(",", ":"))


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """Hands records to a writer thread; drops (and counts) them if it falls behind.

    The event loop never blocks on a slow or stalled log sink this way, and a
    flood of log lines cannot grow memory without bound.
    """

    dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            DroppingQueueHandler.dropped += 1


class LogThrottle:
    """At most ``burst`` lines of one event per ``interval`` seconds; the rest counted.

    For events anyone on the network can cause (a scanner at an untrusted
    address, a flood of malformed headers): without it they could fill the
    operator's disk and crowd every other line out of the log queue, which
    drops what does not fit.  The next line that goes out carries the number
    left out before it (``suppressed``), so nothing is hidden, only summed.
    """

    def __init__(
        self, burst: int = 10, interval: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._burst = burst
        self._interval = interval
        self._clock = clock
        self._window = -interval
        self._sent = 0
        self._suppressed = 0

    def allow(self) -> int | None:
        """None: leave this line out; else log it with this many ``suppressed`` before it."""
        now = self._clock()
        if now - self._window >= self._interval:
            self._window, self._sent = now, 0
        if self._sent >= self._burst:
            self._suppressed += 1
            return None
        self._sent += 1
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


_listener: logging.handlers.QueueListener | None = None


def setup_logging(level: str = "info") -> None:
    global _listener
    # Records are turned into JSON lines here, in the logging thread's caller
    # (QueueHandler.prepare formats with the handler's formatter); the writer
    # thread only writes finished lines.
    sink = logging.StreamHandler(sys.stderr)
    sink.setFormatter(logging.Formatter("%(message)s"))
    if _listener is not None:
        _listener.stop()
    records: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=10_000)
    _listener = logging.handlers.QueueListener(records, sink)
    _listener.start()
    atexit.register(_listener.stop)
    root = logging.getLogger()
    handler = DroppingQueueHandler(records)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would write request targets; we log our own metadata.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Database drivers log statements with their parameters (hashes, emails) at debug.
    for name in ("aiosqlite", "sqlalchemy.engine", "asyncpg"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Alembic announces each of its plugins at info whenever it is imported: noise.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # The OpenID client's HTTP stack traces headers at debug (IdP cookies and the like).
    for name in ("httpx2", "httpcore2", "authlib"):
        logging.getLogger(name).setLevel(logging.WARNING)
