"""One browser connection on a tenant or app-link host, driven by callbacks.

The connection reads requests (:mod:`homeport.relay.proxy.http1`), answers
them one at a time in order (HTTP/1.1 pipelining: later requests wait, and
reading pauses meanwhile), and hands each to an exchange
(:mod:`homeport.relay.proxy.exchange`) that carries it through the home's
tunnel.  No task runs per request: the tunnel's events and the browser's
bytes both arrive as callbacks.

Threats this stops, besides the parser's (see ``http1``):

* slowloris: a connection waiting for a request head is closed after
  ``idle_timeout`` (75 s) counted from its start or the end of its last
  response, not from its last byte, so a head trickling in is cut too;
* a browser that stops reading: the transport's write buffer pauses the
  exchange, which then holds back the tunnel's credit (the home stops
  sending at its stream window), instead of buffering without bound;
* one request's failure reaching others: an unexpected error in one
  connection answers 500 and closes that connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from homeport.relay.proxy.http1 import Request, RequestError, RequestReader
from homeport.relay.proxy.responses import error_answer
from homeport.tls.context import requested_server_name
from homeport.tls.proxy_listener import client_address
from homeport.tls.reads import ThreadBufferReads

if TYPE_CHECKING:
    from homeport.relay.live import Principal
    from homeport.relay.proxy.exchange import HttpExchange
    from homeport.relay.tenant import TenantProxy

log = logging.getLogger(__name__)

#: A connection waiting for a request head is closed after this long (see app.IDLE_TIMEOUT).
IDLE_TIMEOUT = 75.0
#: Requests a browser may pipeline ahead of the one being answered.
MAX_PIPELINED = 16
#: How long the home may take to start its answer (504 after that).
RESPONSE_HEAD_TIMEOUT = 300.0
#: Parts of one write up to this many bytes in all go to the browser joined, as one
#: TLS record: uvloop's TLS transport encrypts every part of ``writelines`` as a
#: record of its own (a WebSocket frame's header and payload, a response head and
#: a small body).  16 KiB is the most a record carries; above it the copy a join
#: makes costs more than the record it saves.
COALESCE_LIMIT = 16 * 1024


#: ``exchange.exchange_for``, found on the first request: the module imports this
#: one, so it cannot be imported at the top; an import statement in the method
#: cost about a microsecond on every request (the import machinery runs each time).
_exchange_for: Callable[[TenantConnection, Request], HttpExchange] | None = None


def _load_exchange_for() -> Callable[[TenantConnection, Request], HttpExchange]:
    global _exchange_for
    from homeport.relay.proxy.exchange import exchange_for

    _exchange_for = exchange_for
    return exchange_for


class TenantConnection(ThreadBufferReads):
    def __init__(self, proxy: TenantProxy, *, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.proxy = proxy
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.remote = ""
        self.sni = ""
        self.lost = False
        self.write_paused = False
        self._idle_timeout = idle_timeout
        #: How long the exchange being answered may wait for the home's response head.
        self.head_timeout = RESPONSE_HEAD_TIMEOUT
        # One timer per connection for both deadlines (see _arm): waiting for a
        # request head (idle), or for the home's response head to the current request.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when the timer fires
        self._deadline: float | None = None
        self._deadline_idle = True  # which deadline _deadline is
        #: The last Host header and its label (see TenantProxy.admit_now): the host
        #: is checked once per connection, not once per request.
        self.host_seen = ""
        self.host_label = ""
        #: Whether that label is a home's own (else an app link's, or nothing).
        self.host_is_home = False
        #: The last Cookie header, its session token and the token's cache key; the
        #: last (user id, session id) admitted and its Principal (see admit_now).
        self.cookie_seen: bytes | None = None
        self.token: str | None = None
        self.token_digest: bytes | None = None
        self.access: tuple[int, int] | None = None
        self.principal: Principal | None = None
        self._reader = RequestReader(self)
        #: The exchange being answered, and those read while it was (pipelining).
        self._current: HttpExchange | None = None
        self._waiting: deque[HttpExchange] = deque()
        #: The exchange whose request body is being read.
        self._reading: HttpExchange | None = None
        #: After a WebSocket upgrade, every browser byte goes to this exchange.
        self._upgraded: HttpExchange | None = None
        self._pauses: set[str] = set()
        self._closing = False
        #: The node is draining: close once what was asked on this connection is answered.
        self._winding_down = False

    # ------------------------------------------------------- the protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is a Transport in all but name (not a subclass).
        self.transport = cast(asyncio.Transport, transport)
        self.remote = client_address(transport)  # HAProxy's PROXY header, else the peer
        name = requested_server_name(transport.get_extra_info("ssl_object"))
        self.sni = name.lower().rstrip(".") if name else ""
        self.proxy.connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self._upgraded is not None:
            self._upgraded.browser_data(data)
            return
        if self._closing:
            return
        try:
            self._reader.feed(data)
        except RequestError as exc:
            self.refuse(exc.status, exc.reason)
        except Exception:
            log.exception("tenant.connection_failed")
            self.refuse(500, "internal error")

    def eof_received(self) -> bool | None:
        if self._upgraded is not None:
            self._upgraded.browser_eof()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.proxy.connections.discard(self)
        self._cancel_idle()
        # The TLS transport's protocol keeps our bound methods (get_buffer and
        # buffer_updated) after the connection ends, and the reader and its parser
        # refer back to us: dropping our side of each cycle lets reference counting
        # free the connection and its TLS state now, not at the next full collection.
        self._reader.close()
        self.transport = None
        doomed = [e for e in (self._current, *self._waiting) if e is not None]
        self._current = None
        self._upgraded = None
        self._reading = None
        self._waiting.clear()
        for exchange in doomed:
            exchange.connection_lost()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._current is not None:
            self._current.resume_writing()

    # --------------------------------------------------------- RequestSink

    def request_started(self, request: Request) -> None:
        self._disarm_idle()
        exchange = (_exchange_for or _load_exchange_for())(self, request)
        self._reading = exchange
        if self._current is None:
            self._current = exchange
            exchange.start()
        else:
            if len(self._waiting) >= MAX_PIPELINED:
                raise RequestError(429, "too many pipelined requests")
            self._waiting.append(exchange)
            self.pause("pipelined")

    def body_received(self, data: bytes) -> None:
        if self._reading is not None:
            self._reading.body(data)

    def request_ended(self) -> None:
        reading, self._reading = self._reading, None
        if reading is not None:
            reading.body_end()

    def upgraded(self, rest: bytes) -> None:
        """The upgrade request was read: nothing after it is HTTP any more."""
        exchange = self._current
        if exchange is None or exchange is not self._reading_upgrade():
            self.refuse(400, "pipelined WebSocket upgrade")
            return
        self.pause("upgrade")
        exchange.upgrade_requested(rest)

    def _reading_upgrade(self) -> HttpExchange | None:
        # The upgrade request has no body, so its exchange has just ended reading.
        return self._current if not self._waiting else None

    # ------------------------------------------------------ exchange control

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        if self.transport is not None and not self.lost:
            if len(parts) > 1 and sum(map(len, parts)) <= COALESCE_LIMIT:
                self.transport.write(b"".join(parts))
            else:
                self.transport.writelines(parts)

    def pause(self, why: str) -> None:
        """Stop reading from the browser until :meth:`resume` with the same reason."""
        if not self._pauses and self.transport is not None and not self.lost:
            self.transport.pause_reading()
        self._pauses.add(why)

    def resume(self, why: str) -> None:
        if why not in self._pauses:
            return
        self._pauses.discard(why)
        if not self._pauses and self.transport is not None and not self.lost:
            self.transport.resume_reading()

    def switch_to(self, exchange: HttpExchange) -> None:
        """A WebSocket was accepted: the browser's bytes are frames from now on."""
        self._upgraded = exchange
        self.resume("upgrade")

    def finished(self, exchange: HttpExchange, *, keep_alive: bool) -> None:
        """``exchange`` has written its whole response; the next one may start."""
        if exchange is not self._current:
            return
        self._current = None
        if not keep_alive or self._closing or (self._winding_down and not self._waiting):
            self.close()
            return
        if self._waiting:
            self._current = self._waiting.popleft()
            if not self._waiting:
                self.resume("pipelined")
            self._current.start()
        else:
            self._arm_idle()

    def wind_down(self) -> None:
        """A cluster node is draining: answer what was asked here, then close (not drop).

        The browser's next request opens a new connection, which the load balancer
        sends to a node still in rotation.
        """
        self._winding_down = True
        if self._current is None and self._upgraded is None and not self._waiting:
            self.close()

    def refuse(self, status: int, reason: str) -> None:
        """A request that cannot be read: one clean answer, then the connection closes."""
        if self._closing:
            return
        log.info("tenant.bad_request", extra={"status": status, "reason": reason})
        if self._current is None or not self._current.response_started:
            self.write(error_answer(status, _REFUSALS.get(status, "Bad request.")))
        self.close()

    def close(self) -> None:
        """Close after what was written (TLS close_notify follows the data)."""
        self._closing = True
        self._cancel_idle()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once: the browser must see a cut, not a complete answer."""
        self._closing = True
        self._cancel_idle()
        if self.transport is not None:
            self.transport.abort()

    # --------------------------------------------------------------- timers

    @property
    def idle_timeout(self) -> float:
        return self._idle_timeout

    @property
    def idle_deadline_armed(self) -> bool:
        """The connection waits for a request head, and will be closed if none comes."""
        return self._deadline is not None and self._deadline_idle

    # The deadline moves with every request; its timer does not.  A keep-alive
    # connection sets a deadline twice per request (the home's answer, then the
    # next request head), so the timer is made once and, when it fires early (the
    # deadline moved on), set again for the new one: no timer per request.

    def _arm(self, deadline: float, *, idle: bool) -> None:
        self._deadline = deadline
        self._deadline_idle = idle
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._expired)

    def _arm_idle(self) -> None:
        if self._idle_timeout <= 0 or self._closing:
            return
        self._arm(self.loop.time() + self._idle_timeout, idle=True)

    def _disarm_idle(self) -> None:
        self._deadline = None

    def await_head(self) -> None:
        """The current exchange waits for the home's response head, within ``head_timeout``."""
        if not self._closing:
            self._arm(self.loop.time() + self.head_timeout, idle=False)

    def head_arrived(self) -> None:
        if not self._deadline_idle:
            self._deadline = None

    def _cancel_idle(self) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.lost:
            return  # nothing waits: the next deadline starts a timer again
        if self.loop.time() < deadline:
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._expired)
            return
        self._deadline = None
        if not self._deadline_idle:
            if self._current is not None:
                self._current.head_late()
            return
        with contextlib.suppress(Exception):
            self.close()


_REFUSALS = {
    400: "Bad request.",
    405: "Method not allowed.",
    414: "Request target too long.",
    429: "Too many requests.",
    431: "Request header fields too large.",
    500: "Internal error.",
    501: "Transfer coding not supported.",
}
