"""The tunnel state machine: a relay and an add-on paired in memory.

Everything here is sans-I/O: :class:`Pair` moves bytes from one side's
``data_to_send`` to the other's ``receive_data`` until both are quiet, and
acknowledges what the application "consumed" (all of it, except on streams
marked as stalled).
"""

from __future__ import annotations

import struct
from collections import defaultdict
from typing import TypeVar

import pytest

from homeport.protocol.connection import (
    DEFAULT_WINDOW,
    MAX_FRAME_SIZE,
    MAX_WINDOW,
    SETTING_INITIAL_STREAM_WINDOW,
    SETTING_MAX_CONCURRENT_STREAMS,
    Role,
    Settings,
    TunnelConnection,
)
from homeport.protocol.errors import ErrorCode, ProtocolViolation, StreamViolation
from homeport.protocol.events import (
    ConnectionTerminated,
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
from homeport.protocol.frames import HEADER, Flags, Frame, FrameDecoder, FrameType, encode_frame
from homeport.protocol.heads import (
    HeadError,
    RequestHead,
    ResponseHead,
    encode_request_head,
    encode_response_head,
)

U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
SETTING = struct.Struct(">HI")
BLOCK = struct.Struct(">HI")  # a version 2 header block: field count, names length
MiB = 1024 * 1024


class Pair:
    """A relay and an add-on joined back to back in memory."""

    def __init__(
        self,
        relay: Settings | None = None,
        addon: Settings | None = None,
        *,
        connect: bool = True,
        version: int = 2,
    ) -> None:
        self.relay = TunnelConnection(Role.RELAY, relay, version=version)
        self.addon = TunnelConnection(Role.ADDON, addon, version=version)
        self.relay_events: list[Event] = []
        self.addon_events: list[Event] = []
        self.stalled: set[int] = set()
        #: Flow-controlled payload bytes put on the wire, by (sender, stream id).
        self.framed: dict[tuple[Role, int], int] = defaultdict(int)
        self.wire: dict[Role, list[Frame]] = {Role.RELAY: [], Role.ADDON: []}
        self._observers = {role: FrameDecoder(MAX_FRAME_SIZE) for role in Role}
        if connect:
            self.pump()

    def pump(self, limit: int = MiB) -> tuple[list[Event], list[Event]]:
        """Exchange bytes until both sides are quiet; return the new (relay, add-on) events."""
        relay_new: list[Event] = []
        addon_new: list[Event] = []
        for _ in range(100_000):
            to_addon = self.relay.data_to_send(limit)
            if to_addon:
                addon_new += self.deliver(Role.RELAY, to_addon)
            to_relay = self.addon.data_to_send(limit)
            if to_relay:
                relay_new += self.deliver(Role.ADDON, to_relay)
            if not to_addon and not to_relay:
                break
        else:  # pragma: no cover
            raise AssertionError("the pair never went quiet")
        return relay_new, addon_new

    def deliver(self, sender: Role, data: bytes) -> list[Event]:
        """Hand bytes from ``sender`` to the other side, acknowledging what it consumes."""
        try:
            observed = self._observers[sender].feed(data)
        except ProtocolViolation:  # forged bad input: the receiver's reaction is the test
            observed = []
        for frame in observed:
            self.wire[sender].append(frame)
            if frame.type in (FrameType.DATA, FrameType.WS_MESSAGE):
                self.framed[sender, frame.stream_id] += len(frame.payload)
        receiver = self.addon if sender is Role.RELAY else self.relay
        events = receiver.receive_data(data)
        for event in events:
            if (
                isinstance(event, DataReceived | WebSocketMessageReceived)
                and event.stream_id not in self.stalled
            ):
                receiver.acknowledge(event.stream_id, len(event.data))
        (self.addon_events if sender is Role.RELAY else self.relay_events).extend(events)
        return events

    def assert_settled(self, *, forged: bool = False) -> None:
        """No stream left, and every byte of credit back where it started.

        ``forged``: the test injected frames the sender never accounted for,
        so only the receivers' own books are checked, not that they match.
        """
        assert self.relay.stream_ids() == []
        assert self.addon.stream_ids() == []
        for conn in (self.relay, self.addon):
            assert not conn.terminated
            assert conn._recv_window + conn._unacked == conn.settings.connection_window
        if not forged:
            assert self.relay._send_window == self.addon._recv_window
            assert self.addon._send_window == self.relay._recv_window


def body(events: list[Event], stream_id: int) -> bytes:
    return b"".join(
        e.data for e in events if isinstance(e, DataReceived) and e.stream_id == stream_id
    )


E = TypeVar("E", bound=Event)


def of_type(events: list[Event], cls: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, cls)]


def pattern(size: int, seed: int = 0) -> bytes:
    block = bytes((i * 31 + seed) % 251 for i in range(4096))
    return (block * (size // len(block) + 1))[:size]


def get(path: str = "/", **kw: object) -> RequestHead:
    return RequestHead("GET", path, [("accept", "*/*")], **kw)  # type: ignore[arg-type]


def open_websocket(p: Pair) -> int:
    head = RequestHead("GET", "/api/websocket", [("sec-websocket-protocol", "x")])
    sid = p.relay.open_stream(head, websocket=True, end_stream=False)
    _, events = p.pump()
    assert events == [StreamOpened(sid, head, websocket=True, end_stream=False)]
    p.addon.send_response(
        sid, ResponseHead(101, [("sec-websocket-protocol", "x")]), end_stream=False
    )
    events, _ = p.pump()
    assert events == [
        ResponseReceived(sid, ResponseHead(101, [("sec-websocket-protocol", "x")]), False)
    ]
    return sid


def peer_settings(role: Role, settings: Settings | None = None) -> bytes:
    """What a genuine peer of ``role`` sends first (SETTINGS + tunnel WINDOW_UPDATE)."""
    peer = TunnelConnection(Role.ADDON if role is Role.RELAY else Role.RELAY, settings)
    return peer.data_to_send()


def connected(role: Role, settings: Settings | None = None) -> TunnelConnection:
    conn = TunnelConnection(role, settings)
    conn.data_to_send()
    assert conn.receive_data(peer_settings(role)) == []
    return conn


def frames_of(data: bytes) -> list[Frame]:
    return FrameDecoder(MAX_FRAME_SIZE).feed(data)


def open_frame(
    stream_id: int, head: RequestHead | None = None, flags: Flags = Flags.END_STREAM
) -> bytes:
    return encode_frame(FrameType.OPEN, stream_id, encode_request_head(head or get()), flags)


# ====================================================================== HTTP exchanges


def test_settings_exchange_needs_no_events() -> None:
    p = Pair()
    assert p.relay_events == []
    assert p.addon_events == []
    assert p.relay.accepting_streams
    assert p.addon.accepting_streams
    p.assert_settled()


def test_get_with_response_body() -> None:
    p = Pair()
    head = RequestHead("GET", "/api/states", [("accept", "application/json"), ("x-a", "1")])
    sid = p.relay.open_stream(head, websocket=False, end_stream=True)
    _, events = p.pump()
    assert events == [StreamOpened(sid, head, websocket=False, end_stream=True)]
    response = ResponseHead(200, [("content-type", "application/json")])
    p.addon.send_response(sid, response, end_stream=False)
    p.addon.send_data(sid, b"hello ")
    p.addon.send_data(sid, b"world", end_stream=True)
    events, _ = p.pump()
    assert events[0] == ResponseReceived(sid, response, end_stream=False)
    data = of_type(events, DataReceived)
    assert b"".join(e.data for e in data) == b"hello world"
    assert [e.end_stream for e in data] == [False] * (len(data) - 1) + [True]
    p.assert_settled()


def test_large_bodies_both_ways() -> None:
    p = Pair()
    upload, download = pattern(3 * MiB + 17, 1), pattern(5 * MiB + 3, 2)
    sid = p.relay.open_stream(RequestHead("POST", "/api/upload"), websocket=False, end_stream=False)
    p.relay.send_data(sid, upload, end_stream=True)
    p.pump()
    assert body(p.addon_events, sid) == upload
    assert of_type(p.addon_events, DataReceived)[-1].end_stream
    assert p.addon.has_stream(sid)
    assert p.relay.has_stream(sid)
    p.addon.send_response(sid, ResponseHead(200), end_stream=False)
    p.addon.send_data(sid, download, end_stream=True)
    p.pump()
    assert body(p.relay_events, sid) == download
    p.assert_settled()


def test_response_while_the_upload_is_still_running() -> None:
    p = Pair()
    sid = p.relay.open_stream(RequestHead("PUT", "/x"), websocket=False, end_stream=False)
    p.relay.send_data(sid, b"a" * 1000)
    p.pump()
    p.addon.send_response(sid, ResponseHead(413), end_stream=True)
    events, _ = p.pump()
    assert events == [ResponseReceived(sid, ResponseHead(413), end_stream=True)]
    # Neither side forgets the stream before the relay has ended its half.
    assert p.relay.has_stream(sid)
    assert p.addon.has_stream(sid)
    p.relay.send_data(sid, b"b" * 1000, end_stream=True)
    p.pump()
    assert body(p.addon_events, sid) == b"a" * 1000 + b"b" * 1000
    p.assert_settled()


def test_response_head_with_end_stream() -> None:
    p = Pair()
    sid = p.relay.open_stream(RequestHead("HEAD", "/"), websocket=False, end_stream=True)
    p.pump()
    p.addon.send_response(sid, ResponseHead(204, [("x", "y")]), end_stream=True)
    events, _ = p.pump()
    assert events == [ResponseReceived(sid, ResponseHead(204, [("x", "y")]), end_stream=True)]
    p.assert_settled()


def test_empty_end_stream_after_data() -> None:
    p = Pair()
    sid = p.relay.open_stream(RequestHead("POST", "/"), websocket=False, end_stream=False)
    p.relay.send_data(sid, b"abc")
    p.pump()
    p.relay.send_data(sid, b"", end_stream=True)
    _, events = p.pump()
    assert events == [DataReceived(sid, b"", end_stream=True)]
    assert p.addon.has_stream(sid)
    p.addon.send_response(sid, ResponseHead(200), end_stream=True)
    p.pump()
    p.assert_settled()


def test_many_concurrent_exchanges() -> None:
    p = Pair()
    sids = [
        p.relay.open_stream(get(f"/s/{i}", priority=i % 8), websocket=False, end_stream=True)
        for i in range(100)
    ]
    p.pump()
    for i, sid in enumerate(sids):
        p.addon.send_response(sid, ResponseHead(200), end_stream=False)
        p.addon.send_data(sid, pattern(1000 * i, i), end_stream=True)
    p.pump()
    for i, sid in enumerate(sids):
        assert body(p.relay_events, sid) == pattern(1000 * i, i)
    p.assert_settled()


def test_sending_after_the_end_is_refused() -> None:
    p = Pair()
    sid = p.relay.open_stream(get(), websocket=False, end_stream=True)
    with pytest.raises(RuntimeError):
        p.relay.send_data(sid, b"x")
    p.pump()
    p.addon.send_response(sid, ResponseHead(200), end_stream=True)
    with pytest.raises(RuntimeError):
        p.addon.send_data(sid, b"x")
    with pytest.raises(RuntimeError):
        p.addon.send_response(sid, ResponseHead(200), end_stream=True)
    p.pump()
    with pytest.raises(StreamViolation) as info:  # both sides forgot it
        p.addon.send_data(sid, b"x")
    assert info.value.code is ErrorCode.CANCEL


def test_role_and_order_rules_of_the_api() -> None:
    p = Pair()
    with pytest.raises(RuntimeError):
        p.addon.open_stream(get(), websocket=False, end_stream=True)
    sid = p.relay.open_stream(get(), websocket=False, end_stream=True)
    with pytest.raises(RuntimeError):
        p.relay.send_response(sid, ResponseHead(200), end_stream=True)
    p.pump()
    with pytest.raises(RuntimeError, match="response head"):  # body before head
        p.addon.send_data(sid, b"x")
    for status in (100, 103):  # interim responses would only get the stream reset
        with pytest.raises(HeadError):
            p.addon.send_response(sid, ResponseHead(status), end_stream=False)
    with pytest.raises(RuntimeError):  # 101 answers only an upgrade
        p.addon.send_response(sid, ResponseHead(101), end_stream=False)
    with pytest.raises(HeadError):
        p.addon.send_response(sid, ResponseHead(200, [("x", "a\r\nb")]), end_stream=True)
    p.addon.send_response(sid, ResponseHead(200), end_stream=True)
    p.pump()
    p.assert_settled()


def test_bad_request_heads_are_refused_before_anything_is_sent() -> None:
    p = Pair()
    for head in (RequestHead("GET", "http://x/"), RequestHead("GET", "/", [("a", "\n")])):
        with pytest.raises(HeadError):
            p.relay.open_stream(head, websocket=False, end_stream=True)
    assert p.relay.stream_ids() == []
    assert p.relay.data_to_send() == b""


def test_head_larger_than_a_frame_is_refused() -> None:
    p = Pair()
    huge = RequestHead("GET", "/", [("x-big", "v" * 60_000), ("x-big2", "v" * 10_000)])
    with pytest.raises(StreamViolation) as info:
        p.relay.open_stream(huge, websocket=False, end_stream=True)
    assert info.value.code is ErrorCode.HEAD_TOO_LARGE
    sid = p.relay.open_stream(get(), websocket=False, end_stream=True)
    p.pump()
    with pytest.raises(StreamViolation):
        p.addon.send_response(sid, ResponseHead(200, huge.headers), end_stream=True)


# ========================================================================= WebSocket


def test_websocket_messages_both_ways() -> None:
    p = Pair()
    sid = open_websocket(p)
    p.relay.send_ws_message(sid, b'{"type": "auth"}', text=True)
    p.relay.send_ws_message(sid, b"\x00\x01\xff", text=False)
    p.relay.send_ws_message(sid, b"", text=True)
    _, events = p.pump()
    assert events == [
        WebSocketMessageReceived(sid, b'{"type": "auth"}', text=True),
        WebSocketMessageReceived(sid, b"\x00\x01\xff", text=False),
        WebSocketMessageReceived(sid, b"", text=True),
    ]
    p.addon.send_ws_message(sid, "é".encode(), text=True)
    p.addon.send_ws_message(sid, b"bin", text=False)
    events, _ = p.pump()
    assert events == [
        WebSocketMessageReceived(sid, "é".encode(), text=True),
        WebSocketMessageReceived(sid, b"bin", text=False),
    ]


@pytest.mark.parametrize("text", [False, True])
def test_websocket_messages_larger_than_every_window_do_not_deadlock(text: bool) -> None:
    """5 MiB > stream window (1 MiB): fragments are paid back before the message is whole."""
    p = Pair()
    sid = open_websocket(p)
    other = p.relay.open_stream(get(), websocket=False, end_stream=True)
    big = pattern(5 * MiB, 3)
    for i in range(3):
        p.relay.send_ws_message(sid, big[i:], text=text)
        p.addon.send_ws_message(sid, big[: len(big) - i], text=text)
    p.pump()
    p.addon.send_response(other, ResponseHead(200), end_stream=False)
    p.addon.send_data(other, b"still flowing", end_stream=True)
    relay_events, _ = p.pump()
    assert body(relay_events, other) == b"still flowing"
    assert [e.data for e in of_type(p.addon_events, WebSocketMessageReceived)] == [
        big[i:] for i in range(3)
    ]
    assert [e.data for e in of_type(p.relay_events, WebSocketMessageReceived)] == [
        big[: len(big) - i] for i in range(3)
    ]
    assert all(e.text is text for e in of_type(p.relay_events, WebSocketMessageReceived))
    # Messages went out in fragments no larger than a chunk.
    frames = [f for f in p.wire[Role.RELAY] if f.type is FrameType.WS_MESSAGE]
    assert max(len(f.payload) for f in frames) <= 32 * 1024
    assert sum(1 for f in frames if f.flags & Flags.FIN) == 3
    p.relay.send_ws_close(sid, 1000)
    p.addon.send_ws_close(sid, 1000)
    p.pump()
    p.assert_settled()


def test_websocket_close_handshake_and_codes() -> None:
    p = Pair()
    sid = open_websocket(p)
    p.relay.send_ws_message(sid, b"last words", text=True)
    p.relay.send_ws_close(sid, 4001, "going away - bye")
    _, events = p.pump()
    assert events == [
        WebSocketMessageReceived(sid, b"last words", text=True),
        WebSocketClosed(sid, 4001, "going away - bye"),
    ]
    with pytest.raises(RuntimeError):
        p.relay.send_ws_message(sid, b"x", text=True)
    assert p.relay.has_stream(sid)
    assert p.addon.has_stream(sid)
    # The other side may still talk before it answers the close.
    p.addon.send_ws_message(sid, b"ack", text=True)
    p.addon.send_ws_close(sid, 1000)
    events, _ = p.pump()
    assert events == [
        WebSocketMessageReceived(sid, b"ack", text=True),
        WebSocketClosed(sid, 1000, ""),
    ]
    p.assert_settled()


def test_websocket_close_from_home_assistant_first() -> None:
    p = Pair()
    sid = open_websocket(p)
    p.addon.send_ws_close(sid, 1011, "internal")
    events, _ = p.pump()
    assert events == [WebSocketClosed(sid, 1011, "internal")]
    p.relay.send_ws_close(sid, 1011)
    p.pump()
    p.assert_settled()


def test_websocket_close_reason_is_bounded() -> None:
    p = Pair()
    sid = open_websocket(p)
    p.relay.send_ws_close(sid, 1000, "é" * 200)
    _, events = p.pump()
    # Cut to 123 bytes on a character boundary: the reason stays valid UTF-8.
    assert events == [WebSocketClosed(sid, 1000, "é" * 61)]


def test_websocket_api_rules() -> None:
    p = Pair()
    sid = p.relay.open_stream(get("/api/websocket"), websocket=True, end_stream=False)
    with pytest.raises(RuntimeError):  # not upgraded yet
        p.relay.send_ws_message(sid, b"x", text=True)
    with pytest.raises(RuntimeError):
        p.relay.send_ws_close(sid, 1000)
    p.pump()
    with pytest.raises(RuntimeError):  # 101 cannot end the stream
        p.addon.send_response(sid, ResponseHead(101), end_stream=True)
    p.addon.send_response(sid, ResponseHead(101), end_stream=False)
    p.pump()
    with pytest.raises(RuntimeError):
        p.relay.send_data(sid, b"x")
    with pytest.raises(RuntimeError):
        p.addon.send_data(sid, b"x")


@pytest.mark.parametrize("end_on_head", [False, True])
def test_refused_upgrade_ends_the_stream_on_both_sides(end_on_head: bool) -> None:
    p = Pair()
    sid = p.relay.open_stream(get("/api/websocket"), websocket=True, end_stream=False)
    p.pump()
    p.addon.send_response(
        sid, ResponseHead(403, [("content-type", "text/plain")]), end_stream=end_on_head
    )
    if not end_on_head:
        p.addon.send_data(sid, b"forbidden", end_stream=True)
    events, _ = p.pump()
    assert events[0] == ResponseReceived(
        sid, ResponseHead(403, [("content-type", "text/plain")]), end_stream=end_on_head
    )
    if not end_on_head:
        assert body(events, sid) == b"forbidden"
    p.assert_settled()


def test_relay_gives_up_on_a_refused_upgrade_while_the_body_is_still_coming() -> None:
    p = Pair()
    sid = p.relay.open_stream(get("/api/websocket"), websocket=True, end_stream=False)
    p.pump()
    p.addon.send_response(sid, ResponseHead(502), end_stream=False)
    p.pump()
    p.relay.reset_stream(sid, ErrorCode.CANCEL)
    _, events = p.pump()
    assert events == [StreamReset(sid, ErrorCode.CANCEL, "", remote=True)]
    p.assert_settled()


# ========================================================================= resets


def test_reset_drops_queued_data() -> None:
    p = Pair()
    sid = p.relay.open_stream(get(), websocket=False, end_stream=True)
    p.pump()
    p.addon.send_response(sid, ResponseHead(200), end_stream=False)
    p.addon.send_data(sid, pattern(3 * MiB), end_stream=True)
    p.deliver(Role.ADDON, p.addon.data_to_send(100_000))
    assert p.addon.buffered(sid) > 2 * MiB
    p.addon.reset_stream(sid, ErrorCode.UPSTREAM_UNAVAILABLE, "HA went away")
    assert p.addon.buffered(sid) == 0
    out = p.addon.data_to_send()
    assert [f.type for f in frames_of(out) if f.stream_id == sid] == [FrameType.RESET]
    events = p.deliver(Role.ADDON, out)
    assert events == [StreamReset(sid, ErrorCode.UPSTREAM_UNAVAILABLE, "HA went away", remote=True)]
    p.pump()
    p.assert_settled()


def test_late_frames_after_our_reset_are_ignored() -> None:
    p = Pair()
    sid = p.relay.open_stream(get(), websocket=False, end_stream=True)
    p.pump()
    p.addon.send_response(sid, ResponseHead(200), end_stream=False)
    p.addon.send_data(sid, pattern(3 * MiB), end_stream=True)
    in_flight = p.addon.data_to_send()  # everything the window allows, still on the wire
    assert len(in_flight) > MiB
    p.relay.reset_stream(sid, ErrorCode.CANCEL, "browser left")
    assert p.deliver(Role.ADDON, in_flight) == []  # ignored, no error
    _, events = p.pump()
    assert events == [StreamReset(sid, ErrorCode.CANCEL, "browser left", remote=True)]
    # The tunnel is intact and the ignored bytes were paid back.
    sid2 = p.relay.open_stream(get(), websocket=False, end_stream=True)
    p.pump()
    p.addon.send_response(sid2, ResponseHead(200), end_stream=False)
    p.addon.send_data(sid2, b"ok", end_stream=True)
    events, _ = p.pump()
    assert body(events, sid2) == b"ok"
    p.assert_settled()


def test_reset_right_after_open() -> None:
    p = Pair()
    s1 = p.relay.open_stream(get(), websocket=False, end_stream=True)
    p.relay.reset_stream(s1, ErrorCode.CANCEL)
    s2 = p.relay.open_stream(get(), websocket=False, end_stream=True)
    out = p.relay.data_to_send()
    assert [(f.type, f.stream_id) for f in frames_of(out)] == [
        (FrameType.OPEN, s1),
        (FrameType.RESET, s1),
        (FrameType.OPEN, s2),
    ]
    assert p.deliver(Role.RELAY, out) == [
        StreamOpened(s1, get(), False, True),
        StreamReset(s1, ErrorCode.CANCEL, "", remote=True),
        StreamOpened(s2, get(), False, True),
    ]
    p.addon.send_response(s2, ResponseHead(200), end_stream=True)
    p.pump()
    p.assert_settled()


def test_open_frames_leave_in_stream_id_order_whatever_their_priority() -> None:
    """Regression: OPENs went through the priority queues, so a priority-0 stream opened
    after a priority-7 one overtook it and the add-on dropped the tunnel
    ("stream id not increasing")."""
    p = Pair()
    bulk = p.relay.open_stream(get("/camera", priority=7), websocket=False, end_stream=False)
    p.relay.send_data(bulk, b"x" * 100_000)
    sids = [bulk] + [
        p.relay.open_stream(get(f"/api/{i}", priority=i % 8), websocket=False, end_stream=True)
        for i in range(20)
    ]
    out = p.relay.data_to_send()
    opens = [f.stream_id for f in frames_of(out) if f.type is FrameType.OPEN]
    assert opens == sids
    events = p.deliver(Role.RELAY, out)
    assert [e.stream_id for e in of_type(events, StreamOpened)] == sids
    assert not p.addon.terminated


def test_resets_cross_on_the_wire() -> None:
    p = Pair()
    sid = p.relay.open_stream(get(), websocket=False, end_stream=True)
    p.pump()
    p.relay.reset_stream(sid, ErrorCode.CANCEL)
    p.addon.reset_stream(sid, ErrorCode.INTERNAL)
    to_addon, to_relay = p.relay.data_to_send(), p.addon.data_to_send()
    assert p.deliver(Role.RELAY, to_addon) == []
    assert p.deliver(Role.ADDON, to_relay) == []
    p.pump()
    p.assert_settled()


def test_reset_of_an_unknown_stream_is_a_no_op() -> None:
    p = Pair()
    p.relay.reset_stream(99, ErrorCode.CANCEL)
    p.addon.reset_stream(1, ErrorCode.CANCEL)
    assert p.relay.data_to_send() == b""
    assert p.addon.data_to_send() == b""


@pytest.mark.parametrize(
    "frame",
    [
        encode_frame(FrameType.RESPONSE, 1, encode_response_head(ResponseHead(200))),
        encode_frame(FrameType.DATA, 1, b"late"),
        encode_frame(FrameType.DATA, 1, b"", Flags.END_STREAM),
        encode_frame(FrameType.WS_MESSAGE, 1, b"late", Flags.FIN),
        encode_frame(FrameType.WS_CLOSE, 1, b"\x03\xe8"),
        encode_frame(FrameType.RESET, 1, U32.pack(ErrorCode.CANCEL)),
        encode_frame(FrameType.WINDOW_UPDATE, 1, U32.pack(1000)),
    ],
)
def test_late_frames_for_a_finished_stream_are_ignored(frame: bytes) -> None:
    p = Pair()
    sid = p.relay.open_stream(get(), websocket=False, end_stream=True)
    p.pump()
    p.addon.send_response(sid, ResponseHead(200), end_stream=True)
    p.pump()
    assert sid == 1
    assert not p.relay.has_stream(sid)
    assert p.deliver(Role.ADDON, frame) == []
    assert not p.relay.terminated
    p.pump()
    p.assert_settled(forged=True)


# ====================================================================== GOAWAY & limits


def test_goaway_from_the_relay_stops_new_streams_and_lets_old_ones_finish() -> None:
    p = Pair()
    sid = p.relay.open_stream(get(), websocket=False, end_stream=True)
    p.pump()
    p.relay.goaway(ErrorCode.NO_ERROR, "restarting")
    assert not p.relay.accepting_streams
    with pytest.raises(StreamViolation) as info:
        p.relay.open_stream(get(), websocket=False, end_stream=True)
    assert info.value.code is ErrorCode.REFUSED
    _, events = p.pump()
    assert events == [GoAwayReceived(sid, ErrorCode.NO_ERROR, "restarting")]
    assert not p.addon.accepting_streams
    p.addon.send_response(sid, ResponseHead(200), end_stream=False)
    p.addon.send_data(sid, b"done", end_stream=True)
    events, _ = p.pump()
    assert body(events, sid) == b"done"
    p.assert_settled()


def test_goaway_from_the_addon_refuses_streams_that_crossed_it() -> None:
    p = Pair()
    old = p.relay.open_stream(get(), websocket=False, end_stream=True)
    p.pump()
    p.addon.goaway(ErrorCode.NO_ERROR, "shutting down")
    p.addon.goaway(ErrorCode.INTERNAL, "twice is ignored")
    crossing = p.relay.open_stream(get(), websocket=False, end_stream=True)
    relay_events, addon_events = p.pump()
    assert GoAwayReceived(old, ErrorCode.NO_ERROR, "shutting down") in relay_events
    assert of_type(relay_events, GoAwayReceived) == [
        GoAwayReceived(old, ErrorCode.NO_ERROR, "shutting down")
    ]
    (reset,) = of_type(relay_events, StreamReset)
    assert (reset.stream_id, reset.code, reset.remote) == (crossing, ErrorCode.REFUSED, True)
    assert addon_events == []  # the add-on's application never saw the refused stream
    with pytest.raises(StreamViolation):
        p.relay.open_stream(get(), websocket=False, end_stream=True)
    p.addon.send_response(old, ResponseHead(200), end_stream=True)
    p.pump()
    p.assert_settled()


def test_stream_limit_on_the_relay_side() -> None:
    p = Pair(addon=Settings(max_concurrent_streams=2))
    a = p.relay.open_stream(get(), websocket=False, end_stream=True)
    p.relay.open_stream(get(), websocket=False, end_stream=True)
    with pytest.raises(StreamViolation) as info:
        p.relay.open_stream(get(), websocket=False, end_stream=True)
    assert info.value.code is ErrorCode.TOO_MANY_STREAMS
    p.pump()
    p.addon.send_response(a, ResponseHead(200), end_stream=True)
    p.pump()
    p.relay.open_stream(get(), websocket=False, end_stream=True)  # a slot is free again


def test_stream_limit_on_the_addon_side() -> None:
    """The relay opens before it learned the add-on's limit: the add-on refuses the excess."""
    p = Pair(addon=Settings(max_concurrent_streams=2), connect=False)
    sids = [p.relay.open_stream(get(), websocket=False, end_stream=True) for _ in range(3)]
    relay_events, addon_events = p.pump()
    assert [e.stream_id for e in of_type(addon_events, StreamOpened)] == sids[:2]
    assert relay_events == [StreamReset(sids[2], ErrorCode.TOO_MANY_STREAMS, "stream limit", True)]
    assert p.relay.stream_ids() == sids[:2]
    with pytest.raises(StreamViolation):  # now the relay knows the limit
        p.relay.open_stream(get(), websocket=False, end_stream=True)


def test_ping_and_pong() -> None:
    p = Pair()
    p.relay.ping(b"12345678")
    p.addon.ping(b"abcdefgh")
    relay_events, addon_events = p.pump()
    assert relay_events == [PongReceived(b"12345678")]
    assert addon_events == [PongReceived(b"abcdefgh")]
    with pytest.raises(ValueError, match="8 bytes"):
        p.relay.ping(b"short")


# ==================================================================== bad input: tunnel


def assert_terminated(
    conn: TunnelConnection, events: list[Event], code: ErrorCode, match: str
) -> bytes:
    """Check the tunnel failed as it should; returns what it still has to send (a GOAWAY)."""
    assert events, "no event for bad input"
    last = events[-1]
    assert isinstance(last, ConnectionTerminated), events
    assert last.code is code
    assert match in last.reason
    assert not last.remote
    assert conn.terminated
    assert not conn.accepting_streams
    assert conn.stream_ids() == []
    out = conn.data_to_send()
    goaways = [f for f in frames_of(out) if f.type is FrameType.GOAWAY]
    assert goaways
    assert U32.unpack(goaways[-1].payload[4:8])[0] == code
    assert conn.receive_data(encode_frame(FrameType.PING, 0, b"12345678")) == []
    return out


def settings_frame(*pairs: tuple[int, int]) -> bytes:
    return encode_frame(FrameType.SETTINGS, 0, b"".join(SETTING.pack(k, v) for k, v in pairs))


@pytest.mark.parametrize("role", list(Role))
def test_first_frame_must_be_settings(role: Role) -> None:
    conn = TunnelConnection(role)
    events = conn.receive_data(encode_frame(FrameType.PING, 0, b"12345678"))
    assert_terminated(conn, events, ErrorCode.PROTOCOL, "first frame must be SETTINGS")


@pytest.mark.parametrize(
    ("payload", "code", "match"),
    [
        (settings_frame((SETTING_INITIAL_STREAM_WINDOW, 2 * MiB)), ErrorCode.PROTOCOL, "twice"),
        (encode_frame(FrameType.SETTINGS, 0, b"\x00\x01\x00"), ErrorCode.PROTOCOL, "malformed"),
    ],
)
def test_settings_only_once_and_well_formed(payload: bytes, code: ErrorCode, match: str) -> None:
    conn = TunnelConnection(Role.ADDON)
    if match == "twice":
        assert conn.receive_data(peer_settings(Role.ADDON)) == []
    assert_terminated(conn, conn.receive_data(payload), code, match)


@pytest.mark.parametrize("window", [0, DEFAULT_WINDOW - 1, MAX_WINDOW + 1])
def test_settings_window_out_of_range(window: int) -> None:
    conn = TunnelConnection(Role.RELAY)
    events = conn.receive_data(settings_frame((SETTING_INITIAL_STREAM_WINDOW, window)))
    assert_terminated(conn, events, ErrorCode.FLOW_CONTROL, "bad initial window")


def test_unknown_settings_are_ignored() -> None:
    conn = TunnelConnection(Role.RELAY)
    pairs = ((0x99, 7), (SETTING_MAX_CONCURRENT_STREAMS, 5))
    assert conn.receive_data(settings_frame(*pairs)) == []
    assert not conn.terminated


def window_hog(stream_id: int, size: int) -> bytes:
    return b"".join(
        encode_frame(FrameType.DATA, stream_id, b"x" * min(MAX_FRAME_SIZE, size - off))
        for off in range(0, size, MAX_FRAME_SIZE)
    )


ADDON_TUNNEL_ERRORS = [
    ("unknown type", HEADER.pack(0, 0x42, 0, 0), ErrorCode.PROTOCOL, "unknown frame type"),
    ("bad flags", HEADER.pack(0, FrameType.DATA, 0x80, 1), ErrorCode.PROTOCOL, "not allowed"),
    (
        "bad flags 2",
        HEADER.pack(0, FrameType.OPEN, Flags.FIN, 1),
        ErrorCode.PROTOCOL,
        "not allowed",
    ),
    (
        "oversize",
        HEADER.pack(MAX_FRAME_SIZE + 1, FrameType.DATA, 0, 1),
        ErrorCode.FRAME_SIZE,
        "exceeds",
    ),
    ("huge length", HEADER.pack(2**32 - 1, FrameType.OPEN, 0, 1), ErrorCode.FRAME_SIZE, "exceeds"),
    ("stream 0 DATA", encode_frame(FrameType.DATA, 0, b"x"), ErrorCode.PROTOCOL, "needs a stream"),
    ("stream 0 OPEN", open_frame(0), ErrorCode.PROTOCOL, "needs a stream"),
    (
        "PING on stream",
        encode_frame(FrameType.PING, 1, b"12345678"),
        ErrorCode.PROTOCOL,
        "stream 0",
    ),
    ("idle DATA", encode_frame(FrameType.DATA, 5, b"x"), ErrorCode.PROTOCOL, "idle stream"),
    (
        "idle RESET",
        encode_frame(FrameType.RESET, 5, U32.pack(0)),
        ErrorCode.PROTOCOL,
        "idle stream",
    ),
    ("idle WU", encode_frame(FrameType.WINDOW_UPDATE, 5, U32.pack(1)), ErrorCode.PROTOCOL, "idle"),
    ("idle WS", encode_frame(FrameType.WS_MESSAGE, 5, b"", Flags.FIN), ErrorCode.PROTOCOL, "idle"),
    ("idle close", encode_frame(FrameType.WS_CLOSE, 5, b"\x03\xe8"), ErrorCode.PROTOCOL, "idle"),
    (
        "tunnel window overflow",
        encode_frame(FrameType.WINDOW_UPDATE, 0, U32.pack(MAX_WINDOW)),
        ErrorCode.FLOW_CONTROL,
        "overflow",
    ),
    (
        "zero increment",
        encode_frame(FrameType.WINDOW_UPDATE, 0, U32.pack(0)),
        ErrorCode.PROTOCOL,
        "zero",
    ),
    (
        "short WU",
        encode_frame(FrameType.WINDOW_UPDATE, 0, b"\x00\x01"),
        ErrorCode.PROTOCOL,
        "malformed",
    ),
    (
        "short PING",
        encode_frame(FrameType.PING, 0, b"1234567"),
        ErrorCode.PROTOCOL,
        "malformed PING",
    ),
    (
        "long PING",
        encode_frame(FrameType.PING, 0, b"123456789"),
        ErrorCode.PROTOCOL,
        "malformed PING",
    ),
    (
        "short RESET",
        encode_frame(FrameType.RESET, 1, b"\x00"),
        ErrorCode.PROTOCOL,
        "malformed RESET",
    ),
    ("short GOAWAY", encode_frame(FrameType.GOAWAY, 0, b"\x00" * 7), ErrorCode.PROTOCOL, "GOAWAY"),
    (
        "RESPONSE to the add-on",
        encode_frame(FrameType.RESPONSE, 1, encode_response_head(ResponseHead(200))),
        ErrorCode.PROTOCOL,
        "only the add-on",
    ),
    ("stream id reused", open_frame(1) + open_frame(1), ErrorCode.PROTOCOL, "not increasing"),
    ("stream id going back", open_frame(3) + open_frame(2), ErrorCode.PROTOCOL, "not increasing"),
    (
        "more than the stream window",
        open_frame(1, flags=Flags.NONE) + window_hog(1, MiB + 1),
        ErrorCode.FLOW_CONTROL,
        "stream window exceeded",
    ),
]


@pytest.mark.parametrize(
    ("wire", "code", "match"),
    [case[1:] for case in ADDON_TUNNEL_ERRORS],
    ids=[case[0] for case in ADDON_TUNNEL_ERRORS],
)
def test_tunnel_errors_at_the_addon(wire: bytes, code: ErrorCode, match: str) -> None:
    conn = connected(Role.ADDON)
    assert_terminated(conn, conn.receive_data(wire), code, match)


def test_oversize_frame_is_refused_before_its_payload_arrives() -> None:
    conn = connected(Role.ADDON)
    conn.receive_data(open_frame(1, flags=Flags.NONE))
    events = conn.receive_data(HEADER.pack(10 * MiB, FrameType.DATA, 0, 1))
    assert_terminated(conn, events, ErrorCode.FRAME_SIZE, "exceeds")
    assert len(conn._decoder._buffer) <= 10


def test_more_than_the_tunnel_window_is_a_tunnel_error() -> None:
    settings = Settings(initial_stream_window=4 * MiB, connection_window=DEFAULT_WINDOW)
    conn = connected(Role.ADDON, settings)
    events = conn.receive_data(open_frame(1, flags=Flags.NONE) + window_hog(1, DEFAULT_WINDOW + 1))
    assert_terminated(conn, events, ErrorCode.FLOW_CONTROL, "connection window exceeded")


RELAY_TUNNEL_ERRORS = [
    ("OPEN to the relay", open_frame(1), ErrorCode.PROTOCOL, "only the relay"),
    (
        "idle RESPONSE",
        encode_frame(FrameType.RESPONSE, 7, encode_response_head(ResponseHead(200))),
        ErrorCode.PROTOCOL,
        "idle stream",
    ),
    ("idle DATA", encode_frame(FrameType.DATA, 7, b"x"), ErrorCode.PROTOCOL, "idle stream"),
    ("unknown type", HEADER.pack(0, 0xB, 0, 0), ErrorCode.PROTOCOL, "unknown frame type"),
    ("settings again", settings_frame(), ErrorCode.PROTOCOL, "twice"),
]


@pytest.mark.parametrize(
    ("wire", "code", "match"),
    [case[1:] for case in RELAY_TUNNEL_ERRORS],
    ids=[case[0] for case in RELAY_TUNNEL_ERRORS],
)
def test_tunnel_errors_at_the_relay(wire: bytes, code: ErrorCode, match: str) -> None:
    p = Pair()
    p.relay.open_stream(get(), websocket=False, end_stream=True)  # stream 1 exists
    p.pump()
    events = p.deliver(Role.ADDON, wire)
    out = assert_terminated(p.relay, events, code, match)
    # The add-on hears why, as a GOAWAY carrying the code and reason.
    addon_events = p.deliver(Role.RELAY, out)
    assert isinstance(addon_events[-1], GoAwayReceived)
    assert addon_events[-1].code is code
    assert match in addon_events[-1].reason


def test_a_tunnel_error_after_a_graceful_goaway_is_still_reported() -> None:
    p = Pair()
    p.relay.goaway(ErrorCode.NO_ERROR, "draining")
    p.pump()
    events = p.deliver(Role.ADDON, HEADER.pack(0, 0x42, 0, 0))
    assert isinstance(events[-1], ConnectionTerminated)
    _, addon_events = p.pump()
    assert [e.code for e in of_type(addon_events, GoAwayReceived)] == [ErrorCode.PROTOCOL]


def test_good_frames_ahead_of_a_bad_one_in_one_chunk_are_processed() -> None:
    conn = connected(Role.ADDON)
    wire = open_frame(1) + encode_frame(FrameType.PING, 0, b"12345678", Flags.ACK)
    events = conn.receive_data(wire + HEADER.pack(0, 0x42, 0, 0))
    assert [type(e) for e in events] == [StreamOpened, PongReceived, ConnectionTerminated]


# ==================================================================== bad input: one stream


def block(*fields: tuple[bytes, bytes]) -> bytes:
    """A header block as version 2 writes it, built by hand (no checks)."""
    names = b"\n".join(n for n, _ in fields)
    return BLOCK.pack(len(fields), len(names)) + names + b"\n".join(v for _, v in fields)


NO_FIELDS = block()
BAD_OPEN_PAYLOADS = {
    "CR LF in a value": (b"\x03\x03GET\x00\x01/" + block((b"a", b"x\r\ny")), "invalid header"),
    "LF in a value": (b"\x03\x03GET\x00\x01/" + block((b"a", b"x\ny")), "invalid header"),
    "NUL in a value": (b"\x03\x03GET\x00\x01/" + block((b"a", b"x\x00y")), "invalid header"),
    "CR in a name": (b"\x03\x03GET\x00\x01/" + block((b"a\r", b"y")), "invalid header"),
    "absolute-form": (b"\x03\x03GET\x00\x0ahttp://x/a" + NO_FIELDS, "origin-form"),
    "//host": (b"\x03\x03GET\x00\x07//evil/" + NO_FIELDS, "origin-form"),
    "asterisk": (b"\x03\x07OPTIONS\x00\x01*" + NO_FIELDS, "origin-form"),
    "authority-form": (b"\x03\x07CONNECT\x00\x08evil:443" + NO_FIELDS, "origin-form"),
    "bad method": (b"\x03\x04G(T)\x00\x01/" + NO_FIELDS, "invalid method"),
    "empty method": (b"\x03\x00\x00\x01/" + NO_FIELDS, "invalid method"),
    "priority 8": (b"\x08\x03GET\x00\x01/" + NO_FIELDS, "priority"),
    "truncated": (b"\x03\x03GET\x00\x01/\x00", "truncated"),
    "empty": (b"", "truncated"),
    "trailing bytes": (b"\x03\x03GET\x00\x01/" + NO_FIELDS + b"!", "trailing"),
}


@pytest.mark.parametrize(
    ("payload", "match"), BAD_OPEN_PAYLOADS.values(), ids=BAD_OPEN_PAYLOADS.keys()
)
def test_bad_request_head_resets_only_that_stream(payload: bytes, match: str) -> None:
    p = Pair()
    good = p.relay.open_stream(get(), websocket=False, end_stream=True)
    p.pump()
    bad = p.relay.open_stream(get(), websocket=False, end_stream=True)
    p.relay.data_to_send()  # the genuine OPEN is replaced by a forged one on the wire
    assert p.deliver(Role.RELAY, encode_frame(FrameType.OPEN, bad, payload, Flags.END_STREAM)) == []
    assert not p.addon.terminated
    assert p.addon.stream_ids() == [good]
    relay_events, _ = p.pump()
    (reset,) = relay_events
    assert isinstance(reset, StreamReset)
    assert (reset.stream_id, reset.code, reset.remote) == (bad, ErrorCode.BAD_REQUEST, True)
    assert match in reset.reason
    p.addon.send_response(good, ResponseHead(200), end_stream=False)
    p.addon.send_data(good, b"unaffected", end_stream=True)
    relay_events, _ = p.pump()
    assert body(relay_events, good) == b"unaffected"
    p.assert_settled()


def test_version_1_carries_heads_in_its_own_block_and_refuses_bad_ones() -> None:
    """A relay serves an older add-on in protocol version 1: length-prefixed fields."""
    p = Pair(version=1)
    head = RequestHead("POST", "/api/x", [("content-type", "text/plain"), ("x-empty", "")])
    sid = p.relay.open_stream(head, websocket=False, end_stream=True)
    _, addon_events = p.pump()
    (open_frame,) = [f for f in p.wire[Role.RELAY] if f.type is FrameType.OPEN]
    assert open_frame.payload.endswith(
        b"\x00\x02\x00\x0ccontent-type\x00\x0atext/plain\x00\x07x-empty\x00\x00"
    )
    assert addon_events == [StreamOpened(sid, head, websocket=False, end_stream=True)]
    p.addon.send_response(sid, ResponseHead(200, [("set-cookie", "a=b")]), end_stream=True)
    relay_events, _ = p.pump()
    assert relay_events == [ResponseReceived(sid, ResponseHead(200, [("set-cookie", "a=b")]), True)]
    bad = p.relay.open_stream(get(), websocket=False, end_stream=True)
    p.relay.data_to_send()  # the genuine OPEN is replaced by a forged one on the wire
    forged = b"\x03\x03GET\x00\x01/\x00\x01\x00\x01a\x00\x04x\r\ny"  # CR LF in a value
    p.deliver(Role.RELAY, encode_frame(FrameType.OPEN, bad, forged, Flags.END_STREAM))
    relay_events, _ = p.pump()
    (reset,) = relay_events
    assert isinstance(reset, StreamReset)
    assert reset.code is ErrorCode.BAD_REQUEST
    assert not p.addon.terminated


def response(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    return U16.pack(status) + block(*(headers or []))


RELAY_STREAM_ERRORS: dict[str, tuple[bool, list[bytes], ErrorCode, str]] = {
    # name: (websocket?, frames for stream 2 after its OPEN, code, reason fragment)
    "CR LF in a response header": (
        False,
        [encode_frame(FrameType.RESPONSE, 2, response(200, [(b"x", b"a\r\nSet-Cookie: y")]))],
        ErrorCode.PROTOCOL,
        "invalid header",
    ),
    "NUL in a response header": (
        False,
        [encode_frame(FrameType.RESPONSE, 2, response(200, [(b"x", b"\x00")]))],
        ErrorCode.PROTOCOL,
        "invalid header",
    ),
    "status 600": (
        False,
        [encode_frame(FrameType.RESPONSE, 2, response(600))],
        ErrorCode.PROTOCOL,
        "status",
    ),
    "truncated response": (
        False,
        [encode_frame(FrameType.RESPONSE, 2, response()[:3])],
        ErrorCode.PROTOCOL,
        "truncated",
    ),
    "trailing bytes": (
        False,
        [encode_frame(FrameType.RESPONSE, 2, response() + b"\x00")],
        ErrorCode.PROTOCOL,
        "trailing",
    ),
    "100 continue": (
        False,
        [encode_frame(FrameType.RESPONSE, 2, response(100))],
        ErrorCode.PROTOCOL,
        "interim",
    ),
    "103 early hints": (
        False,
        [encode_frame(FrameType.RESPONSE, 2, response(103))],
        ErrorCode.PROTOCOL,
        "interim",
    ),
    "101 without upgrade": (
        False,
        [encode_frame(FrameType.RESPONSE, 2, response(101))],
        ErrorCode.PROTOCOL,
        "101",
    ),
    "101 with END_STREAM": (
        True,
        [encode_frame(FrameType.RESPONSE, 2, response(101), Flags.END_STREAM)],
        ErrorCode.PROTOCOL,
        "101",
    ),
    "second response": (
        False,
        [encode_frame(FrameType.RESPONSE, 2, response())] * 2,
        ErrorCode.PROTOCOL,
        "second response",
    ),
    "DATA before the response": (
        False,
        [encode_frame(FrameType.DATA, 2, b"x")],
        ErrorCode.PROTOCOL,
        "DATA",
    ),
    "DATA on a WebSocket": (
        True,
        [encode_frame(FrameType.RESPONSE, 2, response(101)), encode_frame(FrameType.DATA, 2, b"x")],
        ErrorCode.PROTOCOL,
        "DATA",
    ),
    "WS message before 101": (
        True,
        [encode_frame(FrameType.WS_MESSAGE, 2, b"x", Flags.FIN)],
        ErrorCode.PROTOCOL,
        "not established",
    ),
    "WS message on plain HTTP": (
        False,
        [
            encode_frame(FrameType.RESPONSE, 2, response()),
            encode_frame(FrameType.WS_MESSAGE, 2, b"x"),
        ],
        ErrorCode.PROTOCOL,
        "not established",
    ),
    "WS close before 101": (
        True,
        [encode_frame(FrameType.WS_CLOSE, 2, b"\x03\xe8")],
        ErrorCode.PROTOCOL,
        "not established",
    ),
    "frame after END_STREAM": (
        False,
        [
            encode_frame(FrameType.RESPONSE, 2, response(), Flags.END_STREAM),
            encode_frame(FrameType.DATA, 2, b"more"),
        ],
        ErrorCode.PROTOCOL,
        "after end of stream",
    ),
    "fragment changes type": (
        True,
        [
            encode_frame(FrameType.RESPONSE, 2, response(101)),
            encode_frame(FrameType.WS_MESSAGE, 2, b"a", Flags.TEXT),
            encode_frame(FrameType.WS_MESSAGE, 2, b"b", Flags.FIN),
        ],
        ErrorCode.PROTOCOL,
        "fragment type",
    ),
    "message over the limit": (
        True,
        [encode_frame(FrameType.RESPONSE, 2, response(101))]
        + [encode_frame(FrameType.WS_MESSAGE, 2, b"m" * 60_000)] * 5,
        ErrorCode.MESSAGE_TOO_LARGE,
        "too large",
    ),
    "close too short": (
        True,
        [
            encode_frame(FrameType.RESPONSE, 2, response(101)),
            encode_frame(FrameType.WS_CLOSE, 2, b"\x03"),
        ],
        ErrorCode.PROTOCOL,
        "malformed close",
    ),
    "close too long": (
        True,
        [
            encode_frame(FrameType.RESPONSE, 2, response(101)),
            encode_frame(FrameType.WS_CLOSE, 2, b"\x03\xe8" + b"r" * 124),
        ],
        ErrorCode.PROTOCOL,
        "malformed close",
    ),
    "stream window overflow": (
        False,
        [encode_frame(FrameType.WINDOW_UPDATE, 2, U32.pack(MAX_WINDOW))],
        ErrorCode.FLOW_CONTROL,
        "overflow",
    ),
}


@pytest.mark.parametrize(
    ("websocket", "frames", "code", "match"),
    RELAY_STREAM_ERRORS.values(),
    ids=RELAY_STREAM_ERRORS.keys(),
)
def test_stream_errors_at_the_relay_reset_only_that_stream(
    websocket: bool, frames: list[bytes], code: ErrorCode, match: str
) -> None:
    p = Pair(relay=Settings(max_ws_message=256 * 1024))
    good = p.relay.open_stream(get(), websocket=False, end_stream=True)
    bad = p.relay.open_stream(get("/ws"), websocket=websocket, end_stream=False)
    assert bad == 2
    p.pump()
    events = p.deliver(Role.ADDON, b"".join(frames))
    assert not p.relay.terminated
    (reset,) = of_type(events, StreamReset)
    assert (reset.stream_id, reset.code, reset.remote) == (bad, code, False)
    assert match in reset.reason
    assert not p.relay.has_stream(bad)
    _, addon_events = p.pump()  # the add-on is told and forgets the stream too
    assert of_type(addon_events, StreamReset) == [StreamReset(bad, code, reset.reason, remote=True)]
    p.addon.send_response(good, ResponseHead(200), end_stream=False)
    p.addon.send_data(good, b"unaffected", end_stream=True)
    relay_events, _ = p.pump()
    assert body(relay_events, good) == b"unaffected"
    p.assert_settled(forged=True)


ADDON_STREAM_ERRORS: dict[str, tuple[list[bytes], ErrorCode, str]] = {
    # Frames the add-on receives on a WebSocket stream 1 it has accepted with 101.
    "DATA on a WebSocket": ([encode_frame(FrameType.DATA, 1, b"x")], ErrorCode.PROTOCOL, "DATA"),
    "fragment changes type": (
        [
            encode_frame(FrameType.WS_MESSAGE, 1, b"a"),
            encode_frame(FrameType.WS_MESSAGE, 1, b"b", Flags.TEXT | Flags.FIN),
        ],
        ErrorCode.PROTOCOL,
        "fragment type",
    ),
    "message over the limit": (
        [encode_frame(FrameType.WS_MESSAGE, 1, b"m" * 60_000)] * 5,
        ErrorCode.MESSAGE_TOO_LARGE,
        "too large",
    ),
    "message after close": (
        [
            encode_frame(FrameType.WS_CLOSE, 1, b"\x03\xe8"),
            encode_frame(FrameType.WS_MESSAGE, 1, b"x"),
        ],
        ErrorCode.PROTOCOL,
        "after end of stream",
    ),
}


@pytest.mark.parametrize(
    ("frames", "code", "match"), ADDON_STREAM_ERRORS.values(), ids=ADDON_STREAM_ERRORS.keys()
)
def test_stream_errors_at_the_addon(frames: list[bytes], code: ErrorCode, match: str) -> None:
    p = Pair(addon=Settings(max_ws_message=256 * 1024))
    sid = open_websocket(p)
    other = p.relay.open_stream(get(), websocket=False, end_stream=True)
    p.pump()
    events = p.deliver(Role.RELAY, b"".join(frames))
    (reset,) = of_type(events, StreamReset)
    assert (reset.stream_id, reset.code, reset.remote) == (sid, code, False)
    assert match in reset.reason
    assert not p.addon.terminated
    relay_events, _ = p.pump()
    assert of_type(relay_events, StreamReset) == [StreamReset(sid, code, reset.reason, remote=True)]
    p.addon.send_response(other, ResponseHead(204), end_stream=True)
    p.pump()
    p.assert_settled(forged=True)


def test_websocket_frames_before_the_addon_accepted_the_upgrade() -> None:
    p = Pair()
    sid = p.relay.open_stream(get("/ws"), websocket=True, end_stream=False)
    p.pump()
    events = p.deliver(Role.RELAY, encode_frame(FrameType.WS_MESSAGE, sid, b"early", Flags.FIN))
    assert of_type(events, StreamReset)[0].reason == "WebSocket not established"
    p.pump()
    p.assert_settled(forged=True)


def test_peer_error_codes_unknown_to_us_map_to_internal() -> None:
    p = Pair()
    sid = p.relay.open_stream(get(), websocket=False, end_stream=True)
    p.pump()
    events = p.deliver(Role.ADDON, encode_frame(FrameType.RESET, sid, U32.pack(9999) + b"why"))
    assert events == [StreamReset(sid, ErrorCode.INTERNAL, "why", remote=True)]


def test_a_flood_of_tiny_fragments_costs_only_the_bytes_it_carries() -> None:
    """Regression: fragments were kept as a list, so empty or 1-byte fragments cost
    far more memory than they carried (and empty ones no flow-control credit at all)."""
    p = Pair()
    sid = open_websocket(p)
    empty = encode_frame(FrameType.WS_MESSAGE, sid, b"")
    tiny = encode_frame(FrameType.WS_MESSAGE, sid, b"x")
    assert p.deliver(Role.ADDON, empty * 50_000 + tiny * 1000) == []
    stream = p.relay._streams[sid]
    assert isinstance(stream.ws_buffer, bytearray)
    assert len(stream.ws_buffer) == 1000
    events = p.deliver(Role.ADDON, encode_frame(FrameType.WS_MESSAGE, sid, b"!", Flags.FIN))
    assert events == [WebSocketMessageReceived(sid, b"x" * 1000 + b"!", text=False)]
    p.relay.send_ws_close(sid, 1000)
    p.addon.send_ws_close(sid, 1000)
    p.pump()
    p.assert_settled(forged=True)


def test_output_batches_stay_near_the_limit_even_with_many_heads() -> None:
    """OPEN frames travel with the control frames; a burst of large heads is still cut
    into batches the peer's transport accepts (limit + at most two frames)."""
    p = Pair()
    big = RequestHead("GET", "/", [("cookie", "c" * 60_000)])
    sids = [p.relay.open_stream(big, websocket=False, end_stream=False) for _ in range(40)]
    for sid in sids:
        p.relay.send_data(sid, b"body", end_stream=True)
    limit = 256 * 1024
    batches = []
    while out := p.relay.data_to_send(limit):
        assert len(out) <= limit + 2 * (MAX_FRAME_SIZE + HEADER.size)
        batches.append(out)
        p.deliver(Role.RELAY, out)
    assert len(batches) > 5
    assert [e.stream_id for e in of_type(p.addon_events, StreamOpened)] == sids
    assert body(p.addon_events, sids[-1]) == b"body"
    assert not p.addon.terminated
