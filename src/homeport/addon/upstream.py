"""Raw HTTP/1.1 keep-alive connections to Home Assistant: the add-on's upstream.

A :class:`UpstreamPool` keeps up to ``POOL_LIMIT`` connections to the one
configured Home Assistant (plain TCP, or TLS verified as any HTTPS client
does), dials with a timeout, and closes connections that stay idle.  Each
:class:`UpstreamConnection` parses what Home Assistant answers with llhttp
(``httptools``) and hands it to its current *user* (an exchange, see
``addon/exchange.py``) as callbacks: no task and no response object per
request.

Threats and failures this stops:

* SSRF / open proxy: the pool only ever dials the configured :class:`Origin`;
  nothing in a request chooses where a connection goes.
* Response desynchronisation (one person's answer delivered to another): a
  connection goes back to the pool only when llhttp saw its response end, the
  request was sent in full and both sides keep the connection alive; a byte
  Home Assistant sends when no request is outstanding, or a second response
  in the same read, closes the connection instead.
* Malformed or hostile responses: llhttp is strict (CR/LF/NUL in fields,
  obs-fold, duplicate or conflicting lengths are errors); a parse error ends
  the one exchange on that connection and closes it, nothing else.
* Resource exhaustion: at most ``POOL_LIMIT`` connections (more requests wait
  for one), ``CONNECT_TIMEOUT`` per dial, idle ones closed after
  ``IDLE_TIMEOUT`` (one timer for the pool, not one per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Protocol, cast

import aiohappyeyeballs
import httptools
from yarl import URL

log = logging.getLogger(__name__)

#: The same bound, dial timeout and keep-alive time as the aiohttp client it replaces.
POOL_LIMIT = 200
CONNECT_TIMEOUT = 10.0
IDLE_TIMEOUT = 15.0
#: RFC 8305's connection attempt delay (aiohttp's default too).
HAPPY_EYEBALLS_DELAY = 0.25
#: Most bytes of fields in one response head: what the tunnel carries in one frame
#: (protocol MAX_FRAME_SIZE).  llhttp sets no bound of its own.
MAX_HEAD_BYTES = 64 * 1024

RawHeaders = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Origin:
    """The configured Home Assistant base URL: where every request goes, and nowhere else."""

    #: ``http://host[:port]`` as configured, without path (Location headers are matched on it).
    base: str
    #: The name a connection dials (``*.localhost`` is loopback, RFC 6761 §6.3).
    dial_host: str
    #: The name TLS verifies (and sends as SNI).
    host: str
    port: int
    #: What every request carries as ``Host``: Home Assistant's own name, never the relay's.
    host_header: str
    tls: ssl.SSLContext | None

    @classmethod
    def parse(cls, ha_url: str) -> Origin:
        url = URL(ha_url)
        if url.scheme not in ("http", "https") or not url.raw_host or url.port is None:
            raise ValueError(f"Home Assistant URL must be http(s)://host[:port], not {ha_url!r}")
        base = str(url.with_path("").with_query(None).with_fragment(None)).rstrip("/")
        host = url.raw_host
        named = f"[{host}]" if ":" in host else host
        host_header = named if url.is_default_port() else f"{named}:{url.port}"
        dial_host = "127.0.0.1" if host == "localhost" or host.endswith(".localhost") else host
        tls = _verified_context() if url.scheme == "https" else None
        return cls(base, dial_host, host, url.port, host_header, tls)

    def public_location(self, location: str) -> str:
        """Make redirects to Home Assistant's internal address relative to the public host.

        The result always starts with exactly one ``/`` followed by something
        other than ``/`` or ``\\``: ``http://ha//evil.example`` must become
        ``/evil.example``, never ``//evil.example``, which a browser reads as
        another host (and treats ``/\\evil.example`` the same way, after
        dropping tabs and newlines anywhere in a URL).  An open redirect
        through the relay's own name is what this stops.
        """
        base = self.base
        if not location.startswith(base) or location[len(base) : len(base) + 1] not in "/?#":
            return location  # somewhere else: Home Assistant's own business
        rest = "".join(c for c in location[len(base) :] if c not in "\t\n\r")
        return "/" + rest.lstrip("/\\")


def _verified_context() -> ssl.SSLContext:
    """What aiohttp's client used: the system's CAs, the hostname checked, HTTP/1.1 by ALPN."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


class UpstreamUser(Protocol):
    """What a connection tells the exchange using it.  None of these may raise."""

    def upstream_ready(self, connection: UpstreamConnection) -> None:
        """A connection for this exchange (it may be one the exchange no longer wants)."""

    def upstream_unavailable(self, error: BaseException) -> None:
        """No connection: Home Assistant could not be reached."""

    def upstream_head(self, status: int, headers: RawHeaders, body: bytes, complete: bool) -> None:
        """The final response head, with the body bytes read along with it."""

    def upstream_body(self, body: bytes, complete: bool) -> None:
        """More of the body (``complete``: that was all of it)."""

    def upstream_upgraded(self, status: int, headers: RawHeaders, rest: bytes) -> None:
        """A 101 with ``Upgrade``: from now on the connection carries another protocol."""

    def upstream_lost(self, error: BaseException | None) -> None:
        """The connection failed (closed, reset, or sent something unparsable) mid-exchange."""

    def upstream_writable(self) -> None:
        """Home Assistant reads again after :attr:`UpstreamConnection.write_paused`."""


class _Unsolicited(Exception):
    """A response began that no request asked for."""


class HeadTooLarge(Exception):
    """Home Assistant's response head is larger than the tunnel carries."""


class _NoCallbacks:
    """A parser's protocol with no callbacks: what a closed connection's parser serves."""


_CLOSED_PARSER = httptools.HttpResponseParser(_NoCallbacks())


class UpstreamConnection(asyncio.Protocol):
    """One connection to Home Assistant, serving one exchange at a time."""

    # Every response touches most of these: slots make each access a fixed offset.
    __slots__ = (
        "_body",
        "_broken",
        "_complete",
        "_delivering",
        "_head_bytes",
        "_head_ready",
        "_head_sent",
        "_headers",
        "_interim",
        "_keep_alive",
        "_parser",
        "_pool",
        "_raw",
        "_release",
        "_status",
        "closed",
        "idle_since",
        "reading_paused",
        "reused",
        "transport",
        "user",
        "write_paused",
    )

    def __init__(self, pool: UpstreamPool | None) -> None:
        #: None for a connection outside the pool (a WebSocket's).
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.user: UpstreamUser | None = None
        self.closed = False
        #: Home Assistant stopped reading what we write (its receive buffer is full).
        self.write_paused = False
        self.reading_paused = False
        #: Served an exchange before (a dead keep-alive connection shows only on use).
        self.reused = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._raw: UpstreamRaw | None = None
        self._delivering = False
        self._release: bool | None = None  # set by finish() while delivering
        self._broken = False  # out of step with our requests: never reused
        # The response being parsed.
        self._status = 0
        self._headers: RawHeaders = []
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._interim = False
        self._head_ready = False  # a head to deliver after this read
        self._head_sent = False  # the user has it
        self._complete = False
        self._keep_alive = False  # both sides keep the connection (HTTP/1.1, no close)

    # ---------------------------------------------------------- for the user

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        assert self.transport is not None
        self.transport.writelines(parts)

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    def switch_to(self, raw: UpstreamRaw) -> None:
        """After an upgrade: every byte read goes to ``raw`` from now on (never pooled)."""
        self._raw = raw
        self._pool_forget()

    def finish(self, *, reusable: bool) -> None:
        """The user is done with this connection: back to the pool if ``reusable``, else closed.

        ``reusable`` is the user's half (the request went out in full, the
        response was complete); the connection adds its own (Home Assistant
        keeps it alive, nothing arrived beyond the response).
        """
        self.user = None
        if self._delivering:
            self._release = reusable  # decided once this read is fully handled
            return
        self._finished(reusable)

    def _finished(self, reusable: bool) -> None:
        self._release = None
        pool = self._pool
        transport = self.transport
        if (
            reusable
            and pool is not None
            and self._complete
            and not self._broken
            and self._keep_alive
            and not self.closed
            and transport is not None
            and not transport.is_closing()
        ):
            # Ready for the next response (what _reset_response does, inline: every request).
            self._status = 0
            self._headers = []
            self._head_sent = self._complete = self._keep_alive = False
            if self.reading_paused:
                self.reading_paused = False
                transport.resume_reading()
            pool.release(self)
        else:
            self.close()

    def give_back(self) -> None:
        """Never used by the user it was meant for: to the pool as it is (or closed)."""
        self.user = None
        if self._pool is not None and self.usable:
            self._pool.release(self)
        else:
            self.close()

    def close(self) -> None:
        self.user = None
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.user = None
        if self.transport is not None:
            self.transport.abort()

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    # ------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are Transports in all but name (not subclasses).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._raw is not None:
            self._raw.raw_received(data)
            return
        user = self.user
        if user is None:
            # Home Assistant speaks while nothing is asked: this connection is out of
            # step with our requests and must never carry another one.
            self.abort()
            return
        self._delivering = True
        try:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserUpgrade as upgrade:
                self._upgraded(user, data[upgrade.args[0] :])
                return
            except httptools.HttpParserError as error:
                if self._complete and isinstance(error.__context__, _Unsolicited):
                    # The response is whole; the surplus is nobody's answer.
                    self._broken = True
                    self._deliver(user)
                    return
                self._fail(user, error)
                return
            self._deliver(user)
        finally:
            self._delivering = False
            if self._release is not None:
                self._finished(self._release)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool_forget()
        # llhttp's parser calls back into this object, which holds it: a closed
        # connection drops it so reference counting frees both now.
        self._parser = _CLOSED_PARSER
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.raw_lost(exc)
            return
        user = self.user
        if user is None:
            return
        self.user = None
        if self._head_sent and not self._complete and self._until_close():
            user.upstream_body(b"", True)  # a body delimited by the end of the connection
        else:
            user.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.user is not None:
            self.user.upstream_writable()
        elif self._raw is not None:
            self._raw.raw_writable()

    # ------------------------------------------------------ llhttp callbacks

    def on_message_begin(self) -> None:
        if self._complete:
            raise _Unsolicited
        self._headers = []
        self._head_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise HeadTooLarge  # memory stays bounded whatever Home Assistant sends
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # 100 Continue, 103 Early Hints: the tunnel carries final answers only,
            # so they are skipped, as aiohttp's client did (the final one follows).
            self._interim = True
            return
        self._status = status
        self._head_ready = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        # Read now: llhttp forgets the message's flags once it is past it.
        self._keep_alive = self._parser.should_keep_alive()
        self._complete = True

    # --------------------------------------------------------------- helpers

    def _deliver(self, user: UpstreamUser) -> None:
        body = self._body
        if body:
            data = body[0] if len(body) == 1 else b"".join(body)
            body.clear()
        else:
            data = b""
        if self._head_ready:
            self._head_ready = False
            self._head_sent = True
            user.upstream_head(self._status, self._headers, data, self._complete)
        elif data or self._complete:
            user.upstream_body(data, self._complete)

    def _upgraded(self, user: UpstreamUser, rest: bytes) -> None:
        self._head_ready = False
        self._head_sent = True
        self._complete = False
        self._body.clear()
        user.upstream_upgraded(self._status, self._headers, rest)

    def _fail(self, user: UpstreamUser, error: BaseException) -> None:
        self.abort()
        user.upstream_lost(error)

    def _reset_response(self) -> None:
        self._status = 0
        self._headers = []
        self._head_sent = self._complete = self._keep_alive = False

    def _until_close(self) -> bool:
        """The response's body runs until the connection ends (no length, not chunked)."""
        if self._status in (204, 304):
            return False
        return not any(
            name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self._headers
        )

    def _pool_forget(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.forget(self)


class UpstreamRaw(Protocol):
    """Who reads an upgraded connection (the WebSocket exchange)."""

    def raw_received(self, data: bytes) -> None: ...
    def raw_lost(self, error: BaseException | None) -> None: ...
    def raw_writable(self) -> None: ...


class UpstreamPool:
    """Keep-alive connections to one :class:`Origin` (see the module docstring)."""

    def __init__(
        self,
        origin: Origin,
        *,
        limit: int = POOL_LIMIT,
        connect_timeout: float = CONNECT_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.origin = origin
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.loop = asyncio.get_running_loop()
        #: Idle connections, oldest first; the newest is reused first (the rest can expire).
        self._idle: dict[UpstreamConnection, None] = {}
        self._waiters: deque[UpstreamUser] = deque()
        self._dialling: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        #: Pooled connections open or being dialled (what ``limit`` bounds).
        self.total = 0
        self.closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def acquire(self, user: UpstreamUser, *, fresh: bool = False) -> None:
        """Give ``user`` a connection: an idle one now, a new one once dialled, or the
        next one freed when ``limit`` are in use.  ``fresh``: not an idle one."""
        if self.closed:
            user.upstream_unavailable(ConnectionError("add-on stopping"))
            return
        idle = self._idle
        while idle and not fresh:
            connection, _ = idle.popitem()
            if connection.usable:
                connection.reused = True
                user.upstream_ready(connection)
                return
        if self.total < self.limit:
            self.total += 1
            self._dial(user, pooled=True)
        else:
            self._waiters.append(user)

    def cancel(self, user: UpstreamUser) -> None:
        """``user`` no longer waits for a connection."""
        with contextlib.suppress(ValueError):
            self._waiters.remove(user)

    def dial_unpooled(self, user: UpstreamUser) -> None:
        """A connection of its own for ``user`` (a WebSocket): never pooled, never limited
        here (the tunnel bounds its streams), so long-lived WebSockets cannot starve requests."""
        if self.closed:
            user.upstream_unavailable(ConnectionError("add-on stopping"))
            return
        self._dial(user, pooled=False)

    def release(self, connection: UpstreamConnection) -> None:
        """``connection`` served a response cleanly: the next waiter takes it, or it idles."""
        if self.closed:
            connection.close()
            return
        if self._waiters:
            connection.reused = True
            self._waiters.popleft().upstream_ready(connection)
            return
        connection.idle_since = self.loop.time()
        self._idle[connection] = None
        if self._sweeper is None:
            self._sweeper = self.loop.call_at(
                connection.idle_since + self.idle_timeout, self._sweep
            )

    def forget(self, connection: UpstreamConnection) -> None:
        """``connection`` is closed or upgraded: its place in the pool is free."""
        self._idle.pop(connection, None)
        self._slot_freed()

    async def close(self) -> None:
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self._idle):
            connection.close()
        self._idle.clear()
        waiters, self._waiters = list(self._waiters), deque()
        for user in waiters:
            user.upstream_unavailable(ConnectionError("add-on stopping"))
        for task in list(self._dialling):
            task.cancel()
        if self._dialling:
            await asyncio.wait(self._dialling, timeout=5)

    # --------------------------------------------------------------- private

    def _dial(self, user: UpstreamUser, *, pooled: bool) -> None:
        # One task per *connection* dialled (rare with keep-alive), never per request.
        task = self.loop.create_task(self._connect(user, pooled))
        self._dialling.add(task)
        task.add_done_callback(self._dialling.discard)

    async def _connect(self, user: UpstreamUser, pooled: bool) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                connection = await self._open(pooled)
        except asyncio.CancelledError:
            if pooled:
                self.total -= 1
            raise
        except Exception as error:  # OSError, ssl errors, TimeoutError: unreachable
            if not isinstance(error, OSError | TimeoutError | ValueError):
                log.error("addon.upstream_dial_failed", exc_info=error)
            if pooled:
                self._slot_freed()
            user.upstream_unavailable(error)
            return
        if self.closed:
            connection.abort()
            user.upstream_unavailable(ConnectionError("add-on stopping"))
            return
        user.upstream_ready(connection)

    async def _open(self, pooled: bool) -> UpstreamConnection:
        """Resolve, dial every address RFC 8305's way (as aiohttp does: uvloop's own
        ``create_connection`` has no happy eyeballs), then TLS if configured."""
        origin = self.origin
        infos = await self.loop.getaddrinfo(origin.dial_host, origin.port, type=socket.SOCK_STREAM)
        sock = await aiohappyeyeballs.start_connection(
            infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, loop=self.loop
        )
        try:
            _, connection = await self.loop.create_connection(
                lambda: UpstreamConnection(self if pooled else None),
                sock=sock,
                ssl=origin.tls,
                server_hostname=origin.host if origin.tls is not None else None,
            )
        except BaseException:
            sock.close()
            raise
        return connection

    def _slot_freed(self) -> None:
        """A connection closed or a dial failed: the next waiter may dial."""
        self.total -= 1
        if self._waiters and self.total < self.limit and not self.closed:
            self.total += 1
            self._dial(self._waiters.popleft(), pooled=True)

    def _sweep(self) -> None:
        self._sweeper = None
        horizon = self.loop.time() - self.idle_timeout
        for connection in list(self._idle):
            if connection.idle_since > horizon:
                break
            del self._idle[connection]
            connection.close()
        if self._idle:
            oldest = next(iter(self._idle))
            self._sweeper = self.loop.call_at(oldest.idle_since + self.idle_timeout, self._sweep)
