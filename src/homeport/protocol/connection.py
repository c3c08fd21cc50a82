"""The tunnel's state machine: many streams over one byte stream, sans I/O.

Bytes in (:meth:`TunnelConnection.receive_data`), events out; actions in
(``open_stream``, ``send_data`` …), bytes out (:meth:`data_to_send`).  No
asyncio, no sockets: the relay and the add-on wrap it in a thin I/O layer,
which keeps every protocol rule testable and fuzzable on its own.

Flow control works like HTTP/2's: every stream and the tunnel as a whole have
credit windows granted by the receiver.  A receiver only returns credit once
its application has *consumed* the bytes (:meth:`acknowledge`), so a stalled
reader — a paused camera tab — stops its own stream at the window, never the
others, and neither side ever buffers more than it granted (plus, for a
WebSocket, at most ``max_ws_message`` of a message larger than the window:
see :meth:`TunnelConnection._prepay`).

Sending is scheduled, not FIFO: queued output is cut into chunks and taken
round-robin across the streams of a priority class, the classes sharing the
tunnel by weight (``protocol/scheduler.py``), so a large download cannot
delay a small API call or a WebSocket message queued behind it, and no class
starves.
"""

from __future__ import annotations

import enum
import json
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from homeport.protocol import heads
from homeport.protocol.errors import ErrorCode, ProtocolViolation, StreamViolation
from homeport.protocol.events import (
    ConnectionTerminated,
    ControlAnswered,
    ControlRequested,
    DataReceived,
    Event,
    GoAwayReceived,
    PongReceived,
    ResponseReceived,
    StreamOpened,
    StreamReset,
    WebSocketClosed,
    WebSocketMessageReceived,
)
from homeport.protocol.frames import (
    HEADER,
    HEADER_SIZE,
    MAX_STREAM_ID,
    Flags,
    FrameDecoder,
    FrameType,
    encode_frame,
)
from homeport.protocol.scheduler import ClassScheduler

#: Largest frame payload every peer must accept; heads must fit in one frame.
MAX_FRAME_SIZE = 64 * 1024
#: Credit each side has before the peer's SETTINGS arrive.
DEFAULT_WINDOW = 256 * 1024
#: Interactive traffic counts as moving until this many bytes of other streams
#: have been sent since its last frame either way.
INTERACTIVE_HORIZON = 4 * 1024 * 1024
MAX_WINDOW = 2**31 - 1
MAX_CLOSE_REASON = 123  # RFC 6455 §5.5: control payload ≤ 125 bytes incl. the code

_SETTING = struct.Struct(">HI")
# Flags and frame types as plain ints for the per-frame path (``&`` and ``|`` on
# an IntFlag run Python code).
_END_STREAM = int(Flags.END_STREAM)
_WEBSOCKET = int(Flags.WEBSOCKET)
_TEXT = int(Flags.TEXT)
_FIN = int(Flags.FIN)
_ACK = int(Flags.ACK)
_DATA = int(FrameType.DATA)
_WS_MESSAGE = int(FrameType.WS_MESSAGE)
_U32 = struct.Struct(">I")
_RESET = struct.Struct(">I")
_GOAWAY = struct.Struct(">II")
_CLOSE = struct.Struct(">H")

SETTING_INITIAL_STREAM_WINDOW = 1
SETTING_MAX_CONCURRENT_STREAMS = 2
#: Value 1: the sender answers CONTROL requests.  An older relay does not send
#: it, and would end the tunnel on a CONTROL frame (an unknown type to it).
SETTING_CONTROL = 3

#: Largest JSON body of a CONTROL request or reply, in bytes.
MAX_CONTROL_BODY = 8 * 1024
#: Control requests an add-on may have unanswered at once; the relay answers
#: ``busy`` to more.
MAX_PENDING_CONTROL = 4
#: Error code of the reply the relay's connection gives a request it cannot read.
CONTROL_MALFORMED = "malformed"
CONTROL_BUSY = "busy"

#: PINGs a peer may send: a burst, then this many a second.  Each one makes us
#: queue an answer, so an unbounded rate is an amplifier (HTTP/2's ping flood,
#: CVE-2019-9512).  Keepalives need one every few seconds at most.
PING_BURST = 32
PING_RATE = 4.0
#: CONTROL requests an add-on may send: owner actions are clicks, not a stream.
CONTROL_BURST = 16
CONTROL_RATE = 1.0
#: Frames that carry no data and ask for no answer (WINDOW_UPDATE, pongs, RESET,
#: GOAWAY) cost CPU per frame, not per byte: a peer sending nothing else makes
#: us work twenty times harder per byte than for a download.  A real peer sends
#: a window update per quarter window consumed, far below this.
SMALL_FRAME_BURST = 8192
SMALL_FRAME_RATE = 8192.0


class Role(enum.Enum):
    """The relay opens streams (browser requests); the add-on answers them."""

    RELAY = "relay"
    ADDON = "addon"


@dataclass(frozen=True, slots=True)
class Settings:
    """What this side grants and accepts.  Sizes in bytes."""

    initial_stream_window: int = 1024 * 1024
    connection_window: int = 8 * 1024 * 1024
    max_concurrent_streams: int = 256
    max_ws_message: int = 16 * 1024 * 1024
    #: Largest chunk this side sends at once: smaller is fairer, larger is cheaper.
    chunk_size: int = 32 * 1024
    #: While interactive traffic moves, a less urgent stream keeps at most this many
    #: bytes in flight (see TunnelConnection._in_flight_budget).
    bulk_in_flight: int = 512 * 1024
    #: Answer CONTROL requests (the relay, when it has a handler): advertised in SETTINGS.
    accept_control: bool = False
    #: Received bytes whose credit went back before the application consumed
    #: them (WebSocket messages larger than the window, see _prepay), summed over
    #: every stream: with the connection window, the most a peer can make this
    #: side hold.  Must hold one whole maximal message.
    max_prepaid: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 0 < self.chunk_size <= MAX_FRAME_SIZE:
            raise ValueError("chunk_size must be within (0, MAX_FRAME_SIZE]")
        if self.bulk_in_flight < self.chunk_size:
            raise ValueError("bulk_in_flight must hold at least one chunk")
        for window in (self.initial_stream_window, self.connection_window):
            if not DEFAULT_WINDOW <= window <= MAX_WINDOW:
                raise ValueError("windows must be within [DEFAULT_WINDOW, 2**31-1]")
        if self.max_prepaid < self.max_ws_message:
            raise ValueError("max_prepaid must hold one whole maximal message")


class RateBudget:
    """A token bucket: ``burst`` at once, then ``rate`` a second (clock injected)."""

    __slots__ = ("_burst", "_clock", "_last", "_rate", "_tokens")

    def __init__(self, burst: int, rate: float, clock: Callable[[], float]) -> None:
        self._burst = float(burst)
        self._rate = rate
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def empty(self) -> None:
        """Spend every token now (a penalty: the next one comes at the rate)."""
        self._tokens = 0.0
        self._last = self._clock()

    def take(self) -> bool:
        """Spend one token; False when the bucket is empty."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


# What a queued item is (plain ints: compared once per chunk sent).
_FRAME = 0  # a pre-encoded frame that needs no credit (head, close, end marker)
_DATA_ITEM = 1
_WS_ITEM = 2


class _Item:
    __slots__ = ("data", "end", "kind", "offset", "text")

    def __init__(self, kind: int, data: bytes, *, end: bool = False, text: bool = False) -> None:
        self.kind = kind
        self.data = data
        self.offset = 0
        self.end = end
        self.text = text


class _Stream:
    __slots__ = (
        "discarding",
        "id",
        "local_closed",
        "local_ending",
        "prepaid",
        "priority",
        "queue",
        "queued_bytes",
        "recv_window",
        "release",
        "remote_closed",
        "response_seen",
        "scheduled",
        "send_window",
        "unacked",
        "websocket",
        "ws_buffer",
        "ws_open",
        "ws_partial",
        "ws_prepaid",
        "ws_size",
        "ws_text",
        "ws_unprepaid",
    )

    def __init__(self, stream_id: int, priority: int, websocket: bool, send: int, recv: int):
        self.id = stream_id
        self.priority = priority
        self.websocket = websocket  # upgrade requested
        self.ws_open = False  # upgrade accepted (101)
        self.response_seen = False
        self.send_window = send
        self.recv_window = recv
        self.unacked = 0
        self.prepaid = 0  # delivered bytes whose credit went back before acknowledgement
        self.queue: deque[_Item] = deque()
        self.queued_bytes = 0
        self.scheduled = False
        self.local_ending = False  # an end (END_STREAM / WS close) is queued
        self.local_closed = False  # ... and has been framed
        self.remote_closed = False
        # Released by its owner while output was still queued: the RESET to send
        # once that output is out, and received bytes are paid back unread.
        self.release: tuple[ErrorCode, str] | None = None
        self.discarding = False
        # One growing buffer, not a list of fragments: a flood of tiny (or empty)
        # fragments must cost no more memory than the bytes they carry.
        self.ws_buffer = bytearray()
        self.ws_partial = False  # a message has started and not finished
        self.ws_size = 0
        self.ws_text = False
        self.ws_prepaid = 0  # bytes of the partial message whose credit went back early
        self.ws_unprepaid = 0  # bytes of the partial message still charged to the windows


class TunnelConnection:
    """One tunnel, seen from one side.  See the module docstring."""

    def __init__(
        self,
        role: Role,
        settings: Settings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        version: int = heads.LATEST.version,
    ) -> None:
        self.role = role
        #: The header blocks of the protocol version the handshake agreed (heads.py).
        self.header_format = heads.HEADER_FORMATS[version]
        self._relay = role is Role.RELAY  # read per frame: cheaper than the enum
        self.settings = settings or Settings()
        # Budgets for what the peer can make us answer (see PING_RATE, CONTROL_RATE).
        self._ping_budget = RateBudget(PING_BURST, PING_RATE, clock)
        self._control_budget = RateBudget(CONTROL_BURST, CONTROL_RATE, clock)
        self._small_frame_budget = RateBudget(SMALL_FRAME_BURST, SMALL_FRAME_RATE, clock)
        #: Bytes of large WebSocket messages held or reserved for the peer, over every
        #: stream: prepaid and partial ones (see Settings.max_prepaid and _prepay).
        self._message_reserve = 0
        self._decoder = FrameDecoder(MAX_FRAME_SIZE)
        self._chunk_size = self.settings.chunk_size
        self._streams: dict[int, _Stream] = {}
        self._highest_stream_id = 0
        self._next_stream_id = 1
        self._control = bytearray()
        self._scheduler: ClassScheduler[_Stream] = ClassScheduler()
        self._queues = self._scheduler.queues
        self._blocked_on_stream: set[int] = set()
        self._blocked_on_connection: list[_Stream] = []
        # Credit we may still use to send, and credit we granted the peer.
        self._send_window = DEFAULT_WINDOW
        self._recv_window = self.settings.connection_window
        self._unacked = 0
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_streams = self.settings.max_concurrent_streams
        self._settings_received = False
        # Bytes of less urgent output sent since interactive traffic last moved.
        self._since_interactive = INTERACTIVE_HORIZON
        self._goaway_sent = False
        self._goaway_received = False
        self.terminated = False
        # CONTROL: whether the peer answers requests, the ids of ours it has not
        # answered yet (add-on), and the ids of its that we have not (relay).
        self._peer_accepts_control = False
        self._next_control_id = 1
        self._control_sent: set[int] = set()
        self._control_received: set[int] = set()
        self._send_settings()

    # ------------------------------------------------------------------ state

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def accepting_streams(self) -> bool:
        """False once either side announced GOAWAY or the tunnel failed."""
        return not (self._goaway_sent or self._goaway_received or self.terminated)

    def stream_ids(self) -> list[int]:
        return list(self._streams)

    def has_stream(self, stream_id: int) -> bool:
        return stream_id in self._streams

    @property
    def peer_settings_received(self) -> bool:
        return self._settings_received

    @property
    def peer_accepts_control(self) -> bool:
        """The peer's SETTINGS said it answers CONTROL requests (False until they arrive)."""
        return self._peer_accepts_control

    @property
    def control_requests_pending(self) -> int:
        return len(self._control_sent)

    @property
    def output_backlog(self) -> int:
        """Bytes of control output (answers, updates, resets) not yet taken by the I/O layer.

        The I/O layer stops reading while this is large: what a peer makes us
        answer can then only grow as fast as the peer reads (R-ADD-07).
        """
        return len(self._control)

    @property
    def message_reserve(self) -> int:
        """Bytes of large WebSocket messages the peer makes us hold (see Settings.max_prepaid)."""
        return self._message_reserve

    def buffered(self, stream_id: int) -> int:
        """Bytes queued on a stream but not yet framed: the I/O layer's backpressure signal."""
        stream = self._streams.get(stream_id)
        return stream.queued_bytes if stream else 0

    # ---------------------------------------------------------------- sending

    def open_stream(
        self,
        head: heads.RequestHead,
        *,
        websocket: bool,
        end_stream: bool,
        encoded: bytes | None = None,
    ) -> int:
        """Start a request (relay only).  Raises :class:`StreamViolation` when refused.

        ``encoded``: the head already encoded (``heads.encode_request_fields``, its
        fields with this tunnel's :attr:`header_format`), whose method, target and
        priority ``head`` repeats; the data plane passes it to skip a decode and an
        encode of every field.
        """
        if not self._relay:
            raise RuntimeError("only the relay opens streams")
        if not self.accepting_streams:
            raise StreamViolation(0, ErrorCode.REFUSED, "tunnel is closing")
        if len(self._streams) >= self._peer_max_streams:
            raise StreamViolation(0, ErrorCode.TOO_MANY_STREAMS, "too many concurrent streams")
        if self._next_stream_id > MAX_STREAM_ID:
            raise StreamViolation(0, ErrorCode.REFUSED, "stream ids exhausted")
        if encoded is None:
            encoded = heads.encode_request_head(head, self.header_format)
        payload = encoded
        if len(payload) > MAX_FRAME_SIZE:
            raise StreamViolation(0, ErrorCode.HEAD_TOO_LARGE, "request head too large")
        stream_id = self._next_stream_id
        self._next_stream_id += 1
        self._highest_stream_id = stream_id
        stream = _Stream(
            stream_id,
            head.priority,
            websocket,
            self._peer_initial_window,
            self.settings.initial_stream_window,
        )
        self._streams[stream_id] = stream
        flags = (_WEBSOCKET if websocket else 0) | (_END_STREAM if end_stream else 0)
        # OPEN frames bypass the scheduler: the add-on requires stream ids in
        # increasing order, and per-priority queues would reorder them.  Going
        # out with the control frames also keeps an OPEN ahead of its stream's
        # own frames, and ahead of any RESET for it.
        self._control += encode_frame(FrameType.OPEN, stream_id, payload, flags)
        stream.local_ending = stream.local_closed = end_stream
        return stream_id

    def send_response(self, stream_id: int, head: heads.ResponseHead, *, end_stream: bool) -> None:
        """Answer a request (add-on only); status 101 accepts a WebSocket upgrade."""
        if self._relay:
            raise RuntimeError("only the add-on sends responses")
        stream = self._writable(stream_id)
        if stream.response_seen:
            raise RuntimeError("response already sent")
        if 100 <= head.status < 200 and head.status != 101:
            # The relay resets a stream on any interim response: refuse it here.
            raise heads.HeadError(f"interim response {head.status} is not carried")
        payload = heads.encode_response_head(head, self.header_format)
        if len(payload) > MAX_FRAME_SIZE:
            raise StreamViolation(stream_id, ErrorCode.HEAD_TOO_LARGE, "response head too large")
        if head.status == 101 and (not stream.websocket or end_stream):
            raise RuntimeError("101 only answers a WebSocket upgrade")
        stream.response_seen = True  # only now: a refused call must leave no trace
        if head.status == 101:
            stream.ws_open = True
        elif stream.websocket:
            stream.remote_closed = True  # a refused upgrade: the relay sends nothing more
        flags = _END_STREAM if end_stream else 0
        frame = encode_frame(FrameType.RESPONSE, stream_id, payload, flags)
        self._enqueue(stream, _Item(_FRAME, frame, end=end_stream))
        stream.local_ending = end_stream

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Queue body bytes; they leave as credit allows (see :meth:`buffered`)."""
        stream = self._writable(stream_id)
        if stream.ws_open:
            raise RuntimeError("stream carries WebSocket messages, not body data")
        if not self._relay and not stream.response_seen:
            raise RuntimeError("send the response head before its body")
        if data:
            stream.queued_bytes += len(data)
        if end_stream:
            stream.local_ending = True
        if data or end_stream:
            # One item: END_STREAM rides on the last chunk instead of waiting a
            # whole round-robin turn (behind other streams' chunks) on its own.
            self._enqueue(stream, _Item(_DATA_ITEM, data, end=end_stream))

    def send_ws_message(self, stream_id: int, data: bytes, *, text: bool) -> None:
        stream = self._writable(stream_id)
        if not stream.ws_open:
            raise RuntimeError("WebSocket not established on this stream")
        stream.queued_bytes += len(data)
        self._enqueue(stream, _Item(_WS_ITEM, data, text=text))

    def send_ws_close(self, stream_id: int, code: int, reason: str = "") -> None:
        """Queue a WebSocket close after any queued messages (order is kept)."""
        stream = self._writable(stream_id)
        if not stream.ws_open:
            raise RuntimeError("WebSocket not established on this stream")
        # Cut on a character boundary: a close reason must stay valid UTF-8.
        raw_reason = reason.encode("utf-8")[:MAX_CLOSE_REASON]
        raw_reason = raw_reason.decode("utf-8", "ignore").encode("utf-8")
        stream.local_ending = True
        payload = _CLOSE.pack(code & 0xFFFF) + raw_reason
        item = _Item(_FRAME, encode_frame(FrameType.WS_CLOSE, stream_id, payload), end=True)
        self._enqueue(stream, item)

    def priority(self, stream_id: int) -> int | None:
        stream = self._streams.get(stream_id)
        return stream.priority if stream else None

    def set_priority(self, stream_id: int, priority: int) -> None:
        """Move a stream to another class for what *this* side sends.

        Local only, nothing goes on the wire: the add-on learns from a response
        (an MJPEG stream, a large download) what the request head could not say.
        What the stream has queued keeps its order; only its turns move.
        """
        if not 0 <= priority <= heads.PRIORITY_BULK:
            raise ValueError("priority out of range")
        stream = self._streams.get(stream_id)
        if stream is None or stream.priority == priority:
            return
        queued = stream in self._queues[stream.priority]
        if queued:
            self._queues[stream.priority].remove(stream)
        stream.priority = priority
        if queued:
            self._queues[priority].append(stream)

    def reset_stream(self, stream_id: int, code: ErrorCode, reason: str = "") -> None:
        """Abort a stream at once, dropping anything still queued for it."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        self._forget(stream)
        self._control += _reset_frame(stream_id, code, reason)

    def release_stream(
        self, stream_id: int, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = ""
    ) -> None:
        """The application is done with a stream: end what is still open of it.

        If this side has ended its output (END_STREAM or a WebSocket close is
        queued), that output still goes out in order and a RESET with ``code``
        follows it (HTTP/2's RST_STREAM NO_ERROR after a complete response, for
        a request body the server will not read); until then, whatever the peer
        sends on it is paid back unread.  Output this side never ended is cut
        at once: the stream is reset with CANCEL.
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if stream.local_ending and stream.queue:
            stream.release = (code, reason)
            stream.discarding = True
            return
        if stream.local_closed and stream.remote_closed:
            self._forget(stream)
        elif stream.local_ending:
            self.reset_stream(stream_id, code, reason)
        else:
            self.reset_stream(stream_id, ErrorCode.CANCEL, "abandoned")

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The application consumed ``size`` received bytes: return the credit.

        Bytes of a stream that has ended were paid back when it was forgotten,
        so acknowledging them later is a no-op.
        """
        if size <= 0:
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # _forget paid back everything outstanding already
        prepaid = min(size, stream.prepaid)
        stream.prepaid -= prepaid
        self._message_reserve -= prepaid
        size -= prepaid
        # Never return more than the peer used: a double acknowledgement must
        # not let the peer exceed the windows we configured.
        held = (
            self.settings.initial_stream_window
            - stream.recv_window
            - stream.unacked
            - stream.ws_unprepaid
        )
        size = min(size, held)
        if size > 0:
            if stream.remote_closed:
                # Nothing more will arrive, so no WINDOW_UPDATE; but count the
                # bytes as returned, or _forget would pay them back a second time.
                stream.recv_window += size
            else:
                stream.unacked += size
                if stream.unacked >= self.settings.initial_stream_window // 4:
                    self._grant_stream(stream)
            self._grant_connection(size)
        if prepaid and stream.ws_unprepaid:
            self._prepay(stream)  # budget freed: let a stuck partial message go on

    def send_control_request(self, body: dict[str, Any]) -> int:
        """Ask the relay for an owner action (add-on only); returns the request id.

        Raises :class:`RuntimeError` when the relay has not advertised CONTROL
        (or too many requests are unanswered), :class:`ValueError` for a body
        over :data:`MAX_CONTROL_BODY`.
        """
        if self.role is not Role.ADDON:
            raise RuntimeError("only the add-on sends control requests")
        if self.terminated or not self._peer_accepts_control:
            raise RuntimeError("the relay does not accept control requests")
        if len(self._control_sent) >= MAX_PENDING_CONTROL:
            raise RuntimeError("too many control requests unanswered")
        payload = _control_payload(self._next_control_id, body)
        request_id = self._next_control_id
        self._next_control_id = request_id % 0xFFFFFFFF + 1
        self._control_sent.add(request_id)
        self._control += encode_frame(FrameType.CONTROL, 0, payload)
        return request_id

    def send_control_reply(self, request_id: int, body: dict[str, Any]) -> None:
        """Answer a :class:`ControlRequested` (relay only), exactly once."""
        if request_id not in self._control_received:
            raise RuntimeError(f"no control request {request_id} to answer")
        payload = _control_payload(request_id, body)
        self._control_received.discard(request_id)
        if not self.terminated:
            self._control += encode_frame(FrameType.CONTROL, 0, payload, Flags.ACK)

    def ping(self, payload: bytes) -> None:
        if len(payload) != 8:
            raise ValueError("ping payload is 8 bytes")
        self._control += encode_frame(FrameType.PING, 0, payload)

    def goaway(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Announce that no new stream will be accepted; open streams finish."""
        if self._goaway_sent:
            return
        self._goaway_sent = True
        payload = _GOAWAY.pack(self._highest_stream_id, code) + reason.encode()[:256]
        self._control += encode_frame(FrameType.GOAWAY, 0, payload)

    @property
    def has_output(self) -> bool:
        """True if :meth:`data_to_send` may have something (cheap; no scheduling)."""
        return bool(self._control) or any(self._scheduler.queues)

    def data_to_send(self, limit: int = 1024 * 1024) -> bytes:
        """Bytes to write now: control frames first, then scheduled stream output.

        Stops at the first frame boundary at or past ``limit``, so the result
        exceeds it by at most one turn (a head and a chunk: two frames); call
        again until it returns ``b""``.  Control frames are bounded too (OPEN
        heads travel with them), keeping every batch within what the peer's
        transport accepts as one message.
        """
        out = self._control
        if len(out) > limit:
            cut = _frame_boundary(out, limit)
            self._control = out[cut:]
            # Stream frames wait: one may belong to a stream whose OPEN is still queued.
            return bytes(out[:cut])
        # Parts are joined once at the end: a payload is copied once, into the
        # result, and a lone part that is already bytes is returned as it is.
        parts: list[bytes | bytearray | memoryview]
        if out:
            self._control = bytearray()
            parts = [out]
            size = len(out)
        else:
            parts = []
            size = 0
        scheduler = self._scheduler
        queues = self._queues
        chunk = self._chunk_size
        while size < limit:
            priority = scheduler.next_class(chunk)
            if priority is None:
                break
            queue = queues[priority]
            stream = queue.popleft()
            sent, written = self._emit_one(stream, parts)
            size += written
            if written:
                scheduler.charge(priority, written)
                if priority == heads.PRIORITY_INTERACTIVE:
                    self._since_interactive = 0
                else:
                    self._since_interactive += written
            if sent:
                if stream.queue:
                    queue.append(stream)  # round robin within the class
                else:
                    stream.scheduled = False
                    self._maybe_forget(stream)
        if len(parts) == 1 and type(parts[0]) is bytes:
            return parts[0]
        return b"".join(parts)

    # -------------------------------------------------------------- receiving

    def receive_data(self, data: bytes | memoryview) -> list[Event]:
        """Feed bytes from the peer; returns what happened.  Never raises on bad input."""
        if self.terminated:
            return []
        events: list[Event] = []
        decoder = self._decoder
        handlers = _HANDLERS
        try:
            # One flat loop over plain ints: this runs for every frame.
            for frame_type, flags, stream_id, payload in decoder.feed_raw(data):
                if not self._settings_received and frame_type != _SETTINGS:
                    raise ProtocolViolation(ErrorCode.PROTOCOL, "first frame must be SETTINGS")
                if frame_type in _SMALL_FRAMES and not self._small_frame_budget.take():
                    name = FrameType(frame_type).name
                    raise ProtocolViolation(ErrorCode.FLOOD, f"too many {name} frames")
                try:
                    handlers[frame_type](self, stream_id, flags, payload, events)
                except StreamViolation as exc:
                    self._stream_violation(exc, events)
            if decoder.error is not None:
                # A violation the decoder found behind the frames just handled.
                raise decoder.error
        except ProtocolViolation as exc:
            self._terminate(exc.code, exc.reason, events)
        return events

    def _stream_violation(self, exc: StreamViolation, events: list[Event]) -> None:
        stream = self._streams.get(exc.stream_id)
        if stream is not None:
            self._forget(stream)
            events.append(StreamReset(exc.stream_id, exc.code, exc.reason, remote=False))
        self._control += _reset_frame(exc.stream_id, exc.code, exc.reason)

    def _on_settings(self, stream_id: int, flags: int, payload: bytes, events: list[Event]) -> None:
        if self._settings_received:
            raise ProtocolViolation(ErrorCode.PROTOCOL, "SETTINGS sent twice")
        if len(payload) % _SETTING.size:
            raise ProtocolViolation(ErrorCode.PROTOCOL, "malformed SETTINGS")
        self._settings_received = True
        for offset in range(0, len(payload), _SETTING.size):
            key, value = _SETTING.unpack_from(payload, offset)
            if key == SETTING_INITIAL_STREAM_WINDOW:
                if not DEFAULT_WINDOW <= value <= MAX_WINDOW:
                    raise ProtocolViolation(ErrorCode.FLOW_CONTROL, "bad initial window")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                    self._unblock_stream(stream)
            elif key == SETTING_MAX_CONCURRENT_STREAMS:
                self._peer_max_streams = value
            elif key == SETTING_CONTROL:
                if value not in (0, 1):
                    raise ProtocolViolation(ErrorCode.PROTOCOL, "bad CONTROL setting")
                self._peer_accepts_control = value == 1
            # Unknown settings are ignored so that later versions can add some.

    def _on_open(self, stream_id: int, flags: int, payload: bytes, events: list[Event]) -> None:
        if self._relay:
            raise ProtocolViolation(ErrorCode.PROTOCOL, "only the relay opens streams")
        if stream_id <= self._highest_stream_id:
            raise ProtocolViolation(ErrorCode.PROTOCOL, "stream id not increasing")
        self._highest_stream_id = stream_id
        if self._goaway_sent:
            raise StreamViolation(stream_id, ErrorCode.REFUSED, "going away")
        if len(self._streams) >= self.settings.max_concurrent_streams:
            raise StreamViolation(stream_id, ErrorCode.TOO_MANY_STREAMS, "stream limit")
        try:
            head = heads.decode_request_head(payload, self.header_format)
        except heads.HeadError as exc:
            raise StreamViolation(stream_id, ErrorCode.BAD_REQUEST, str(exc)) from None
        websocket = bool(flags & _WEBSOCKET)
        end = bool(flags & _END_STREAM)
        stream = _Stream(
            stream_id,
            head.priority,
            websocket,
            self._peer_initial_window,
            self.settings.initial_stream_window,
        )
        stream.remote_closed = end
        self._streams[stream_id] = stream
        events.append(StreamOpened(stream_id, head, websocket, end))

    def _on_response(self, stream_id: int, flags: int, payload: bytes, events: list[Event]) -> None:
        if not self._relay:
            raise ProtocolViolation(ErrorCode.PROTOCOL, "only the add-on sends responses")
        stream = self._receiving(stream_id)
        if stream is None:
            return
        if stream.response_seen:
            raise StreamViolation(stream.id, ErrorCode.PROTOCOL, "second response head")
        try:
            head = heads.decode_response_head(payload, self.header_format)
        except heads.HeadError as exc:
            raise StreamViolation(stream.id, ErrorCode.PROTOCOL, str(exc)) from None
        end = bool(flags & _END_STREAM)
        if head.status == 101:
            if not stream.websocket or end:
                raise StreamViolation(stream.id, ErrorCode.PROTOCOL, "unexpected 101")
            stream.ws_open = True
        elif 100 <= head.status < 200:
            raise StreamViolation(stream.id, ErrorCode.PROTOCOL, "interim responses not carried")
        elif stream.websocket:
            # A refused upgrade is an ordinary response; our side sent its last frame.
            stream.local_ending = stream.local_closed = True
        stream.response_seen = True
        if end:
            stream.remote_closed = True
        events.append(ResponseReceived(stream.id, head, end))
        self._maybe_forget(stream)

    def _on_data(self, stream_id: int, flags: int, payload: bytes, events: list[Event]) -> None:
        size = len(payload)
        stream = self._receiving_flow_controlled(stream_id, size)
        if stream is None:
            return
        if stream.ws_open or (self._relay and not stream.response_seen):
            raise StreamViolation(stream.id, ErrorCode.PROTOCOL, "DATA not expected here")
        end = bool(flags & _END_STREAM)
        if end:
            stream.remote_closed = True
        if size or end:
            events.append(DataReceived(stream.id, payload, end))
        self._maybe_forget(stream)

    def _on_ws_message(
        self, stream_id: int, flags: int, payload: bytes, events: list[Event]
    ) -> None:
        size = len(payload)
        stream = self._receiving_flow_controlled(stream_id, size)
        if stream is None:
            return
        if not stream.ws_open:
            raise StreamViolation(stream.id, ErrorCode.PROTOCOL, "WebSocket not established")
        text = bool(flags & _TEXT)
        if stream.ws_partial and text != stream.ws_text:
            raise StreamViolation(stream.id, ErrorCode.PROTOCOL, "fragment type changed")
        stream.ws_text = text
        stream.ws_size += size
        if stream.ws_size > self.settings.max_ws_message:
            raise StreamViolation(stream.id, ErrorCode.MESSAGE_TOO_LARGE, "message too large")
        if not flags & _FIN:
            # Hold fragments until the message is whole, paying their credit back
            # ahead of the application (see _prepay): waiting for it to
            # acknowledge would deadlock on a message > window.
            stream.ws_buffer += payload
            stream.ws_partial = True
            stream.ws_unprepaid += size
            self._message_reserve += size
            if self._message_reserve > self.settings.max_prepaid:
                # Threat: a peer holding a partial message open on every stream to
                # make us buffer max_ws_message each (256 x 16 MiB).  The stream that
                # crosses the tunnel's budget is reset; the others carry on.
                raise StreamViolation(stream.id, ErrorCode.FLOOD, "message budget exceeded")
            self._prepay(stream)
            return
        if stream.ws_partial:
            stream.ws_buffer += payload
            message = bytes(stream.ws_buffer)
            stream.ws_buffer = bytearray()
            stream.ws_partial = False
        else:
            message = payload  # the common single-frame message: no copy
        stream.ws_size = 0
        # Delivered now: what was paid ahead is settled by the acknowledgement
        # (in acknowledge); the rest is charged until then, like body bytes.
        stream.prepaid += stream.ws_prepaid
        # What was still unpaid is charged to the windows like body bytes from now on.
        self._message_reserve -= stream.ws_unprepaid
        stream.ws_prepaid = stream.ws_unprepaid = 0
        events.append(WebSocketMessageReceived(stream.id, message, text))

    def _on_ws_close(self, stream_id: int, flags: int, payload: bytes, events: list[Event]) -> None:
        stream = self._receiving(stream_id)
        if stream is None:
            return
        if not stream.ws_open:
            raise StreamViolation(stream.id, ErrorCode.PROTOCOL, "WebSocket not established")
        if len(payload) < _CLOSE.size or len(payload) > 2 + MAX_CLOSE_REASON:
            raise StreamViolation(stream.id, ErrorCode.PROTOCOL, "malformed close")
        (code,) = _CLOSE.unpack_from(payload)
        reason = payload[2:].decode("utf-8", "replace")
        stream.remote_closed = True
        events.append(WebSocketClosed(stream.id, code, reason))
        self._maybe_forget(stream)

    def _on_reset(self, stream_id: int, flags: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) < _RESET.size:
            raise ProtocolViolation(ErrorCode.PROTOCOL, "malformed RESET")
        self._check_known_id(stream_id)
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # it crossed our own reset or end on the wire
        (raw_code,) = _RESET.unpack_from(payload)
        reason = payload[_RESET.size : _RESET.size + 256].decode("utf-8", "replace")
        self._forget(stream)
        events.append(StreamReset(stream.id, _error_code(raw_code), reason, remote=True))

    def _on_window_update(
        self, stream_id: int, flags: int, payload: bytes, events: list[Event]
    ) -> None:
        if len(payload) != _U32.size:
            raise ProtocolViolation(ErrorCode.PROTOCOL, "malformed WINDOW_UPDATE")
        (increment,) = _U32.unpack(payload)
        if increment == 0:
            raise ProtocolViolation(ErrorCode.PROTOCOL, "zero window increment")
        if stream_id == 0:
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ProtocolViolation(ErrorCode.FLOW_CONTROL, "connection window overflow")
            blocked, self._blocked_on_connection = self._blocked_on_connection, []
            for waiting in blocked:
                if waiting.id in self._streams and waiting.queue:
                    self._queues[waiting.priority].append(waiting)
            return
        self._check_known_id(stream_id)
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            raise StreamViolation(stream.id, ErrorCode.FLOW_CONTROL, "stream window overflow")
        self._unblock_stream(stream)

    def _on_ping(self, stream_id: int, flags: int, payload: bytes, events: list[Event]) -> None:
        """Answer a PING, within the peer's budget; hand a pong to the I/O layer.

        Threat this stops: a ping flood (CVE-2019-9512): every PING costs an
        answer, so past :data:`PING_BURST` (then :data:`PING_RATE` a second)
        the tunnel ends.  Whether a pong answers one of *our* pings is the I/O
        layer's check (it chose the payloads).
        """
        if len(payload) != 8:
            raise ProtocolViolation(ErrorCode.PROTOCOL, "malformed PING")
        if flags & _ACK:
            if not self._small_frame_budget.take():
                raise ProtocolViolation(ErrorCode.FLOOD, "too many pongs")
            events.append(PongReceived(payload))
            return
        if not self._ping_budget.take():
            raise ProtocolViolation(ErrorCode.FLOOD, "too many PINGs")
        self._control += encode_frame(FrameType.PING, 0, payload, Flags.ACK)

    def _on_goaway(self, stream_id: int, flags: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) < _GOAWAY.size:
            raise ProtocolViolation(ErrorCode.PROTOCOL, "malformed GOAWAY")
        last, raw_code = _GOAWAY.unpack_from(payload)
        reason = payload[_GOAWAY.size :].decode("utf-8", "replace")
        self._goaway_received = True
        events.append(GoAwayReceived(last, _error_code(raw_code), reason))

    def _on_control(self, stream_id: int, flags: int, payload: bytes, events: list[Event]) -> None:
        """An add-on's request (relay side) or the relay's reply (add-on side).

        Threat this stops: a peer driving the relay beyond what it offered, or
        holding it busy: requests are taken only by a relay that advertised
        them, bodies are bounded and read as one JSON object, at most
        :data:`MAX_PENDING_CONTROL` are in progress (more get ``busy``), and a
        peer sending more than :data:`CONTROL_BURST` at once (then
        :data:`CONTROL_RATE` a second) ends its tunnel.  Replies must answer a
        request we made, once.
        """
        if len(payload) < _U32.size:
            raise ProtocolViolation(ErrorCode.PROTOCOL, "malformed CONTROL")
        if len(payload) - _U32.size > MAX_CONTROL_BODY:
            raise ProtocolViolation(ErrorCode.FRAME_SIZE, "CONTROL body too large")
        (request_id,) = _U32.unpack_from(payload)
        body = _control_body(payload)
        if flags & _ACK:
            if request_id not in self._control_sent:
                raise ProtocolViolation(ErrorCode.PROTOCOL, "reply to an unknown control request")
            if body is None:
                raise ProtocolViolation(ErrorCode.PROTOCOL, "malformed control reply")
            self._control_sent.discard(request_id)
            events.append(ControlAnswered(request_id, body))
            return
        if self.role is not Role.RELAY or not self.settings.accept_control:
            raise ProtocolViolation(ErrorCode.PROTOCOL, "control requests are not accepted here")
        if not self._control_budget.take():
            # Each request costs an answer, even a "busy" one: past the budget the
            # peer is flooding, not clicking (R-ADD-07).
            raise ProtocolViolation(ErrorCode.FLOOD, "too many CONTROL requests")
        if request_id in self._control_received:
            raise ProtocolViolation(ErrorCode.PROTOCOL, "control request id in use")
        if body is None or len(self._control_received) >= MAX_PENDING_CONTROL:
            # A clean answer, not a tunnel error: the add-on's remote traffic goes on.
            error, message = (
                (CONTROL_MALFORMED, "the request is not one JSON object")
                if body is None
                else (CONTROL_BUSY, "too many requests at once")
            )
            reply = {"error": error, "message": message}
            self._control += encode_frame(
                FrameType.CONTROL, 0, _control_payload(request_id, reply), Flags.ACK
            )
            return
        self._control_received.add(request_id)
        events.append(ControlRequested(request_id, body))

    # ---------------------------------------------------------------- helpers

    def _send_settings(self) -> None:
        payload = _SETTING.pack(
            SETTING_INITIAL_STREAM_WINDOW, self.settings.initial_stream_window
        ) + _SETTING.pack(SETTING_MAX_CONCURRENT_STREAMS, self.settings.max_concurrent_streams)
        if self.settings.accept_control:
            payload += _SETTING.pack(SETTING_CONTROL, 1)
        self._control += encode_frame(FrameType.SETTINGS, 0, payload)
        # Grow the tunnel window from the protocol default to what we grant.
        extra = self.settings.connection_window - DEFAULT_WINDOW
        if extra:
            self._control += encode_frame(FrameType.WINDOW_UPDATE, 0, _U32.pack(extra))

    def _terminate(self, code: ErrorCode, reason: str, events: list[Event]) -> None:
        self._goaway_sent = False  # after a graceful GOAWAY, still tell the peer why
        self.goaway(code, reason)
        self.terminated = True
        for stream in list(self._streams.values()):
            self._forget(stream)
        events.append(ConnectionTerminated(code, reason, remote=False))

    def _check_known_id(self, stream_id: int) -> None:
        if stream_id > self._highest_stream_id:
            raise ProtocolViolation(ErrorCode.PROTOCOL, f"frame for idle stream {stream_id}")

    def _receiving(self, stream_id: int) -> _Stream | None:
        """The stream a frame belongs to, or None if it closed already."""
        if stream_id > self._highest_stream_id:
            raise ProtocolViolation(ErrorCode.PROTOCOL, f"frame for idle stream {stream_id}")
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        if stream.remote_closed:
            raise StreamViolation(stream.id, ErrorCode.PROTOCOL, "frame after end of stream")
        return stream

    def _receiving_flow_controlled(self, stream_id: int, size: int) -> _Stream | None:
        """Like :meth:`_receiving` for DATA and WS_MESSAGE, charging both windows.

        Credit is taken before any stream-level check, so that a frame which
        resets its stream is still paid back (by :meth:`_forget`, or here when
        the stream is gone): a rejected frame must not shrink the tunnel window.
        """
        self._recv_window -= size
        if self._recv_window < 0:
            raise ProtocolViolation(ErrorCode.FLOW_CONTROL, "connection window exceeded")
        try:
            stream = self._receiving(stream_id)
        except StreamViolation:
            self._grant_connection(size)
            raise
        if stream is None or stream.discarding:
            self._grant_connection(size)
            return None
        stream.recv_window -= size
        if stream.recv_window < 0:
            raise ProtocolViolation(ErrorCode.FLOW_CONTROL, "stream window exceeded")
        if stream.priority == heads.PRIORITY_INTERACTIVE:
            self._since_interactive = 0
        return stream

    def _writable(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamViolation(stream_id, ErrorCode.CANCEL, "stream is closed")
        if stream.local_ending:
            raise RuntimeError("stream already ended on this side")
        return stream

    def _prepay(self, stream: _Stream) -> None:
        """Return credit for fragments of a message the application cannot see yet.

        Without this a message larger than the window would deadlock.  The
        credit paid ahead is capped at ``max_ws_message`` per stream, counting
        whole messages the application still holds: otherwise a reader that
        never acknowledges (a stalled browser tab) would let the peer send
        without limit, as only each message's last fragment would be charged.
        A stalled reader therefore holds at most window + max_ws_message.
        """
        budget = self.settings.max_ws_message - stream.prepaid - stream.ws_prepaid
        n = min(stream.ws_unprepaid, budget)
        if n <= 0 or stream.remote_closed:
            return
        stream.ws_unprepaid -= n
        stream.ws_prepaid += n
        stream.unacked += n
        self._grant_connection(n)
        if stream.unacked >= self.settings.initial_stream_window // 4:
            self._grant_stream(stream)

    def _grant_stream(self, stream: _Stream) -> None:
        increment, stream.unacked = stream.unacked, 0
        stream.recv_window += increment
        self._control += encode_frame(FrameType.WINDOW_UPDATE, stream.id, _U32.pack(increment))

    def _grant_connection(self, size: int) -> None:
        if size <= 0:
            return
        self._unacked += size
        # Batch updates, except when the peer is running out of credit: with
        # stalled streams holding most of the window, credit below the batch
        # threshold would otherwise never go back and the whole tunnel starves.
        quarter = self.settings.connection_window // 4
        if self._unacked >= quarter or self._recv_window < quarter:
            increment, self._unacked = self._unacked, 0
            self._recv_window += increment
            self._control += encode_frame(FrameType.WINDOW_UPDATE, 0, _U32.pack(increment))

    def _enqueue(self, stream: _Stream, item: _Item) -> None:
        stream.queue.append(item)
        if not stream.scheduled:
            stream.scheduled = True
            self._queues[stream.priority].append(stream)

    def _unblock_stream(self, stream: _Stream) -> None:
        if stream.id in self._blocked_on_stream and stream.send_window > 0:
            self._blocked_on_stream.discard(stream.id)
            self._queues[stream.priority].append(stream)

    def _emit_one(
        self, stream: _Stream, parts: list[bytes | bytearray | memoryview]
    ) -> tuple[bool, int]:
        """Append one turn of ``stream``'s output to ``parts``.

        Returns whether the turn went out (False: it must wait for credit) and
        how many bytes were appended either way.

        A turn is at most one chunk of body or message bytes; pre-encoded frames
        (a response head, a close) ride along with it rather than costing a
        turn of their own, so a small response goes out in a single turn.
        """
        written = 0
        item = stream.queue[0]
        while item.kind == _FRAME:
            parts.append(item.data)
            written += len(item.data)
            stream.queue.popleft()
            if item.end:
                stream.local_closed = True
            if not stream.queue:
                return True, written
            item = stream.queue[0]
        data = item.data
        start = item.offset
        size = remaining = len(data) - start
        if remaining:
            if (
                stream.priority == heads.PRIORITY_INTERACTIVE
                or self._since_interactive >= INTERACTIVE_HORIZON
            ):
                window = stream.send_window  # _in_flight_budget's common case, inline
            else:
                window = self._in_flight_budget(stream)
            if window <= 0:
                self._blocked_on_stream.add(stream.id)
                return False, written
            if self._send_window <= 0:
                self._blocked_on_connection.append(stream)
                return False, written
            if size > self._chunk_size:
                size = self._chunk_size
            if size > window:
                size = window
            if size > self._send_window:
                size = self._send_window
        end = start + size
        item.offset = end
        last = end == len(data)
        stream.send_window -= size
        self._send_window -= size
        stream.queued_bytes -= size
        if item.kind == _DATA_ITEM:
            frame_type = _DATA
            if item.end and last:
                flags = _END_STREAM
                stream.local_closed = True
            else:
                flags = 0
        else:
            flags = (_TEXT if item.text else 0) | (_FIN if last else 0)
            frame_type = _WS_MESSAGE
        parts.append(HEADER.pack(size, frame_type, flags, stream.id))
        if size:
            # No copy here: the payload is copied once, when the parts are joined.
            parts.append(data if start == 0 and last else memoryview(data)[start:end])
        if last:
            stream.queue.popleft()
        return True, written + HEADER_SIZE + size

    def _in_flight_budget(self, stream: _Stream) -> int:
        """What ``stream`` may send now: its window, less while interactive traffic moves.

        Threat this stops: bufferbloat inside the tunnel.  The scheduler only
        orders what is still queued; bytes already sent wait in sockets and in
        the peer's read path, and a WebSocket answer sent after them waits
        behind all of them — up to a whole stream window (1 MiB) per bulk
        stream, tens of milliseconds on a busy link.  So while interactive
        traffic has moved recently (within INTERACTIVE_HORIZON bytes of other
        output), a less urgent stream keeps at most ``bulk_in_flight`` bytes
        sent but not yet credited back.  The budget never drops to or below
        the peer's update threshold (a quarter of its window) plus a chunk, so
        credit keeps coming back while the reader consumes: never a deadlock.
        """
        window = stream.send_window
        if (
            stream.priority == heads.PRIORITY_INTERACTIVE
            or self._since_interactive >= INTERACTIVE_HORIZON
        ):
            return window
        initial = self._peer_initial_window
        cap = max(self.settings.bulk_in_flight, initial // 4 + self.settings.chunk_size)
        in_flight = initial - window
        return min(window, cap - in_flight)

    def _maybe_forget(self, stream: _Stream) -> None:
        if stream.queue or not stream.local_closed:
            return
        if stream.remote_closed:
            self._forget(stream)
        elif stream.release is not None:  # released: its last output is out, now the RESET
            code, reason = stream.release
            self._forget(stream)
            self._control += _reset_frame(stream.id, code, reason)

    def _forget(self, stream: _Stream) -> None:
        self._streams.pop(stream.id, None)
        self._message_reserve -= stream.prepaid + stream.ws_prepaid + stream.ws_unprepaid
        stream.prepaid = stream.ws_prepaid = stream.ws_unprepaid = 0
        self._blocked_on_stream.discard(stream.id)
        if stream.scheduled:
            stream.queue.clear()
            stream.queued_bytes = 0
            self._scheduler.discard(stream)
            if stream in self._blocked_on_connection:
                self._blocked_on_connection.remove(stream)
            stream.scheduled = False
        # Unconsumed received bytes of a dead stream still count against the
        # tunnel window: pay them back so the tunnel does not slowly starve.
        outstanding = self.settings.initial_stream_window - stream.recv_window - stream.unacked
        if outstanding > 0:
            self._grant_connection(outstanding)
        stream.recv_window = self.settings.initial_stream_window


#: Frames counted against SMALL_FRAME_RATE (PINGs have their own, stricter budget).
_SMALL_FRAMES = frozenset(
    {int(FrameType.WINDOW_UPDATE), int(FrameType.RESET), int(FrameType.GOAWAY)}
)
_SETTINGS = int(FrameType.SETTINGS)


def _frame_boundary(buffer: bytearray, limit: int) -> int:
    """Offset of the last frame boundary within ``limit`` (at least one whole frame)."""
    offset = 0
    while offset < len(buffer):
        end = offset + HEADER_SIZE + _U32.unpack_from(buffer, offset)[0]
        if offset and end > limit:
            break
        offset = end
    return offset


def _reset_frame(stream_id: int, code: ErrorCode, reason: str) -> bytes:
    payload = _RESET.pack(code) + reason.encode("utf-8")[:256]
    return encode_frame(FrameType.RESET, stream_id, payload)


def _control_payload(request_id: int, body: dict[str, Any]) -> bytes:
    raw = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    data = raw.encode("utf-8")
    if len(data) > MAX_CONTROL_BODY:
        raise ValueError(f"control body over {MAX_CONTROL_BODY} bytes")
    return _U32.pack(request_id) + data


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _control_body(payload: bytes) -> dict[str, Any] | None:
    """The JSON object after the request id, or None if it is anything else."""
    try:
        body = json.loads(payload[_U32.size :].decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        return None
    return body if isinstance(body, dict) else None


def _error_code(raw: int) -> ErrorCode:
    try:
        return ErrorCode(raw)
    except ValueError:
        return ErrorCode.INTERNAL


#: Handlers indexed by frame type (the decoder only passes known types).
_HANDLERS = [
    TunnelConnection._on_settings,
    TunnelConnection._on_open,
    TunnelConnection._on_response,
    TunnelConnection._on_data,
    TunnelConnection._on_ws_message,
    TunnelConnection._on_ws_close,
    TunnelConnection._on_reset,
    TunnelConnection._on_window_update,
    TunnelConnection._on_ping,
    TunnelConnection._on_goaway,
    TunnelConnection._on_control,
]
assert [FrameType(t) for t in range(len(_HANDLERS))] == list(FrameType)
