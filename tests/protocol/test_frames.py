"""Frame encoding and the strict, incremental frame decoder."""

from __future__ import annotations

import pytest

from homeport.protocol.errors import ErrorCode, ProtocolViolation
from homeport.protocol.frames import (
    HEADER,
    HEADER_SIZE,
    MAX_STREAM_ID,
    Flags,
    Frame,
    FrameDecoder,
    FrameType,
    encode_frame,
)

MAX = 64 * 1024


def raw_header(length: int, frame_type: int, flags: int, stream_id: int) -> bytes:
    return HEADER.pack(length, frame_type, flags, stream_id)


def test_header_layout_is_ten_bytes_big_endian() -> None:
    frame = encode_frame(FrameType.DATA, 0x01020304, b"abc", Flags.END_STREAM)
    assert HEADER_SIZE == 10
    assert frame == b"\x00\x00\x00\x03" + b"\x03" + b"\x01" + b"\x01\x02\x03\x04" + b"abc"


def test_round_trip_of_every_frame_type() -> None:
    frames = [
        (FrameType.SETTINGS, 0, b"\x00\x01\x00\x10\x00\x00", Flags.NONE),
        (FrameType.OPEN, 1, b"head", Flags.END_STREAM | Flags.WEBSOCKET),
        (FrameType.RESPONSE, 1, b"head", Flags.END_STREAM),
        (FrameType.DATA, 1, b"x" * 1000, Flags.END_STREAM),
        (FrameType.WS_MESSAGE, 1, b"hi", Flags.TEXT | Flags.FIN),
        (FrameType.WS_CLOSE, 1, b"\x03\xe8", Flags.NONE),
        (FrameType.RESET, 1, b"\x00\x00\x00\x06", Flags.NONE),
        (FrameType.WINDOW_UPDATE, 0, b"\x00\x00\x01\x00", Flags.NONE),
        (FrameType.WINDOW_UPDATE, 7, b"\x00\x00\x01\x00", Flags.NONE),
        (FrameType.PING, 0, b"12345678", Flags.ACK),
        (FrameType.GOAWAY, 0, b"\x00\x00\x00\x05\x00\x00\x00\x00bye", Flags.NONE),
        (FrameType.CONTROL, 0, b'\x00\x00\x00\x01{"op":"x"}', Flags.NONE),
        (FrameType.CONTROL, 0, b"\x00\x00\x00\x01{}", Flags.ACK),
    ]
    wire = b"".join(encode_frame(t, sid, payload, flags) for t, sid, payload, flags in frames)
    decoded = FrameDecoder(MAX).feed(wire)
    assert decoded == [Frame(t, flags, sid, payload) for t, sid, payload, flags in frames]


def test_any_chunking_gives_the_same_frames() -> None:
    wire = b"".join(
        encode_frame(FrameType.DATA, i + 1, bytes([i]) * (i * 37 % 200)) for i in range(30)
    )
    whole = FrameDecoder(MAX).feed(wire)
    for step in (1, 2, 3, 7, 10, 11, 64, 1000):
        decoder = FrameDecoder(MAX)
        parts: list[Frame] = []
        for offset in range(0, len(wire), step):
            parts += decoder.feed(wire[offset : offset + step])
        assert parts == whole


def test_partial_header_and_partial_payload_wait_for_more() -> None:
    decoder = FrameDecoder(MAX)
    wire = encode_frame(FrameType.DATA, 1, b"hello")
    assert decoder.feed(wire[:4]) == []
    assert decoder.feed(wire[4:12]) == []
    assert decoder.feed(wire[12:]) == [Frame(FrameType.DATA, Flags.NONE, 1, b"hello")]


def test_empty_payload_frame() -> None:
    assert FrameDecoder(MAX).feed(encode_frame(FrameType.DATA, 3, b"", Flags.END_STREAM)) == [
        Frame(FrameType.DATA, Flags.END_STREAM, 3, b"")
    ]


def test_oversize_length_is_rejected_from_the_header_alone() -> None:
    decoder = FrameDecoder(MAX)
    with pytest.raises(ProtocolViolation) as info:
        decoder.feed(raw_header(MAX + 1, FrameType.DATA, 0, 1))  # no payload sent at all
    assert info.value.code is ErrorCode.FRAME_SIZE


def test_maximum_length_is_accepted() -> None:
    frame = encode_frame(FrameType.DATA, 1, b"z" * MAX)
    assert FrameDecoder(MAX).feed(frame)[0].payload == b"z" * MAX


@pytest.mark.parametrize("raw_type", [0x0B, 0x42, 0xFF])
def test_unknown_frame_type(raw_type: int) -> None:
    with pytest.raises(ProtocolViolation, match="unknown frame type") as info:
        FrameDecoder(MAX).feed(raw_header(0, raw_type, 0, 0))
    assert info.value.code is ErrorCode.PROTOCOL


@pytest.mark.parametrize(
    ("frame_type", "flags", "stream_id"),
    [
        (FrameType.SETTINGS, Flags.ACK, 0),
        (FrameType.DATA, Flags.WEBSOCKET, 1),
        (FrameType.DATA, Flags.FIN, 1),
        (FrameType.RESPONSE, Flags.WEBSOCKET, 1),
        (FrameType.WS_MESSAGE, Flags.END_STREAM, 1),
        (FrameType.WS_CLOSE, Flags.FIN, 1),
        (FrameType.RESET, Flags.END_STREAM, 1),
        (FrameType.WINDOW_UPDATE, Flags.ACK, 0),
        (FrameType.PING, Flags.END_STREAM, 0),
        (FrameType.GOAWAY, Flags.ACK, 0),
        (FrameType.CONTROL, Flags.END_STREAM, 0),
        # Bits no flag defines (regression: IntFlag's ``~`` ignored them).
        (FrameType.OPEN, 0x80, 1),
        (FrameType.DATA, 0x20, 1),
        (FrameType.SETTINGS, 0x40, 0),
        (FrameType.WS_MESSAGE, Flags.FIN | 0x80, 1),
    ],
)
def test_flags_not_allowed_on_type(frame_type: FrameType, flags: int, stream_id: int) -> None:
    with pytest.raises(ProtocolViolation, match="not allowed") as info:
        FrameDecoder(MAX).feed(raw_header(0, frame_type, flags, stream_id))
    assert info.value.code is ErrorCode.PROTOCOL


@pytest.mark.parametrize(
    "frame_type",
    [
        FrameType.OPEN,
        FrameType.RESPONSE,
        FrameType.DATA,
        FrameType.WS_MESSAGE,
        FrameType.WS_CLOSE,
        FrameType.RESET,
    ],
)
def test_stream_frames_need_a_stream_id(frame_type: FrameType) -> None:
    with pytest.raises(ProtocolViolation, match="needs a stream id"):
        FrameDecoder(MAX).feed(raw_header(0, frame_type, 0, 0))


@pytest.mark.parametrize(
    "frame_type", [FrameType.SETTINGS, FrameType.PING, FrameType.GOAWAY, FrameType.CONTROL]
)
def test_connection_frames_must_use_stream_zero(frame_type: FrameType) -> None:
    with pytest.raises(ProtocolViolation, match="must use stream 0"):
        FrameDecoder(MAX).feed(raw_header(0, frame_type, 0, 1))


def test_stream_id_with_the_high_bit_is_refused() -> None:
    FrameDecoder(MAX).feed(raw_header(0, FrameType.DATA, 0, MAX_STREAM_ID))
    with pytest.raises(ProtocolViolation, match="out of range"):
        FrameDecoder(MAX).feed(raw_header(0, FrameType.DATA, 0, MAX_STREAM_ID + 1))


def test_good_frames_before_a_bad_one_are_still_delivered() -> None:
    """Regression: a bad frame in the same chunk used to swallow the good ones before it."""
    good = encode_frame(FrameType.PING, 0, b"12345678", Flags.ACK)
    bad = raw_header(0, 0x42, 0, 0)
    decoder = FrameDecoder(MAX)
    assert decoder.feed(good + good + bad) == [Frame(FrameType.PING, Flags.ACK, 0, b"12345678")] * 2
    with pytest.raises(ProtocolViolation, match="unknown frame type"):
        decoder.feed(b"")
    with pytest.raises(ProtocolViolation):  # the decoder stays failed
        decoder.feed(good)


def test_decoder_buffer_holds_at_most_one_frame() -> None:
    decoder = FrameDecoder(MAX)
    wire = encode_frame(FrameType.DATA, 1, b"a" * 100) * 50
    decoder.feed(wire + wire[:55])
    assert len(decoder._buffer) == 55


def _accepted(raw_type: int, flags: int, stream_id: int) -> bool:
    """The frame rules, written out independently of the decoder's tables."""
    allowed = {0x0: 0, 0x1: 0x3, 0x2: 0x1, 0x3: 0x1, 0x4: 0xC, 0x5: 0, 0x6: 0}
    allowed |= {0x7: 0, 0x8: 0x10, 0x9: 0, 0xA: 0x10}
    if raw_type not in allowed or flags & ~allowed[raw_type] or stream_id > MAX_STREAM_ID:
        return False
    if raw_type in (0x1, 0x2, 0x3, 0x4, 0x5, 0x6):
        return stream_id != 0
    if raw_type in (0x0, 0x8, 0x9, 0xA):
        return stream_id == 0
    return True  # WINDOW_UPDATE: the tunnel's own window or a stream's


@pytest.mark.parametrize("stream_id", [0, 1, 7, MAX_STREAM_ID, MAX_STREAM_ID + 1, 2**32 - 1])
def test_every_type_and_flags_combination_is_judged_by_the_rules(stream_id: int) -> None:
    """The decoder's plain-int fast path accepts exactly what the rules allow."""
    for raw_type in range(16):
        for flags in range(256):
            decoder = FrameDecoder(MAX)
            data = raw_header(0, raw_type, flags, stream_id)
            if _accepted(raw_type, flags, stream_id):
                assert decoder.feed_raw(data) == [(raw_type, flags, stream_id, b"")]
            else:
                with pytest.raises(ProtocolViolation):
                    decoder.feed_raw(data)


@pytest.mark.parametrize("step", [1, 5, 9, 10, 11, 64, 250, 1000, 5000])
def test_a_reused_read_buffer_never_changes_what_was_decoded(step: int) -> None:
    """The tunnel hands the decoder a view of one read buffer that every connection
    of the thread reuses (tunnel/raw.py).  A payload or a kept frame start that
    still pointed into it would change when the next read lands: another
    tenant's bytes.  Each read is overwritten as soon as the decoder returns."""
    wire = b"".join(
        encode_frame(FrameType.DATA, i + 1, bytes([i]) * (i * 97 % 700)) for i in range(40)
    )
    whole = FrameDecoder(MAX).feed(wire)
    shared = bytearray(step)
    decoder = FrameDecoder(MAX)
    frames: list[Frame] = []
    for offset in range(0, len(wire), step):
        piece = wire[offset : offset + step]
        shared[: len(piece)] = piece
        with memoryview(shared)[: len(piece)] as read:
            frames += decoder.feed(read)
        shared[:] = b"\xee" * step  # the next connection's read
    assert frames == whole
    assert not decoder._buffer


def test_a_split_frame_takes_only_the_bytes_it_needs_from_the_next_read() -> None:
    first = encode_frame(FrameType.DATA, 1, b"a" * 300)
    rest = encode_frame(FrameType.DATA, 3, b"b" * 200) * 20
    decoder = FrameDecoder(MAX)
    assert decoder.feed(first[:100]) == []
    assert len(decoder._buffer) == 100
    frames = decoder.feed(first[100:] + rest + rest[:7])
    assert [f.payload for f in frames] == [b"a" * 300] + [b"b" * 200] * 20
    assert bytes(decoder._buffer) == rest[:7]  # the cut header of the next frame, and no more


def test_an_oversized_frame_split_across_reads_is_refused_from_its_header() -> None:
    decoder = FrameDecoder(MAX)
    header = raw_header(MAX + 1, int(FrameType.DATA), 0, 1)
    assert decoder.feed(header[:4]) == []
    with pytest.raises(ProtocolViolation, match="exceeds"):
        decoder.feed(header[4:] + b"x" * 100)
