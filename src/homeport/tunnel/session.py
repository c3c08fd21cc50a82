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

from homeport.protocol import (
    ConnectionTerminated,
    ControlAnswered,
    ControlRequested,
    DataReceived,
    ErrorCode,
    Event,
    GoAwayReceived,
    PongReceived,
    RequestHead,
    ResponseReceived,
    StreamOpened,
    StreamReset,
    StreamViolation,
    TunnelConnection,
    WebSocketClosed,
    WebSocketMessageReceived,
)
from homeport.tunnel.control import ControlChannel, ControlHandler
from homeport.tunnel.stream import Stream, StreamClosed, StreamConsumer

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
#: The reader stops taking the peer's frames while this much of our own control
#: output (answers, window updates, resets) waits to be sent: a peer that does
#: not read cannot make us queue answers without bound (R-ADD-07) ...
OUTPUT_BACKLOG_LIMIT = 64 * 1024
#: ... and a peer that does not drain it within this many seconds is dropped.
DRAIN_TIMEOUT = 30.0

StreamHandler = Callable[[Stream], Awaitable[None]]
#: Events about one stream, handed to that stream's :meth:`Stream.received`.
_STREAM_EVENTS = (
    DataReceived,
    ResponseReceived,
    StreamReset,
    WebSocketClosed,
    WebSocketMessageReceived,
)


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
        on_goaway: Callable[[GoAwayReceived], None] | None = None,
        on_control: ControlHandler | None = None,
        ping_interval: float = 20.0,
        ping_timeout: float = 15.0,
        drain_timeout: float = DRAIN_TIMEOUT,
        name: str = "tunnel",
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
        self._drain_timeout = drain_timeout
        self._output_taken = asyncio.Event()  # the writer took the control backlog
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
        self.control = ControlChannel(connection, self.kick, on_control, name=name)

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
            stream.ended(error)
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

    def open_stream(
        self,
        head: RequestHead,
        *,
        websocket: bool,
        end_stream: bool,
        consumer: StreamConsumer | None = None,
    ) -> Stream:
        """Start a request (relay side); raises :class:`StreamClosed` when refused.

        The caller owns the stream: use it as ``with session.open_stream(...) as
        stream:`` (or call ``release()`` when done) so that it is released
        however the exchange ends.  With a ``consumer``, events go to its
        callbacks instead of the stream's inbox.
        """
        if self.ended or self.closed.is_set():
            raise StreamClosed(ErrorCode.REFUSED, "tunnel closed")
        try:
            stream_id = self.connection.open_stream(
                head, websocket=websocket, end_stream=end_stream
            )
        except StreamViolation as exc:
            raise StreamClosed(exc.code, exc.reason) from None
        stream = Stream(self, stream_id, head, websocket=websocket, consumer=consumer)
        self.streams[stream_id] = stream
        self.kick()
        return stream

    def acknowledge(self, stream_id: int, size: int) -> None:
        self.connection.acknowledge(stream_id, size)
        if self.connection.has_output:  # most acknowledgements only count, send nothing
            self.kick()

    def reset(self, stream_id: int, code: ErrorCode, reason: str) -> None:
        self.connection.reset_stream(stream_id, code, reason)
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.ended(StreamClosed(code, reason or "reset locally"))
        self.kick()

    def release(self, stream_id: int, code: ErrorCode, reason: str) -> None:
        """The stream's owner is done: end what is still open of it (see Stream.release).

        Output this side has ended keeps its place and goes out first; the
        peer is then told to stop sending (``code``), and the stream is gone.
        """
        stream = self.streams.pop(stream_id, None)
        if not self.connection.has_stream(stream_id):
            if stream is not None:
                stream.finished()
            return
        self.connection.release_stream(stream_id, code, reason)
        if stream is not None:
            stream.ended(StreamClosed(ErrorCode.CANCEL, "released"))
        self.kick()

    def writer_blocked(self, stream: Stream) -> None:
        """``stream``'s writer waits for the protocol to drain its queue (see _prune_and_wake)."""
        self._blocked_writers.add(stream)

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
                backlog = self.connection.output_backlog > OUTPUT_BACKLOG_LIMIT
                if backlog and not await self._backlog_drained():
                    return
                # Let every other task run between two messages: ws.receive() does not
                # suspend while messages are waiting, so a peer sending without pause
                # would otherwise keep the loop, and every other home, waiting.
                await asyncio.sleep(0)
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

    async def _backlog_drained(self) -> bool:
        """Wait until the writer takes our control backlog; False if the peer stopped reading."""
        self.kick()
        try:
            async with asyncio.timeout(self._drain_timeout):
                while self.connection.output_backlog > OUTPUT_BACKLOG_LIMIT:
                    self._output_taken.clear()
                    await self._output_taken.wait()
        except TimeoutError:
            self.close_reason = "peer does not read"
            log.warning("tunnel.peer_not_reading", extra={"tunnel": self.name})
            return False
        return True

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        while data := self.connection.data_to_send(SEND_BATCH):
            self._output_taken.set()
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

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            try:
                self._dispatch_one(event)
            except Exception:
                # Bulkhead (R-MT-15): one exchange's surprise must never end the
                # tunnel every other person of this home is using.  The stream
                # it concerns is reset; everything else carries on.
                stream_id = getattr(event, "stream_id", 0)
                log.exception(
                    "tunnel.event_failed",
                    extra={"tunnel": self.name, "event": type(event).__name__, "stream": stream_id},
                )
                if stream_id:
                    self.reset(stream_id, ErrorCode.INTERNAL, "internal error")

    def _dispatch_one(self, event: Event) -> None:
        if isinstance(event, _STREAM_EVENTS):
            if isinstance(event, StreamReset):
                stream = self.streams.pop(event.stream_id, None)
            else:
                stream = self.streams.get(event.stream_id)
            if stream is not None:  # else its owner released it: nothing waits for this
                stream.received(event)
            return
        match event:
            case StreamOpened(stream_id=sid, head=head, websocket=ws, end_stream=end):
                self._start_handler(sid, head, websocket=ws, end=end)
            case PongReceived(payload=payload):
                # Only an answer to a ping we sent proves the peer reads what we
                # send: unsolicited pongs must not keep a deaf peer alive (R-ADD-07).
                sent = self._ping_sent.pop(payload, None)
                if sent is not None:
                    self._last_pong = time.monotonic()
                    self.rtt = self._last_pong - sent
            case GoAwayReceived() as goaway:
                if self._on_goaway is not None:
                    self._on_goaway(goaway)
            case ControlRequested() as request:
                self.control.requested(request)
            case ControlAnswered() as answer:
                self.control.answered(answer)
            case ConnectionTerminated(code=code, reason=reason):
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
            stream.opened_complete()
        self.streams[stream_id] = stream
        if self._on_stream is None:
            self.reset(stream_id, ErrorCode.REFUSED, "no handler")
            return
        task = asyncio.create_task(self._run_handler(stream), name=f"{self.name}-s{stream_id}")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _run_handler(self, stream: Stream) -> None:
        """The handler owns the stream; whatever it leaves open is released after it."""
        assert self._on_stream is not None
        try:
            await self._on_stream(stream)
        except StreamClosed:
            pass
        except Exception:
            log.exception("tunnel.handler_failed", extra={"tunnel": self.name})
            stream.reset(ErrorCode.INTERNAL, "handler failed")
        finally:
            # A response sent in full still goes out; the rest of a request body
            # Home Assistant did not read is refused (HTTP/2's RST_STREAM NO_ERROR).
            stream.release(ErrorCode.NO_ERROR, "response complete")

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
                    stream.finished()
                    self._blocked_writers.discard(stream)
        if self._blocked_writers:
            for stream in list(self._blocked_writers):
                if stream.update_writable():
                    self._blocked_writers.discard(stream)
