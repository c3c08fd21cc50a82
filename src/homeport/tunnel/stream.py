"""One stream of a tunnel as the asyncio side sees it.

Received items wait in a small inbox.  The inbox cannot grow past the
stream's credit window, because the peer may not send more than we granted,
and credit is only returned (``acknowledge``) when a reader takes an item out.
Writers wait while the protocol holds more than ``HIGH_WATER`` queued bytes
for the stream, so a slow far end pushes back all the way to the source.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from homeport.protocol.connection import TunnelConnection
from homeport.protocol.errors import ErrorCode, StreamViolation
from homeport.protocol.heads import RequestHead, ResponseHead
from homeport.tunnel.priorities import BULK_SIZE, sent_priority

if TYPE_CHECKING:
    from homeport.tunnel.session import TunnelSession

HIGH_WATER = 256 * 1024
#: Most body bytes handed to a consumer at once when several chunks are waiting.
BODY_BATCH = 256 * 1024


class StreamClosed(Exception):
    """The stream was reset or the tunnel went away."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{code.name}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class WsMessage:
    data: bytes
    text: bool


@dataclass(frozen=True, slots=True)
class WsClose:
    code: int
    reason: str


_EOF = object()


class Stream:
    def __init__(
        self,
        session: TunnelSession,
        stream_id: int,
        request: RequestHead | None,
        *,
        websocket: bool = False,
    ) -> None:
        self._session = session
        self.id = stream_id
        self.request = request
        self.websocket = websocket
        self.response: asyncio.Future[ResponseHead] = asyncio.get_running_loop().create_future()
        self._inbox: deque[bytes | WsMessage | WsClose | object] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.error: StreamClosed | None = None
        self.closed = False  # nothing more will arrive
        self.ws_close_sent = False
        #: Add-on side: the status of the response head we sent (None until then).
        self.sent_status: int | None = None
        #: Add-on side: the request head was not marked END_STREAM.
        self.request_has_body = False
        #: Received bytes the reader has not taken yet: they hold tunnel credit.
        self.held = 0
        #: When the reader last took something, or the inbox last became non-empty.
        self.waiting_since = time.monotonic()
        #: Body bytes this side has written (see tunnel/priorities.py, sent_priority).
        self.body_sent = 0
        self._sent_as_bulk = False

    # --------------------------------------------------------- fed by session

    def _deliver(self, item: bytes | WsMessage | WsClose | object) -> None:
        size = _size(item)
        if size:
            if not self.held:
                self.waiting_since = time.monotonic()
            self.held += size
        self._inbox.append(item)
        self._readable.set()

    def _fail(self, error: StreamClosed) -> None:
        if self.error is None:
            self.error = error
        if not self.response.done():
            self.response.set_exception(error)
            self.response.exception()  # mark retrieved: not every caller awaits it
        self.closed = True
        self._readable.set()
        self._writable.set()

    def _update_writable(self) -> bool:
        """Wake a blocked writer if the protocol has room; True if it was woken."""
        if self._session.connection.buffered(self.id) <= HIGH_WATER:
            self._writable.set()
            return True
        return False

    # ---------------------------------------------------------------- reading

    async def _next(self) -> bytes | WsMessage | WsClose | object:
        while not self._inbox:
            if self.error is not None:
                raise self.error
            self._readable.clear()
            await self._readable.wait()
        return self._take()

    def _take(self) -> bytes | WsMessage | WsClose | object:
        item = self._inbox.popleft()
        if size := _size(item):
            self.held -= size
            self.waiting_since = time.monotonic()
        if isinstance(item, bytes):
            self._session.acknowledge(self.id, len(item))
        elif isinstance(item, WsMessage):
            self._session.acknowledge(self.id, len(item.data))
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
            if self._session.connection.buffered(self.id) <= HIGH_WATER:
                return
            self._writable.clear()
            self._session._blocked_writers.add(self)
            await self._writable.wait()

    @contextlib.contextmanager
    def _sending(self) -> Iterator[TunnelConnection]:
        if self.error is not None:
            raise self.error
        try:
            yield self._session.connection
        except StreamViolation as exc:
            raise StreamClosed(exc.code, exc.reason) from None
        self._session.kick()

    async def write(self, data: bytes, *, end: bool = False) -> None:
        """Send body bytes; returns once the tunnel has room for more."""
        await self._wait_writable()
        with self._sending() as connection:
            connection.send_data(self.id, data, end_stream=end)
            self.body_sent += len(data)
            if self.body_sent > BULK_SIZE and not self._sent_as_bulk:
                # A body of unknown length turned out to be a transfer (an upload or a
                # download without content-length): it must not crowd out the API.
                self._sent_as_bulk = True
                connection.set_priority(self.id, sent_priority(self.priority, self.body_sent))
        if data:
            await self._wait_writable()

    async def send_ws(self, data: bytes, *, text: bool) -> None:
        await self._wait_writable()
        with self._sending() as connection:
            connection.send_ws_message(self.id, data, text=text)

    def close_ws(self, code: int, reason: str = "") -> None:
        """Send our close (once); the peer's close arrives as a :class:`WsClose`."""
        if self.error is None and not self.ws_close_sent:
            self.ws_close_sent = True
            with self._sending() as connection:
                connection.send_ws_close(self.id, code, reason)

    def respond(self, head: ResponseHead, *, end: bool = False) -> None:
        with self._sending() as connection:
            connection.send_response(self.id, head, end_stream=end)
        self.sent_status = head.status

    @property
    def priority(self) -> int:
        """The class this side sends the stream's output in (see protocol/scheduler.py)."""
        current = self._session.connection.priority(self.id)
        return current if current is not None else self.request.priority if self.request else 0

    def set_priority(self, priority: int) -> None:
        """Move what this side sends on the stream to another class (local only)."""
        self._session.connection.set_priority(self.id, priority)

    def reset(self, code: ErrorCode = ErrorCode.CANCEL, reason: str = "") -> None:
        """Abort the stream (idempotent)."""
        if self.error is None:
            self._session.reset(self.id, code, reason)


def _size(item: object) -> int:
    """Flow-controlled bytes in an inbox item."""
    if isinstance(item, bytes):
        return len(item)
    if isinstance(item, WsMessage):
        return len(item.data)
    return 0
