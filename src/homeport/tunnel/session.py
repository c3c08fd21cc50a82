"""Drive a sans-I/O :class:`TunnelConnection` over a pipe, with callbacks.

The pipe (``tunnel/pipes.py``: raw frames on TLS, or binary WebSocket
messages) hands received bytes to the protocol, whose events go to their
:class:`Stream` (each stream has one owner; see ``stream.py``).  Whatever the
protocol has to say leaves in one batch per turn of the event loop, in the
scheduler's order; a timer pings and declares the link dead when pongs stop
coming; another resets readers that stall while holding the tunnel window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Awaitable, Callable

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
from homeport.tunnel.control import HANDLER_GRACE, ControlChannel, ControlHandler
from homeport.tunnel.pipes import Pipe, WebSocketLike, WebSocketPipe
from homeport.tunnel.stream import Stream, StreamClosed, StreamConsumer

log = logging.getLogger(__name__)

#: Largest binary message the writer produces (the receiver's limit is above it).
SEND_BATCH = 256 * 1024
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
_STREAM_EVENTS = frozenset(
    {
        DataReceived,
        ResponseReceived,
        StreamReset,
        WebSocketClosed,
        WebSocketMessageReceived,
    }
)


class TunnelSession:
    """One tunnel: a :class:`TunnelConnection` driven over a pipe, by callbacks.

    The pipe (``tunnel/pipes.py``) feeds :meth:`data_received`; what the
    protocol has to send goes out in one batch per turn of the event loop
    (:meth:`kick` schedules it), so a burst of small answers costs one write.
    Keepalive and the stalled-reader watchdog are timers.  ``run()`` returns
    when the tunnel is over, after every stream has been failed and every
    handler has had its chance to finish.
    """

    def __init__(
        self,
        pipe: Pipe | WebSocketLike,
        connection: TunnelConnection,
        *,
        on_stream: StreamHandler | None = None,
        on_open: Callable[[Stream], None] | None = None,
        on_goaway: Callable[[GoAwayReceived], None] | None = None,
        on_control: ControlHandler | None = None,
        ping_interval: float = 20.0,
        ping_timeout: float = 15.0,
        drain_timeout: float = DRAIN_TIMEOUT,
        name: str = "tunnel",
        control_grace: float = HANDLER_GRACE,
    ) -> None:
        # An aiohttp WebSocket is wrapped; anything else already is a pipe.
        self.pipe: Pipe = WebSocketPipe(pipe) if hasattr(pipe, "send_bytes") else pipe  # type: ignore[arg-type]
        self.connection = connection
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.streams: dict[int, Stream] = {}
        self.rtt: float | None = None
        self.closed = asyncio.Event()
        self.close_reason = ""
        #: Set as soon as the tunnel stops serving (before the pipe is closed,
        #: which a dead peer never acknowledges): no new streams from then on.
        self.ended = False
        self._on_stream = on_stream
        #: Add-on side, instead of ``on_stream``: takes each new stream at once, without a
        #: task (it sets ``stream.consumer`` and must release the stream when done).
        self._on_open = on_open
        self._on_goaway = on_goaway
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._drain_timeout = drain_timeout
        self._flush_scheduled = False
        self._write_paused = False
        self._read_paused = False
        self._drain_timer: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._watch_timer: asyncio.TimerHandle | None = None
        self._pipe_gone = asyncio.Event()
        self._idle = asyncio.Event()  # set whenever no stream is open
        self._handlers: set[asyncio.Task[None]] = set()
        self._last_pong = time.monotonic()
        self._ping_sent: dict[bytes, float] = {}
        #: Streams whose writers wait for the protocol to drain their queue: the
        #: only ones a flush needs to look at (see _prune_and_wake).
        self._blocked_writers: set[Stream] = set()
        #: Owner actions over this tunnel (tunnel/control.py): ``await control.request(...)``.
        self.control = ControlChannel(
            connection, self.kick, on_control, name=name, grace=control_grace
        )

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the tunnel until its pipe closes, then fail leftover streams."""
        self.pipe.start(self)
        self.kick()
        self._ping_timer = self.loop.call_later(0, self._guarded, "pinger", self._ping)
        try:
            await self._pipe_gone.wait()
        finally:
            self.ended = True
            for timer in (self._ping_timer, self._watch_timer, self._drain_timer):
                if timer is not None:
                    timer.cancel()
            if not self._pipe_gone.is_set():
                self.pipe.abort()  # run() was cancelled: the tunnel goes with it
            await self._shutdown()

    def _guarded(self, part: str, call: Callable[[], None]) -> None:
        """Run one of the session's own callbacks; a bug there ends the tunnel loudly.

        Without this the tunnel would just close: the peer would see "peer closed
        the tunnel" and nobody would learn why.  Type and frames only, as everywhere.
        """
        try:
            call()
        except Exception as error:
            self._internal_error(part, error)

    def _internal_error(self, part: str, error: Exception) -> None:
        self.close_reason = self.close_reason or f"internal error in {self.name}-{part}"
        log.error(
            "tunnel.task_failed",
            exc_info=error,
            extra={"tunnel": self.name, "task": f"{self.name}-{part}"},
        )
        self._end()

    def _flush_guarded(self) -> None:
        try:
            self._flush()
        except Exception as error:
            self._internal_error("writer", error)

    def _end(self) -> None:
        """Stop serving now and close the pipe after what is already written."""
        if self.ended:
            return
        self.ended = True
        self.pipe.close()

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
        self.closed.set()

    async def close(self, reason: str = "closing") -> None:
        self.close_reason = self.close_reason or reason
        self._flush()
        self._end()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self._pipe_gone.wait()
        if not self._pipe_gone.is_set():
            self.pipe.abort()

    def goaway(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        self.connection.goaway(code, reason)
        self.kick()

    async def drain(self, grace: float, reason: str = "draining") -> None:
        """Announce GOAWAY, let open streams finish (up to ``grace`` seconds), then close."""
        self.goaway(ErrorCode.NO_ERROR, reason)
        self._flush()  # the GOAWAY goes now: with no stream open we close at once
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while self.connection.open_streams and not self._pipe_gone.is_set():
                    self._idle.clear()
                    await self._idle.wait()
        await self.close("drained")

    # ------------------------------------------------------- pipe callbacks

    def data_received(self, data: bytes | memoryview) -> None:
        # _guarded("reader", ...) inlined: this runs for every read.
        try:
            self._receive(data)
        except Exception as error:
            self._internal_error("reader", error)

    def _receive(self, data: bytes | memoryview) -> None:
        if self.ended:
            return
        events = self.connection.receive_data(data)
        self._dispatch(events)
        if self._watch_timer is None and self.streams:
            self._watch_timer = self.loop.call_later(
                STALL_CHECK, self._guarded, "watchdog", self._watch
            )
        connection = self.connection
        if connection.terminated:
            self._flush()
            self._end()
            return
        if self._flush_scheduled:
            pass  # the flush this turn prunes and wakes too
        elif connection.has_output:
            self.kick()
        else:
            # Streams the peer just finished are pruned now, not at the next write.
            self._prune_and_wake()
        if connection.output_backlog > OUTPUT_BACKLOG_LIMIT and not self._read_paused:
            # A peer that does not read cannot make us queue answers without bound
            # (R-ADD-07): stop reading it until they are out, and not for ever.
            self._read_paused = True
            self.pipe.pause_reading()
            self._drain_timer = self.loop.call_later(self._drain_timeout, self._not_reading)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self.kick()

    def pipe_closed(self, reason: str) -> None:
        self.close_reason = self.close_reason or reason
        self.ended = True
        self._pipe_gone.set()

    def _not_reading(self) -> None:
        self._drain_timer = None
        self.close_reason = self.close_reason or "peer does not read"
        log.warning("tunnel.peer_not_reading", extra={"tunnel": self.name})
        self.pipe.abort()

    # -------------------------------------------------------------- streams

    def open_stream(
        self,
        head: RequestHead,
        *,
        websocket: bool,
        end_stream: bool,
        consumer: StreamConsumer | None = None,
        encoded: bytes | None = None,
    ) -> Stream:
        """Start a request (relay side); raises :class:`StreamClosed` when refused.

        The caller owns the stream: use it as ``with session.open_stream(...) as
        stream:`` (or call ``release()`` when done) so that it is released
        however the exchange ends.  With a ``consumer``, events go to its
        callbacks instead of the stream's inbox.
        """
        if self.ended:  # set before ``closed`` ever is (see run)
            raise StreamClosed(ErrorCode.REFUSED, "tunnel closed")
        try:
            stream_id = self.connection.open_stream(
                head, websocket=websocket, end_stream=end_stream, encoded=encoded
            )
        except StreamViolation as exc:
            raise StreamClosed(exc.code, exc.reason) from None
        stream = Stream(self, stream_id, head, websocket=websocket, consumer=consumer)
        self.streams[stream_id] = stream
        self.kick()
        return stream

    def acknowledge(self, stream_id: int, size: int) -> None:
        connection = self.connection
        connection.acknowledge(stream_id, size)
        # Most acknowledgements only count and send nothing; a flush may be due anyway.
        if not self._flush_scheduled and connection.has_output:
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
        """There is output: send it at the end of this turn of the loop (one batch)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_guarded)

    # ---------------------------------------------------------------- writing

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pipe_gone.is_set():
            return
        pipe = self.pipe
        connection = self.connection
        while not self._write_paused:
            data = connection.data_to_send(SEND_BATCH)
            if not data:
                break
            pipe.write(data)
            if len(data) < SEND_BATCH and not connection.output_backlog:
                # A short batch with no control output left: the streams' queues
                # are empty or wait for credit, so another call would find nothing.
                break
        if self._read_paused and self.connection.output_backlog <= OUTPUT_BACKLOG_LIMIT:
            self._read_paused = False
            if self._drain_timer is not None:
                self._drain_timer.cancel()
                self._drain_timer = None
            pipe.resume_reading()
        self._prune_and_wake()

    # ----------------------------------------------------------------- timers

    def _ping(self) -> None:
        now = time.monotonic()
        if now - self._last_pong > self._ping_interval + self._ping_timeout:
            self.close_reason = self.close_reason or "keepalive timeout"
            log.warning("tunnel.keepalive_timeout", extra={"tunnel": self.name})
            self.pipe.abort()
            return
        # Forget pings that were never answered so the map stays bounded.
        horizon = now - self._ping_interval - self._ping_timeout
        for key in [k for k, sent in self._ping_sent.items() if sent < horizon]:
            del self._ping_sent[key]
        payload = struct.pack(">Q", time.monotonic_ns())
        self._ping_sent[payload] = now
        self.connection.ping(payload)
        self.kick()
        self._ping_timer = self.loop.call_later(
            self._ping_interval, self._guarded, "pinger", self._ping
        )

    def _watch(self) -> None:
        """Reset the longest-stalled streams while unread bytes hold half the tunnel window.

        Runs STALL_CHECK after bytes arrived, and again while under pressure; an
        idle tunnel never wakes it.
        """
        self._watch_timer = None
        window = self.connection.settings.connection_window
        held = sum(stream.held for stream in self.streams.values())
        if held * 2 < window:
            return
        self._watch_timer = self.loop.call_later(
            STALL_CHECK, self._guarded, "watchdog", self._watch
        )
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
        streams = self.streams
        for event in events:
            try:
                kind = type(event)
                if kind in _STREAM_EVENTS:
                    # Stream events first, by exact type: they are nearly all events.
                    stream_id = event.stream_id  # type: ignore[attr-defined]
                    if kind is StreamReset:
                        stream = streams.pop(stream_id, None)
                    else:
                        stream = streams.get(stream_id)
                    if stream is not None:  # else its owner released it: nothing waits for this
                        stream.received(event)
                else:
                    self._dispatch_other(event)
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

    def _dispatch_other(self, event: Event) -> None:
        kind = type(event)
        if kind is StreamOpened:
            assert isinstance(event, StreamOpened)
            self._start_handler(
                event.stream_id, event.head, websocket=event.websocket, end=event.end_stream
            )
        elif kind is PongReceived:
            assert isinstance(event, PongReceived)
            # Only an answer to a ping we sent proves the peer reads what we
            # send: unsolicited pongs must not keep a deaf peer alive (R-ADD-07).
            sent = self._ping_sent.pop(event.payload, None)
            if sent is not None:
                self._last_pong = time.monotonic()
                self.rtt = self._last_pong - sent
        elif kind is GoAwayReceived:
            assert isinstance(event, GoAwayReceived)
            if self._on_goaway is not None:
                self._on_goaway(event)
        elif kind is ControlRequested:
            assert isinstance(event, ControlRequested)
            self.control.requested(event)
        elif kind is ControlAnswered:
            assert isinstance(event, ControlAnswered)
            self.control.answered(event)
        elif kind is ConnectionTerminated:
            assert isinstance(event, ConnectionTerminated)
            self.close_reason = f"protocol error: {event.code.name}: {event.reason}"
            log.warning(
                "tunnel.terminated",
                extra={"tunnel": self.name, "code": event.code.name, "reason": event.reason},
            )

    def _start_handler(
        self, stream_id: int, head: RequestHead, *, websocket: bool, end: bool
    ) -> None:
        stream = Stream(self, stream_id, head, websocket=websocket)
        stream.request_has_body = not end
        self.streams[stream_id] = stream
        if self._on_open is not None:
            self._on_open(stream)  # a failure here resets this stream only (_dispatch)
            return
        if end:
            stream.opened_complete()
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
