"""What a peer can make us hold or answer is budgeted (R-ADD-07), sans I/O.

A linked but hostile add-on must not be able to grow the relay's memory by
sending frames that each cost an answer (PING, CONTROL), or by holding large
WebSocket messages half-sent on many streams.  And a stream the application
gives up on is released without losing what this side already sent.
"""

from __future__ import annotations

import struct

import pytest
from test_flow_control import Pair

from homeport.protocol import (
    ConnectionTerminated,
    DataReceived,
    ErrorCode,
    RequestHead,
    ResponseHead,
    ResponseReceived,
    Role,
    Settings,
    StreamReset,
    TunnelConnection,
)
from homeport.protocol.connection import (
    CONTROL_BURST,
    CONTROL_RATE,
    PING_BURST,
    PING_RATE,
    RateBudget,
)
from homeport.protocol.frames import Flags, FrameType, encode_frame

MiB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _connected(role: Role, clock: Clock, settings: Settings | None = None) -> TunnelConnection:
    """A connection that has seen its peer's SETTINGS."""
    conn = TunnelConnection(role, settings, clock=clock)
    peer_role = Role.ADDON if role is Role.RELAY else Role.RELAY
    peer = TunnelConnection(peer_role)
    conn.receive_data(peer.data_to_send())
    conn.data_to_send()
    return conn


def _ping(n: int) -> bytes:
    return encode_frame(FrameType.PING, 0, struct.pack(">Q", n))


def test_rate_budget_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    budget = RateBudget(3, 2.0, clock)
    assert [budget.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5  # one token back
    assert budget.take()
    assert not budget.take()
    clock.now += 100  # never more than the burst
    assert [budget.take() for _ in range(4)] == [True, True, True, False]


def test_pings_within_the_budget_are_answered() -> None:
    clock = Clock()
    relay = _connected(Role.RELAY, clock)
    for n in range(PING_BURST):
        assert relay.receive_data(_ping(n)) == []
    answers = relay.data_to_send()
    assert answers.count(bytes([FrameType.PING, Flags.ACK])) == PING_BURST
    # Keepalives at the sustained rate go on for ever.
    for n in range(100):
        clock.now += 1 / PING_RATE
        assert relay.receive_data(_ping(1000 + n)) == []
    assert not relay.terminated


def test_a_ping_flood_ends_the_tunnel_instead_of_queueing_answers() -> None:
    clock = Clock()
    relay = _connected(Role.RELAY, clock)
    events = relay.receive_data(b"".join(_ping(n) for n in range(10_000)))
    assert relay.terminated
    assert [type(e) for e in events] == [ConnectionTerminated]
    assert events[0].code is ErrorCode.FLOOD
    # What was queued is the burst's answers and the GOAWAY, not 10,000 answers.
    assert relay.output_backlog < (PING_BURST + 2) * 64


def _control(request_id: int, body: bytes = b"{}") -> bytes:
    return encode_frame(FrameType.CONTROL, 0, struct.pack(">I", request_id) + body)


def test_a_control_flood_ends_the_tunnel() -> None:
    """Malformed or busy requests each cost an answer: past the budget, the tunnel ends."""
    clock = Clock()
    relay = _connected(Role.RELAY, clock, Settings(accept_control=True))
    events = relay.receive_data(
        b"".join(_control(n + 1, b"not json") for n in range(CONTROL_BURST))
    )
    assert events == []  # each got a clean "malformed" answer
    assert not relay.terminated
    clock.now += 1 / CONTROL_RATE
    assert relay.receive_data(_control(10_000, b"[]")) == []  # refilled: answered
    events = relay.receive_data(b"".join(_control(20_000 + n, b"x") for n in range(1000)))
    assert relay.terminated
    assert isinstance(events[-1], ConnectionTerminated)
    assert events[-1].code is ErrorCode.FLOOD
    answers = relay.data_to_send()
    assert answers.count(b'"malformed"') == CONTROL_BURST + 1


def _ws_pair(settings: Settings) -> tuple[Pair, list[int]]:
    pair = Pair(relay=settings)
    ids = []
    for _ in range(4):
        sid = pair.relay.open_stream(RequestHead("GET", "/ws"), websocket=True, end_stream=False)
        ids.append(sid)
    pair.pump()
    for sid in ids:
        pair.addon.send_response(sid, ResponseHead(101), end_stream=False)
    pair.pump()
    return pair, ids


def test_partial_messages_on_many_streams_cannot_pass_the_tunnel_budget() -> None:
    """Each stream may hold one large message, but all of them together only max_prepaid."""
    settings = Settings(max_ws_message=4 * MiB, max_prepaid=6 * MiB)
    pair, ids = _ws_pair(settings)
    fragment = b"\x00" * (64 * 1024)
    # Hand-framed, unfinished messages: 3 MiB on each of the first two streams.
    for sid in ids[:2]:
        for _ in range(48):
            pair.relay.receive_data(encode_frame(FrameType.WS_MESSAGE, sid, fragment, Flags.NONE))
    assert pair.relay.message_reserve == 6 * MiB
    events = pair.relay.receive_data(
        encode_frame(FrameType.WS_MESSAGE, ids[2], fragment, Flags.NONE)
    )
    assert [(type(e), e.stream_id, e.code) for e in events if isinstance(e, StreamReset)] == [
        (StreamReset, ids[2], ErrorCode.FLOOD)
    ]
    assert not pair.relay.terminated
    assert pair.relay.has_stream(ids[0])
    assert pair.relay.has_stream(ids[1])
    # The budget comes back as streams end.
    pair.relay.reset_stream(ids[0], ErrorCode.CANCEL)
    assert pair.relay.message_reserve == 3 * MiB
    pair.relay.reset_stream(ids[1], ErrorCode.CANCEL)
    assert pair.relay.message_reserve == 0


def test_a_large_message_still_flows_within_the_budget() -> None:
    settings = Settings(max_ws_message=4 * MiB, max_prepaid=4 * MiB)
    pair, ids = _ws_pair(settings)
    message = bytes(range(256)) * (3 * MiB // 256)
    pair.addon.send_ws_message(ids[0], message, text=False)
    relay_events, _ = pair.pump()
    received = [e for e in relay_events if getattr(e, "stream_id", None) == ids[0]]
    assert [len(e.data) for e in received] == [len(message)]
    assert pair.relay.message_reserve == 0  # acknowledged by the pump


def test_released_stream_sends_its_ended_output_then_resets() -> None:
    """An answer sent in full is not cut short by releasing the stream (unread upload)."""
    pair = Pair()
    sid = pair.relay.open_stream(RequestHead("POST", "/upload"), websocket=False, end_stream=False)
    pair.relay.send_data(sid, b"x" * 1000)
    pair.pump()
    body = b"y" * (3 * MiB)
    pair.addon.send_response(sid, ResponseHead(200), end_stream=False)
    pair.addon.send_data(sid, body, end_stream=True)
    pair.addon.release_stream(sid, ErrorCode.NO_ERROR, "response complete")
    assert pair.addon.has_stream(sid)  # the answer is still queued
    # The upload goes on arriving meanwhile; it is paid back unread.
    pair.relay.send_data(sid, b"z" * 100_000)
    relay_events, addon_events = pair.pump()
    assert not any(isinstance(e, DataReceived) for e in addon_events)
    got = b"".join(e.data for e in relay_events if isinstance(e, DataReceived))
    assert got == body
    assert any(isinstance(e, ResponseReceived) for e in relay_events)
    resets = [e for e in relay_events if isinstance(e, StreamReset)]
    assert [(e.code, e.remote) for e in resets] == [(ErrorCode.NO_ERROR, True)]
    pair.assert_settled()


def test_release_before_the_end_resets_at_once() -> None:
    pair = Pair()
    sid = pair.relay.open_stream(RequestHead("GET", "/"), websocket=False, end_stream=True)
    pair.pump()
    pair.addon.send_response(sid, ResponseHead(200), end_stream=False)
    pair.addon.send_data(sid, b"partial")
    pair.addon.release_stream(sid, ErrorCode.CANCEL, "gone")
    assert not pair.addon.has_stream(sid)
    relay_events, _ = pair.pump()
    assert [type(e) for e in relay_events][-1] is StreamReset
    pair.assert_settled()


@pytest.mark.parametrize("role", [Role.RELAY, Role.ADDON])
def test_release_of_an_unknown_stream_is_a_no_op(role: Role) -> None:
    conn = _connected(role, Clock())
    conn.release_stream(7, ErrorCode.CANCEL)
    assert conn.output_backlog == 0
