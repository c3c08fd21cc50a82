"""One stream of a tunnel as the asyncio side sees it.

A stream has one owner: the code that opened it (relay side, ``with
session.open_stream(...) as stream``) or the handler the session started for
it (add-on side).  When the owner is done, for whatever reason (finished,
cancelled, timed out, failed), the stream is *released*: if the protocol
still holds it, it is reset, so nothing an owner abandons stays open.  Events
from the peer only ever fill this stream's inbox or record its state; none of
them can raise, whatever the owner did meanwhile (R-MT-15: an answer that
arrives for a request nobody waits for any more is simply dropped with the
stream, it never ends the tunnel).

Received items wait in a small inbox.  The inbox cannot grow past the
stream's credit window, because the peer may not send more than we granted,
and credit is only returned (``acknowledge``) when a reader takes an item out.
Writers wait while the protocol holds more than ``HIGH_WATER`` queued bytes
for the stream, so a slow far end pushes back all the way to the source.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from homeport.protocol import (
    DataReceived,
    ErrorCode,
    Event,
    RequestHead,
    ResponseHead,
    ResponseReceived,
    StreamReset,
    StreamViolation,
    TunnelConnection,
    WebSocketClosed,
    WebSocketMessageReceived,
)
from homeport.tunnel.priorities import BULK_SIZE, sent_priority


class StreamHost(Protocol):
    """What a stream needs from the session that carries it."""

    @property
    def connection(self) -> TunnelConnection: ...
    def kick(self) -> None: ...
    def acknowledge(self, stream_id: int, size: int) -> None: ...
    def reset(self, stream_id: int, code: ErrorCode, reason: str) -> None: ...
    def release(self, stream_id: int, code: ErrorCode, reason: str) -> None: ...
    def writer_blocked(self, stream: Stream) -> None: ...


HIGH_WATER = 256 * 1024
#: Most body bytes handed to a consumer at once when several chunks are waiting.
BODY_BATCH = 256 * 1024


class StreamClosed(Exception):
    """The stream was reset or the tunnel went away."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        # The text is made only when asked for: one of these ends every stream
        # an owner releases (nearly every request), and hardly any is printed.
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code.name}: {self.reason}"


@dataclass(frozen=True, slots=True)
class WsMessage:
    data: bytes
    text: bool


@dataclass(frozen=True, slots=True)
class WsClose:
    code: int
    reason: str


_EOF = object()


class StreamConsumer(Protocol):
    """Takes a stream's events as callbacks instead of from the inbox (the relay's fast path).

    A consumer must call :meth:`Stream.consumed` for every body or message
    byte once it has passed it on (that returns the peer's credit), and is
    told when the tunnel has room again for what it sends (``writable``).
    None of these may raise; a consumer that fails is the stream's problem
    only (the session resets the stream, see ``TunnelSession._dispatch``).
    """

    def head_received(self, head: ResponseHead, end: bool) -> None: ...
    def data_received(self, data: bytes, end: bool) -> None: ...
    def ws_message_received(self, data: bytes, text: bool) -> None: ...
    def ws_closed(self, code: int, reason: str) -> None: ...
    def stream_ended(self, error: StreamClosed | None) -> None: ...
    def writable(self) -> None: ...


class Stream:
    def __init__(
        self,
        host: StreamHost,
        stream_id: int,
        request: RequestHead | None,
        *,
        websocket: bool = False,
        consumer: StreamConsumer | None = None,
    ) -> None:
        self._host = host
        #: Callbacks that take this stream's events; None: they wait in the inbox.
        self.consumer = consumer
        self.id = stream_id
        self.request = request
        self.websocket = websocket
        #: Relay side: the response head, once it arrived (see :meth:`response_head`).
        self.head: ResponseHead | None = None
        self._inbox: deque[bytes | WsMessage | WsClose | object] = deque()
        #: Set whenever something a waiter may wait for changed (a head, an item, an
        #: end, room to write); created by the first waiter only, so a stream whose
        #: events go to a consumer never pays for it.
        self._changed: asyncio.Event | None = None
        self.error: StreamClosed | None = None
        self.closed = False  # nothing more will arrive
        self.ws_close_sent = False
        #: Add-on side: the status of the response head we sent (None until then).
        self.sent_status: int | None = None
        #: Add-on side: the request head was not marked END_STREAM.
        self.request_has_body = False
        #: Received bytes the reader has not taken yet: they hold tunnel credit.
        self.held = 0
        #: When the reader last took something, or the inbox last became non-empty
        #: (only read while ``held``, which sets it as it becomes non-zero).
        self.waiting_since = 0.0
        #: Body bytes this side has written (see tunnel/priorities.py, sent_priority).
        self.body_sent = 0
        self._sent_as_bulk = False

    # ------------------------------------------------------------- ownership

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release(ErrorCode.CANCEL, "abandoned")

    def release(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """The owner is done with the stream: whatever is still open of it ends now.

        Idempotent and safe at any point.  Output this side already ended
        (a response sent in full) still goes out, then the peer is told
        ``code`` for whatever it would still send; output never ended is
        cut at once (CANCEL).
        """
        if self.error is None:
            self._host.release(self.id, code, reason)

    # --------------------------------------------------- events from the peer

    def received(self, event: Event) -> None:
        """Record what the peer said about this stream.  Never raises.

        The protocol has already checked the event against the stream's state
        (it raises a stream violation and resets the stream otherwise), so
        this only files it for the owner, whether or not anyone still waits.
        """
        consumer = self.consumer
        kind = type(event)
        # By exact type, not ``match``: class patterns cost more than the rest of
        # handing a small event over, and this runs for every event.
        if kind is DataReceived:
            assert isinstance(event, DataReceived)
            data = event.data
            end = event.end_stream
            if consumer is not None:
                if end:
                    self.closed = True
                if data:
                    if not self.held:
                        self.waiting_since = time.monotonic()
                    self.held += len(data)
                consumer.data_received(data, end)
                return
            if data:
                self._deliver(data)
            if end:
                self._deliver_end()
        elif kind is WebSocketMessageReceived:
            assert isinstance(event, WebSocketMessageReceived)
            data = event.data
            if consumer is not None:
                if data:
                    if not self.held:
                        self.waiting_since = time.monotonic()
                    self.held += len(data)
                consumer.ws_message_received(data, event.text)
                return
            self._deliver(WsMessage(data, event.text))
        elif kind is ResponseReceived:
            assert isinstance(event, ResponseReceived)
            end = event.end_stream
            if consumer is not None:
                self.head = event.head
                if end:
                    self.closed = True
                consumer.head_received(event.head, end)
                return
            if self.head is None:
                self.head = event.head
                self._notify()
            if end:
                self._deliver_end()
        elif kind is WebSocketClosed:
            assert isinstance(event, WebSocketClosed)
            self.closed = True
            if consumer is not None:
                consumer.ws_closed(event.code, event.reason)
                return
            self._deliver(WsClose(event.code, event.reason))
        elif kind is StreamReset:
            assert isinstance(event, StreamReset)
            self.ended(StreamClosed(event.code, event.reason))

    def consumed(self, size: int) -> None:
        """A consumer passed ``size`` received bytes on: the peer may send that much more."""
        self.held -= size
        if self.held:  # else the next bytes held start the clock again (see received)
            self.waiting_since = time.monotonic()
        self._host.acknowledge(self.id, size)

    def opened_complete(self) -> None:
        """Add-on side: the request had no body (END_STREAM on its OPEN)."""
        self._deliver_end()

    def ended(self, error: StreamClosed) -> None:
        """The stream was reset (by either side) or its tunnel went away."""
        if self.error is not None:
            return
        self.error = error
        self.closed = True
        self._notify()
        consumer, self.consumer = self.consumer, None  # see finished()
        if consumer is not None:
            consumer.stream_ended(error)

    def finished(self) -> None:
        """The protocol forgot the stream: both sides ended it; nothing more moves."""
        self.closed = True
        self._notify()
        # Nothing more reaches the consumer: letting go of it breaks the cycle with
        # the consumer's own reference to the stream, so both (and the browser
        # connection and TLS state behind the consumer) are freed at once, not
        # whenever the cycle collector runs (docs/performance.md, the soak's memory).
        consumer, self.consumer = self.consumer, None
        if consumer is not None and self.error is None:
            consumer.stream_ended(None)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def _wait(self) -> None:
        """Until the next change (callers re-check their condition after it)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        self._changed.clear()
        await self._changed.wait()

    def _deliver(self, item: bytes | WsMessage | WsClose) -> None:
        size = _size(item)
        if size:
            if not self.held:
                self.waiting_since = time.monotonic()
            self.held += size
        self._inbox.append(item)
        self._notify()

    def _deliver_end(self) -> None:
        self.closed = True
        self._inbox.append(_EOF)
        self._notify()

    def update_writable(self) -> bool:
        """Wake a blocked writer if the protocol has room; True if it was woken."""
        if self._host.connection.buffered(self.id) <= HIGH_WATER:
            self._notify()
            if self.consumer is not None:
                self.consumer.writable()
            return True
        return False

    # ------------------------------------------------- writing, without waiting

    def send_data(self, data: bytes, *, end: bool = False) -> bool:
        """Queue body bytes now (a consumer's path); False: wait for ``writable`` first.

        Raises :class:`StreamClosed` if the stream is gone.
        """
        if self.error is not None:
            raise self.error
        host = self._host
        connection = host.connection
        try:
            connection.send_data(self.id, data, end_stream=end)
        except StreamViolation as exc:
            raise StreamClosed(exc.code, exc.reason) from None
        self._count_sent(connection, len(data))
        host.kick()
        if connection.buffered(self.id) <= HIGH_WATER:
            return True
        host.writer_blocked(self)
        return False

    def send_ws_now(self, data: bytes, *, text: bool) -> bool:
        """Queue a WebSocket message now; False: wait for ``writable`` before the next."""
        if self.error is not None:
            raise self.error
        host = self._host
        connection = host.connection
        try:
            connection.send_ws_message(self.id, data, text=text)
        except StreamViolation as exc:
            raise StreamClosed(exc.code, exc.reason) from None
        host.kick()
        if connection.buffered(self.id) <= HIGH_WATER:
            return True
        host.writer_blocked(self)
        return False

    def _count_sent(self, connection: TunnelConnection, size: int) -> None:
        self.body_sent += size
        if self.body_sent > BULK_SIZE and not self._sent_as_bulk:
            # A body of unknown length turned out to be a transfer (an upload or a
            # download without content-length): it must not crowd out the API.
            self._sent_as_bulk = True
            connection.set_priority(self.id, sent_priority(self.priority, self.body_sent))

    # ---------------------------------------------------------------- reading

    async def response_head(self) -> ResponseHead:
        """Relay side: wait for the response head; :class:`StreamClosed` if none comes.

        Giving up (cancellation, a timeout around this call) leaves the head,
        when it comes, to be dropped with the stream when its owner releases it.
        """
        while self.head is None:
            if self.error is not None:
                raise self.error
            await self._wait()
            if self.head is None and self.error is None:
                # Finished without a head (cannot happen on a well-formed tunnel).
                raise StreamClosed(ErrorCode.PROTOCOL, "stream ended without a response")
        return self.head

    async def _next(self) -> bytes | WsMessage | WsClose | object:
        while not self._inbox:
            if self.error is not None:
                raise self.error
            await self._wait()
        return self._take()

    def _take(self) -> bytes | WsMessage | WsClose | object:
        item = self._inbox.popleft()
        if size := _size(item):
            self.held -= size
            self.waiting_since = time.monotonic()
            self._host.acknowledge(self.id, size)
        return item

    async def read(self) -> bytes:
        """Next body chunk; ``b""`` at the end of the body."""
        item = await self._next()
        if item is _EOF:
            self._inbox.appendleft(_EOF)  # stay at EOF for later reads
            return b""
        if not isinstance(item, bytes):
            raise StreamClosed(ErrorCode.PROTOCOL, "expected body data")
        return item

    async def iter_body(self, batch: int = BODY_BATCH) -> AsyncIterator[bytes]:
        """Body chunks; chunks that are already here are joined (up to ``batch``)
        so the consumer makes one write where it would have made many."""
        while chunk := await self.read():
            if self._inbox and isinstance(self._inbox[0], bytes) and len(chunk) < batch:
                parts = [chunk]
                size = len(chunk)
                while self._inbox and isinstance(self._inbox[0], bytes) and size < batch:
                    part = self._take()
                    assert isinstance(part, bytes)
                    parts.append(part)
                    size += len(part)
                chunk = b"".join(parts)
            yield chunk

    def complete_body(self) -> bytes | None:
        """The whole body if all of it has already arrived, else None (never waits).

        Lets a consumer answer a small response in one write instead of three.
        """
        if not self.closed or self.error is not None:
            return None
        if not self._inbox or self._inbox[-1] is not _EOF:
            return None
        if not all(isinstance(item, bytes) for item in list(self._inbox)[:-1]):
            return None
        parts = []
        while self._inbox[0] is not _EOF:
            part = self._take()
            assert isinstance(part, bytes)
            parts.append(part)
        return b"".join(parts)

    async def receive_ws(self) -> WsMessage | WsClose:
        item = await self._next()
        if not isinstance(item, WsMessage | WsClose):
            raise StreamClosed(ErrorCode.PROTOCOL, "expected a WebSocket message")
        return item

    # ---------------------------------------------------------------- writing

    async def _wait_writable(self) -> None:
        while True:
            if self.error is not None:
                raise self.error
            if self._host.connection.buffered(self.id) <= HIGH_WATER:
                return
            self._host.writer_blocked(self)
            await self._wait()

    def _connection(self) -> TunnelConnection:
        """The connection to send on; :class:`StreamClosed` if the stream is gone."""
        if self.error is not None:
            raise self.error
        return self._host.connection

    async def write(self, data: bytes, *, end: bool = False) -> None:
        """Send body bytes; returns once the tunnel has room for more."""
        await self._wait_writable()
        connection = self._connection()
        try:
            connection.send_data(self.id, data, end_stream=end)
        except StreamViolation as exc:
            raise StreamClosed(exc.code, exc.reason) from None
        self._count_sent(connection, len(data))
        self._host.kick()
        if data:
            await self._wait_writable()

    async def send_ws(self, data: bytes, *, text: bool) -> None:
        await self._wait_writable()
        connection = self._connection()
        try:
            connection.send_ws_message(self.id, data, text=text)
        except StreamViolation as exc:
            raise StreamClosed(exc.code, exc.reason) from None
        self._host.kick()

    def close_ws(self, code: int, reason: str = "") -> None:
        """Send our close (once); the peer's close arrives as a :class:`WsClose`."""
        if self.error is None and not self.ws_close_sent:
            self.ws_close_sent = True
            try:
                self._host.connection.send_ws_close(self.id, code, reason)
            except StreamViolation as exc:
                raise StreamClosed(exc.code, exc.reason) from None
            self._host.kick()

    def respond(self, head: ResponseHead, *, end: bool = False) -> None:
        connection = self._connection()
        try:
            connection.send_response(self.id, head, end_stream=end)
        except StreamViolation as exc:
            raise StreamClosed(exc.code, exc.reason) from None
        self._host.kick()
        self.sent_status = head.status

    @property
    def priority(self) -> int:
        """The class this side sends the stream's output in (see protocol/scheduler.py)."""
        current = self._host.connection.priority(self.id)
        return current if current is not None else self.request.priority if self.request else 0

    def set_priority(self, priority: int) -> None:
        """Move what this side sends on the stream to another class (local only)."""
        self._host.connection.set_priority(self.id, priority)

    def reset(self, code: ErrorCode = ErrorCode.CANCEL, reason: str = "") -> None:
        """Abort the stream (idempotent)."""
        if self.error is None:
            self._host.reset(self.id, code, reason)


def _size(item: object) -> int:
    """Flow-controlled bytes in an inbox item."""
    if isinstance(item, bytes):
        return len(item)
    if isinstance(item, WsMessage):
        return len(item.data)
    return 0
