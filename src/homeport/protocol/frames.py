"""Tunnel frame format: encoding and incremental, strict decoding.

Every frame is ``length:u32 | type:u8 | flags:u8 | stream_id:u32 | payload``
(big-endian, 10-byte header).  Frames are concatenated into binary WebSocket
messages; the decoder accepts arbitrary chunking so it never depends on how the
transport splits bytes.  The length is checked against the negotiated maximum
*before* any payload is buffered, so a peer cannot make us hold a huge frame.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from homeport.protocol.errors import ErrorCode, ProtocolViolation

HEADER = struct.Struct(">IBBI")
HEADER_SIZE = HEADER.size
MAX_STREAM_ID = 2**31 - 1


class FrameType(enum.IntEnum):
    SETTINGS = 0x0
    OPEN = 0x1
    RESPONSE = 0x2
    DATA = 0x3
    WS_MESSAGE = 0x4
    WS_CLOSE = 0x5
    RESET = 0x6
    WINDOW_UPDATE = 0x7
    PING = 0x8
    GOAWAY = 0x9
    CONTROL = 0xA  # an add-on's owner action and the relay's answer (connection.py)


class Flags(enum.IntFlag):
    NONE = 0x0
    END_STREAM = 0x1  # OPEN, RESPONSE, DATA: no more body from this side
    WEBSOCKET = 0x2  # OPEN: the request is a WebSocket upgrade
    TEXT = 0x4  # WS_MESSAGE: text (UTF-8) rather than binary
    FIN = 0x8  # WS_MESSAGE: last fragment of the message
    ACK = 0x10  # PING: this is the answer (pong); CONTROL: this is the reply


#: Frame types that must name a stream, and those that must not.
STREAM_FRAMES = frozenset(
    {
        FrameType.OPEN,
        FrameType.RESPONSE,
        FrameType.DATA,
        FrameType.WS_MESSAGE,
        FrameType.WS_CLOSE,
        FrameType.RESET,
    }
)
CONNECTION_FRAMES = frozenset(
    {FrameType.SETTINGS, FrameType.PING, FrameType.GOAWAY, FrameType.CONTROL}
)


#: A decoded frame as plain ints: ``(type, flags, stream_id, payload)``.
RawFrame = tuple[int, int, int, bytes]


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    flags: Flags
    stream_id: int
    payload: bytes


def encode_frame(frame_type: int, stream_id: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """One frame; ``frame_type`` and ``flags`` are :class:`FrameType` and :class:`Flags` values."""
    return HEADER.pack(len(payload), frame_type, flags, stream_id) + payload


class FrameDecoder:
    """Turns a byte stream into frames; raises :class:`ProtocolViolation` on bad input.

    Stops: oversized frames (memory exhaustion), unknown frame types and
    flags (ambiguity between peer versions), stream ids out of range.
    """

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        self._buffer = bytearray()
        self._error: ProtocolViolation | None = None

    def feed(self, data: bytes | memoryview) -> list[Frame]:
        """Frames completed by ``data``.

        A bad frame behind good ones in the same chunk does not swallow them:
        the good frames are returned and the violation is raised by the next
        call (``feed(b"")`` is enough), so how the transport happened to split
        the byte stream never changes what the peer is seen to have sent.
        """
        return [
            Frame(FrameType(raw_type), Flags(raw_flags), stream_id, payload)
            for raw_type, raw_flags, stream_id, payload in self.feed_raw(data)
        ]

    @property
    def error(self) -> ProtocolViolation | None:
        """The violation found behind frames already returned (raised by the next feed)."""
        return self._error

    def feed_raw(self, data: bytes | memoryview) -> list[RawFrame]:
        """Like :meth:`feed`, as ``(type, flags, stream_id, payload)`` tuples of plain ints.

        The same checks; the connection's per-frame path uses this form, since
        building enum members (and ``&`` on an ``IntFlag``) costs more than the
        rest of handling a small frame.

        ``data`` may be a view of a buffer the caller reuses as soon as this
        returns (the tunnel's reads, ``tunnel/raw.py``): nothing here keeps a
        reference to it.  Every payload is a copy, and so are the bytes of a
        frame cut short at the end, kept for the next call.
        """
        if self._error is not None:
            raise self._error
        frames: list[RawFrame] = []
        size = len(data)
        offset = 0
        max_payload = self.max_payload
        try:
            if self._buffer:
                # A frame split across calls is finished from just the bytes it
                # still needs; the rest of ``data`` is parsed in place below, not
                # copied into the buffer first (a bulk transfer splits a frame at
                # nearly every read).
                offset = self._finish_split_frame(data, frames)
            # The common case, whole frames, is parsed in place.
            with memoryview(data) as view:
                while size - offset >= HEADER_SIZE:
                    length, raw_type, raw_flags, stream_id = _unpack_header(data, offset)
                    if length > max_payload:
                        raise ProtocolViolation(
                            ErrorCode.FRAME_SIZE, f"frame of {length} bytes exceeds {max_payload}"
                        )
                    start = offset + HEADER_SIZE
                    end = start + length
                    if size < end:
                        break
                    # One copy per payload, straight out of the read.
                    payload = bytes(view[start:end])
                    if (
                        raw_flags & ~_ALLOWED_RAW[raw_type] if raw_type < _TYPES else 1
                    ) or not 0 < stream_id <= MAX_STREAM_ID:
                        # Rare: stream 0 (connection frames) or a frame to refuse.
                        _validate(raw_type, raw_flags, stream_id)
                    elif raw_type in _CONNECTION_RAW:
                        _validate(raw_type, raw_flags, stream_id)
                    frames.append((raw_type, raw_flags, stream_id, payload))
                    offset = end
                if offset < size:
                    # The start of a frame cut short: kept (copied) for the next call.
                    self._buffer += view[offset:]
        except ProtocolViolation as exc:
            self._error = exc
            if not frames:
                raise
        return frames

    def _finish_split_frame(self, data: bytes | memoryview, frames: list[RawFrame]) -> int:
        """Complete the buffered start of a frame from ``data``; how many bytes it took.

        Appends the frame to ``frames`` once it is whole (the buffer is then
        empty again); takes all of ``data`` while it is not.
        """
        buffer = self._buffer
        size = len(data)
        taken = 0
        with memoryview(data) as view:
            if len(buffer) < HEADER_SIZE:
                taken = min(HEADER_SIZE - len(buffer), size)
                buffer += view[:taken]
                if len(buffer) < HEADER_SIZE:
                    return taken
            length, raw_type, raw_flags, stream_id = _unpack_header(buffer)
            if length > self.max_payload:
                raise ProtocolViolation(
                    ErrorCode.FRAME_SIZE, f"frame of {length} bytes exceeds {self.max_payload}"
                )
            end: int = HEADER_SIZE + length
            more = min(end - len(buffer), size - taken)
            buffer += view[taken : taken + more]
            taken += more
        if len(buffer) < end:
            return taken
        with memoryview(buffer) as whole:
            payload = bytes(whole[HEADER_SIZE:end])
        buffer.clear()
        _validate(raw_type, raw_flags, stream_id)
        frames.append((raw_type, raw_flags, stream_id, payload))
        return taken


_unpack_header = HEADER.unpack_from


_ALLOWED_FLAGS: dict[FrameType, Flags] = {
    FrameType.SETTINGS: Flags.NONE,
    FrameType.OPEN: Flags.END_STREAM | Flags.WEBSOCKET,
    FrameType.RESPONSE: Flags.END_STREAM,
    FrameType.DATA: Flags.END_STREAM,
    FrameType.WS_MESSAGE: Flags.TEXT | Flags.FIN,
    FrameType.WS_CLOSE: Flags.NONE,
    FrameType.RESET: Flags.NONE,
    FrameType.WINDOW_UPDATE: Flags.NONE,
    FrameType.PING: Flags.ACK,
    FrameType.GOAWAY: Flags.NONE,
    FrameType.CONTROL: Flags.ACK,
}


def _validate(raw_type: int, raw_flags: int, stream_id: int) -> None:
    # Plain ints: this runs for every connection frame and every frame split across
    # reads (most reads of a bulk transfer); the enum is built only to name a refusal.
    if raw_type >= _TYPES:
        raise ProtocolViolation(ErrorCode.PROTOCOL, f"unknown frame type {raw_type}")
    if raw_flags & ~_ALLOWED_RAW[raw_type]:
        raise ProtocolViolation(
            ErrorCode.PROTOCOL, f"flags {raw_flags:#x} not allowed on {FrameType(raw_type).name}"
        )
    if stream_id > MAX_STREAM_ID:
        raise ProtocolViolation(ErrorCode.PROTOCOL, "stream id out of range")
    if stream_id == 0 and raw_type in _STREAM_RAW:
        raise ProtocolViolation(ErrorCode.PROTOCOL, f"{FrameType(raw_type).name} needs a stream id")
    if stream_id != 0 and raw_type in _CONNECTION_RAW:
        raise ProtocolViolation(ErrorCode.PROTOCOL, f"{FrameType(raw_type).name} must use stream 0")


#: The same rules as plain ints, indexed by frame type, for :meth:`FrameDecoder.feed_raw`.
_TYPES = len(FrameType)
_ALLOWED_RAW = [int(_ALLOWED_FLAGS[FrameType(t)]) for t in range(_TYPES)]
_CONNECTION_RAW = frozenset(int(t) for t in CONNECTION_FRAMES)
_STREAM_RAW = frozenset(int(t) for t in STREAM_FRAMES)
# The rules above index by type: the types must be 0, 1, 2 ... with no gap.
assert [int(t) for t in FrameType] == list(range(_TYPES))
