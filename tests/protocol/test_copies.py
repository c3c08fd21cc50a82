"""The low-copy paths of the decoder and the sender keep their exact behaviour."""

from __future__ import annotations

import pytest

from homeport.protocol.connection import Role, Settings, TunnelConnection
from homeport.protocol.errors import ProtocolViolation
from homeport.protocol.events import DataReceived, ResponseReceived, WebSocketMessageReceived
from homeport.protocol.frames import HEADER, Flags, Frame, FrameDecoder, FrameType, encode_frame
from homeport.protocol.heads import RequestHead, ResponseHead

MAX = 64 * 1024


def test_a_message_of_whole_frames_leaves_nothing_buffered() -> None:
    wire = b"".join(encode_frame(FrameType.DATA, 1, bytes([i]) * 1000) for i in range(20))
    decoder = FrameDecoder(MAX)
    frames = decoder.feed(wire)
    assert [f.payload for f in frames] == [bytes([i]) * 1000 for i in range(20)]
    assert all(type(f.payload) is bytes for f in frames)
    assert len(decoder._buffer) == 0


def test_payloads_do_not_alias_the_fed_buffer() -> None:
    """Parsing in place must still hand out independent payloads."""
    message = bytearray(
        encode_frame(FrameType.DATA, 1, b"a" * 100) + encode_frame(FrameType.DATA, 1, b"b" * 50)
    )
    decoder = FrameDecoder(MAX)
    frames = decoder.feed(message)
    message[:] = b"\xff" * len(message)  # the transport reuses its buffer
    del message[10:]  # ... and resizes it: no view may still be held
    assert [f.payload for f in frames] == [b"a" * 100, b"b" * 50]


def test_a_partial_tail_is_kept_and_completed_by_the_next_message() -> None:
    first = encode_frame(FrameType.DATA, 1, b"x" * 300)
    second = encode_frame(FrameType.DATA, 3, b"y" * 70, Flags.END_STREAM)
    wire = first + second
    decoder = FrameDecoder(MAX)
    assert decoder.feed(wire[:200]) == []
    assert len(decoder._buffer) == 200
    assert decoder.feed(wire[200:320]) == [Frame(FrameType.DATA, Flags.NONE, 1, b"x" * 300)]
    assert len(decoder._buffer) == 320 - len(first)
    assert decoder.feed(wire[320:]) == [Frame(FrameType.DATA, Flags.END_STREAM, 3, b"y" * 70)]
    assert len(decoder._buffer) == 0


#: Frame headers the decoder refuses, and what it says.
BAD_HEADERS = pytest.mark.parametrize(
    ("raw_type", "raw_flags", "stream_id", "match"),
    [
        (FrameType.DATA, 0x20, 1, "flags 0x20 not allowed on DATA"),
        (FrameType.DATA, 0, 0, "DATA needs a stream id"),
        (FrameType.PING, 0, 3, "PING must use stream 0"),
        (FrameType.DATA, 0, 2**31, "out of range"),
        (0x42, 0, 1, "unknown frame type 66"),
    ],
)


@BAD_HEADERS
def test_the_fast_validation_path_still_refuses_bad_headers(
    raw_type: int, raw_flags: int, stream_id: int, match: str
) -> None:
    good = encode_frame(FrameType.DATA, 1, b"ok")
    bad = HEADER.pack(0, raw_type, raw_flags, stream_id)
    decoder = FrameDecoder(MAX)
    assert decoder.feed(good + bad) == [Frame(FrameType.DATA, Flags.NONE, 1, b"ok")]
    with pytest.raises(ProtocolViolation, match=match):
        decoder.feed(b"")


@BAD_HEADERS
def test_a_bad_header_split_across_reads_is_refused_too(
    raw_type: int, raw_flags: int, stream_id: int, match: str
) -> None:
    # A frame cut short is finished by another path (_finish_split_frame): the
    # same checks, the same refusals, on plain ints.
    bad = HEADER.pack(4, raw_type, raw_flags, stream_id) + b"data"
    decoder = FrameDecoder(MAX)
    assert decoder.feed_raw(bad[:5]) == []
    with pytest.raises(ProtocolViolation, match=match):
        decoder.feed_raw(bad[5:])


def _pair() -> tuple[TunnelConnection, TunnelConnection]:
    settings = Settings(chunk_size=16 * 1024)
    relay = TunnelConnection(Role.RELAY, settings)
    addon = TunnelConnection(Role.ADDON, settings)
    for _ in range(3):
        addon.receive_data(relay.data_to_send())
        relay.receive_data(addon.data_to_send())
    return relay, addon


def test_sent_bytes_are_plain_bytes_and_survive_reuse_of_the_source() -> None:
    relay, addon = _pair()
    sid = relay.open_stream(RequestHead("GET", "/big"), websocket=False, end_stream=True)
    addon.receive_data(relay.data_to_send())
    addon.send_response(sid, ResponseHead(200), end_stream=False)
    body = bytearray(range(256)) * 400  # 102,400 bytes: several chunks, the last one short
    expected = bytes(body)
    addon.send_data(sid, body, end_stream=True)  # type: ignore[arg-type]
    received = bytearray()
    ended = False
    rounds = 0
    while not ended and rounds < 100:
        rounds += 1
        out = addon.data_to_send(40_000)
        assert type(out) is bytes
        for event in relay.receive_data(out):
            if isinstance(event, DataReceived):
                received += event.data
                relay.acknowledge(sid, len(event.data))
                ended = event.end_stream
            else:
                assert isinstance(event, ResponseReceived)
        addon.receive_data(relay.data_to_send())
    assert ended
    assert received == expected
    body[:] = b""  # no view of the caller's buffer outlives data_to_send


def test_a_lone_control_frame_and_a_whole_ws_message_round_trip() -> None:
    relay, addon = _pair()
    sid = relay.open_stream(RequestHead("GET", "/ws"), websocket=True, end_stream=False)
    addon.receive_data(relay.data_to_send())
    addon.send_response(sid, ResponseHead(101), end_stream=False)
    relay.receive_data(addon.data_to_send())
    relay.ping(b"12345678")
    assert relay.data_to_send() == encode_frame(FrameType.PING, 0, b"12345678")
    message = bytes(range(200)) * 300  # 60,000 bytes: four fragments of at most 16 KiB
    relay.send_ws_message(sid, message, text=False)
    out = relay.data_to_send()
    fragments = FrameDecoder(MAX).feed(out)
    assert [len(f.payload) for f in fragments] == [16384, 16384, 16384, 60000 - 3 * 16384]
    assert [bool(f.flags & Flags.FIN) for f in fragments] == [False, False, False, True]
    (event,) = addon.receive_data(out)
    assert isinstance(event, WebSocketMessageReceived)
    assert event.data == message
    assert not event.text
