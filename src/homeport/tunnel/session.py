"""Drive a sans-I/O :class:`TunnelConnection` over an aiohttp WebSocket.

One reader task feeds received binary messages to the protocol and hands the
events to :class:`Stream` objects; one writer task sends whatever the protocol
has to say, so all output leaves in the scheduler's order; one pinger task
measures the round trip and declares the link dead when pongs stop coming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import WSMessage, WSMsgType

from homeport.protocol import events as ev
from homeport.protocol.connection import TunnelConnection
from homeport.protocol.errors import ErrorCode, StreamViolation
from homeport.protocol.heads import RequestHead
from homeport.tunnel.control import HANDLER_GRACE, ControlChannel, ControlHandler
from homeport.tunnel.stream import _EOF, Stream, StreamClosed, WsClose, WsMessage

log = logging.getLogger(__name__)

#: Largest binary message the writer produces (the receiver's limit is above it).
SEND_BATCH = 256 * 1024
#: Receivers accept messages up to this size: one batch plus a maximal frame.
MAX_MESSAGE = 1024 * 1024
#: GOAWAY reason the relay gives a tunnel that a newer connection of the same
#: add-on replaced; the add-on must not dial straight back (it would take over again).
GOAWAY_REPLACED = "replaced"
#: Stalled readers: once unread bytes hold half the tunnel window, a stream whose
#: reader took nothing for STALL_GRACE seconds is reset, so a few paused tabs
#: cannot freeze every other stream of the tunnel (see docs/protocol.md §5).
STALL_GRACE = 3.0
STALL_CHECK = 0.5

StreamHandler = Callable[[Stream], Awaitable[None]]


class WebSocketLike(Protocol):
    """What both aiohttp's client and server WebSockets offer."""

    async def send_bytes(self, data: bytes) -> None: ...
    async def receive(self, timeout: float | None = None) -> WSMessage: ...
    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool: ...


class TunnelSession:
    def __init__(
        self,
        ws: WebSocketLike,
        connection: TunnelConnection,
        *,
        on_stream: StreamHandler | None = None,
        on_goaway: Callable[[ev.GoAwayReceived], None] | None = None,
        on_control: ControlHandler | None = None,
        ping_interval: float = 20.0,
        ping_timeout: float = 15.0,
        name: str = "tunnel",
        control_grace: float = HANDLER_GRACE,
    ) -> None:
        self.ws = ws
        self.connection = connection
        self.name = name
        self.streams: dict[int, Stream] = {}
        self.rtt: float | None = None
        self.closed = asyncio.Event()
        self.close_reason = ""
        #: Set as soon as the tunnel stops serving (before the WebSocket close
        #: handshake, which a dead peer never answers): no new streams from then on.
        self.ended = False
        self._on_stream = on_stream
        self._on_goaway = on_goaway
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set whenever no stream is open
        self._handlers: set[asyncio.Task[None]] = set()
        self._last_pong = time.monotonic()
        self._ping_sent: dict[bytes, float] = {}
        self._received = asyncio.Event()  # the peer sent something: wake the watchdog
        #: Streams whose writers wait for the protocol to drain their queue: the
        #: only ones a flush needs to look at (see _prune_and_wake).
        self._blocked_writers: set[Stream] = set()
        #: Owner actions over this tunnel (tunnel/control.py): ``await control.request(...)``.
        self.control = ControlChannel(
            connection, self.kick, on_control, name=name, grace=control_grace
        )

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the tunnel until the WebSocket closes, then fail leftover streams."""
        self.kick()
        tasks = [
            asyncio.create_task(self._reader(), name=f"{self.name}-reader"),
            asyncio.create_task(self._writer(), name=f"{self.name}-writer"),
            asyncio.create_task(self._pinger(), name=f"{self.name}-pinger"),
            asyncio.create_task(self._watchdog(), name=f"{self.name}-watchdog"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                self._note_failure(task)
        finally:
            self.ended = True
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._shutdown()

    def _note_failure(self, task: asyncio.Task[None]) -> None:
        """A reader, writer, pinger or watchdog that died of a bug ends the tunnel loudly.

        Without this the tunnel would just close: the peer would see "peer closed
        the tunnel" and nobody would learn why.  Type and frames only, as everywhere.
        """
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        if isinstance(error, ConnectionError):  # aiohttp's reset errors are ConnectionErrors too
            self.close_reason = self.close_reason or f"transport error: {type(error).__name__}"
            return
        self.close_reason = self.close_reason or f"internal error in {task.get_name()}"
        log.error(
            "tunnel.task_failed",
            exc_info=error,
            extra={"tunnel": self.name, "task": task.get_name()},
        )

    async def _shutdown(self) -> None:
        error = StreamClosed(ErrorCode.CANCEL, self.close_reason or "tunnel closed")
        for stream in list(self.streams.values()):
            stream._fail(error)
        self.streams.clear()
        self._idle.set()
        await self.control.close(self.close_reason or "tunnel closed")
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        with contextlib.suppress(Exception):
            await self.ws.close()
        self.closed.set()

    async def close(self, reason: str = "closing") -> None:
        self.close_reason = self.close_reason or reason
        with contextlib.suppress(Exception):
            await self.ws.close()

    def goaway(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        self.connection.goaway(code, reason)
        self.kick()

    async def drain(self, grace: float, reason: str = "draining") -> None:
        """Announce GOAWAY, let open streams finish (up to ``grace`` seconds), then close."""
        self.goaway(ErrorCode.NO_ERROR, reason)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                # Send the GOAWAY now: with no stream open we close at once, before
                # the writer task has run, and the peer would never learn why.
                with contextlib.suppress(Exception):
                    await self._flush()
                while self.connection.open_streams and not self.closed.is_set():
                    self._idle.clear()
                    await self._idle.wait()
        await self.close("drained")

    # -------------------------------------------------------------- streams

    def open_stream(self, head: RequestHead, *, websocket: bool, end_stream: bool) -> Stream:
        """Start a request (relay side); raises :class:`StreamClosed` when refused."""
        if self.ended or self.closed.is_set():
            raise StreamClosed(ErrorCode.REFUSED, "tunnel closed")
        try:
            stream_id = self.connection.open_stream(
                head, websocket=websocket, end_stream=end_stream
            )
        except StreamViolation as exc:
            raise StreamClosed(exc.code, exc.reason) from None
        stream = Stream(self, stream_id, head, websocket=websocket)
        self.streams[stream_id] = stream
        self.kick()
        return stream

    def acknowledge(self, stream_id: int, size: int) -> None:
        self.connection.acknowledge(stream_id, size)
        self.kick()

    def reset(self, stream_id: int, code: ErrorCode, reason: str) -> None:
        self.connection.reset_stream(stream_id, code, reason)
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream._fail(StreamClosed(code, reason or "reset locally"))
        self.kick()

    def kick(self) -> None:
        self._wake.set()

    # ---------------------------------------------------------------- tasks

    async def _reader(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg.type is WSMsgType.BINARY:
                events = self.connection.receive_data(msg.data)
                self._dispatch(events)
                self._received.set()
                # Wake the writer only for output (window updates, pongs, resets);
                # streams the peer just finished are pruned here, without a task switch.
                if self.connection.has_output:
                    self.kick()
                else:
                    self._prune_and_wake()
                if self.connection.terminated:
                    await self._flush()
                    return
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                self.close_reason = self.close_reason or "peer closed the tunnel"
                return
            elif msg.type is WSMsgType.ERROR:
                self.close_reason = self.close_reason or f"transport error: {msg.data}"
                return
            else:
                self.close_reason = "unexpected text message on the tunnel"
                log.warning("tunnel.protocol_error", extra={"tunnel": self.name})
                return

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        while data := self.connection.data_to_send(SEND_BATCH):
            await self.ws.send_bytes(data)
            self._prune_and_wake()
        self._prune_and_wake()

    async def _pinger(self) -> None:
        while True:
            payload = struct.pack(">Q", time.monotonic_ns())
            self._ping_sent[payload] = time.monotonic()
            self.connection.ping(payload)
            self.kick()
            await asyncio.sleep(self._ping_interval)
            if time.monotonic() - self._last_pong > self._ping_interval + self._ping_timeout:
                self.close_reason = "keepalive timeout"
                log.warning("tunnel.keepalive_timeout", extra={"tunnel": self.name})
                return
            # Forget pings that were never answered so the map stays bounded.
            horizon = time.monotonic() - self._ping_interval - self._ping_timeout
            for key in [k for k, sent in self._ping_sent.items() if sent < horizon]:
                del self._ping_sent[key]

    async def _watchdog(self) -> None:
        """Reset the longest-stalled streams while unread bytes hold half the tunnel window.

        Unread bytes only grow when the peer sends, so an idle tunnel never wakes
        this; under pressure it looks again every STALL_CHECK seconds.
        """
        window = self.connection.settings.connection_window
        while True:
            await self._received.wait()
            self._received.clear()
            await asyncio.sleep(STALL_CHECK)
            held = sum(stream.held for stream in self.streams.values())
            if held * 2 < window:
                continue
            self._received.set()  # still under pressure: look again after the next pause
            now = time.monotonic()
            for stream in sorted(self.streams.values(), key=lambda s: s.waiting_since):
                if held * 2 < window or now - stream.waiting_since < STALL_GRACE:
                    break
                if stream.held:
                    held -= stream.held
                    log.warning(
                        "tunnel.stalled_reader_reset",
                        extra={"tunnel": self.name, "stream": stream.id, "held": stream.held},
                    )
                    self.reset(stream.id, ErrorCode.CANCEL, "reader stalled")

    # ------------------------------------------------------------- dispatch

    def _dispatch(self, events: list[ev.Event]) -> None:
        for event in events:
            match event:
                case ev.DataReceived(stream_id=sid, data=data, end_stream=end):
                    stream = self.streams.get(sid)
                    if stream is None:
                        continue
                    if data:
                        stream._deliver(data)
                    if end:
                        stream.closed = True
                        stream._deliver(_EOF)
                case ev.WebSocketMessageReceived(stream_id=sid, data=data, text=text):
                    if (stream := self.streams.get(sid)) is not None:
                        stream._deliver(WsMessage(data, text))
                case ev.ResponseReceived(stream_id=sid, head=head, end_stream=end):
                    if (stream := self.streams.get(sid)) is not None:
                        stream.response.set_result(head)
                        if end:
                            stream.closed = True
                            stream._deliver(_EOF)
                case ev.StreamOpened(stream_id=sid, head=head, websocket=ws, end_stream=end):
                    self._start_handler(sid, head, websocket=ws, end=end)
                case ev.WebSocketClosed(stream_id=sid, code=code, reason=reason):
                    if (stream := self.streams.get(sid)) is not None:
                        stream.closed = True
                        stream._deliver(WsClose(code, reason))
                case ev.StreamReset(stream_id=sid, code=code, reason=reason):
                    if (stream := self.streams.pop(sid, None)) is not None:
                        stream._fail(StreamClosed(code, reason))
                case ev.PongReceived(payload=payload):
                    self._last_pong = time.monotonic()
                    sent = self._ping_sent.pop(payload, None)
                    if sent is not None:
                        self.rtt = self._last_pong - sent
                case ev.GoAwayReceived() as goaway:
                    if self._on_goaway is not None:
                        self._on_goaway(goaway)
                case ev.ControlRequested() as request:
                    self.control.requested(request)
                case ev.ControlAnswered() as answer:
                    self.control.answered(answer)
                case ev.ConnectionTerminated(code=code, reason=reason):
                    self.close_reason = f"protocol error: {code.name}: {reason}"
                    log.warning(
                        "tunnel.terminated",
                        extra={"tunnel": self.name, "code": code.name, "reason": reason},
                    )

    def _start_handler(
        self, stream_id: int, head: RequestHead, *, websocket: bool, end: bool
    ) -> None:
        stream = Stream(self, stream_id, head, websocket=websocket)
        stream.request_has_body = not end
        if end:
            stream.closed = True
            stream._deliver(_EOF)
        self.streams[stream_id] = stream
        if self._on_stream is None:
            self.reset(stream_id, ErrorCode.REFUSED, "no handler")
            return
        task = asyncio.create_task(self._run_handler(stream), name=f"{self.name}-s{stream_id}")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _run_handler(self, stream: Stream) -> None:
        assert self._on_stream is not None
        try:
            await self._on_stream(stream)
        except StreamClosed:
            pass
        except Exception:
            log.exception("tunnel.handler_failed", extra={"tunnel": self.name})
            self.reset(stream.id, ErrorCode.INTERNAL, "handler failed")

    def _prune_and_wake(self) -> None:
        """After a flush: drop streams the protocol finished, wake writers with room.

        Runs after every batch sent, so it looks only at what can have changed:
        every stream the protocol holds is in ``self.streams`` (added as it
        opens, before any await), so the counts differ exactly when some stream
        here has ended in the protocol; and only blocked writers need waking.
        """
        connection = self.connection
        open_streams = connection.open_streams
        if not open_streams:
            self._idle.set()
        if len(self.streams) != open_streams:
            for sid, stream in list(self.streams.items()):
                if not connection.has_stream(sid):
                    # Fully closed in the protocol: nothing more will be sent or received.
                    del self.streams[sid]
                    stream.closed = True
                    stream._writable.set()
                    self._blocked_writers.discard(stream)
        if self._blocked_writers:
            for stream in list(self._blocked_writers):
                if stream._update_writable():
                    self._blocked_writers.discard(stream)
