"""CONTROL frames: the add-on's owner actions and the relay's answers, and every bad input."""

from __future__ import annotations

import struct

import pytest

from homeport.protocol.connection import (
    MAX_CONTROL_BODY,
    MAX_FRAME_SIZE,
    MAX_PENDING_CONTROL,
    SETTING_CONTROL,
    SETTING_INITIAL_STREAM_WINDOW,
    Role,
    Settings,
    TunnelConnection,
)
from homeport.protocol.errors import ErrorCode
from homeport.protocol.events import (
    ConnectionTerminated,
    ControlAnswered,
    ControlRequested,
    DataReceived,
    Event,
    StreamOpened,
)
from homeport.protocol.frames import Flags, FrameDecoder, FrameType, encode_frame
from homeport.protocol.heads import RequestHead, ResponseHead

U32 = struct.Struct(">I")
SETTING = struct.Struct(">HI")
#: The relay as it runs: it answers CONTROL requests.
ANSWERING = Settings(accept_control=True)


def exchange(sender: TunnelConnection, receiver: TunnelConnection) -> list[Event]:
    return receiver.receive_data(sender.data_to_send())


def pair(relay: Settings | None = ANSWERING) -> tuple[TunnelConnection, TunnelConnection]:
    """A relay and an add-on that have exchanged SETTINGS."""
    r = TunnelConnection(Role.RELAY, relay)
    a = TunnelConnection(Role.ADDON)
    assert exchange(r, a) == []
    assert exchange(a, r) == []
    return r, a


def control_frame(request_id: int, body: bytes, flags: Flags = Flags.NONE) -> bytes:
    return encode_frame(FrameType.CONTROL, 0, U32.pack(request_id) + body, flags)


def replies(data: bytes) -> list[tuple[int, bytes]]:
    frames = FrameDecoder(MAX_FRAME_SIZE).feed(data)
    return [
        (U32.unpack_from(f.payload)[0], f.payload[4:])
        for f in frames
        if f.type is FrameType.CONTROL and f.flags & Flags.ACK
    ]


def terminated(events: list[Event], code: ErrorCode, match: str) -> None:
    assert events, "no event for bad input"
    last = events[-1]
    assert isinstance(last, ConnectionTerminated), events
    assert last.code is code
    assert match in last.reason


# ====================================================================== capability


def test_only_a_relay_that_answers_advertises_control() -> None:
    relay, addon = pair()
    assert addon.peer_accepts_control
    assert not relay.peer_accepts_control  # the add-on answers nothing

    _, old_addon = pair(relay=None)  # a relay without a handler (or an older one)
    assert not old_addon.peer_accepts_control
    with pytest.raises(RuntimeError, match="does not accept control"):
        old_addon.send_control_request({"op": "create_app_link", "name": "phone"})
    assert old_addon.data_to_send() == b""  # nothing went out that could end the tunnel


def test_before_the_relays_settings_nothing_is_sent() -> None:
    addon = TunnelConnection(Role.ADDON)
    addon.data_to_send()
    with pytest.raises(RuntimeError, match="does not accept control"):
        addon.send_control_request({"op": "x"})


@pytest.mark.parametrize("value", [2, 0xFFFFFFFF])
def test_a_bad_control_setting_is_a_tunnel_error(value: int) -> None:
    addon = TunnelConnection(Role.ADDON)
    frame = encode_frame(FrameType.SETTINGS, 0, SETTING.pack(SETTING_CONTROL, value))
    terminated(addon.receive_data(frame), ErrorCode.PROTOCOL, "bad CONTROL setting")


def test_control_setting_zero_means_no() -> None:
    addon = TunnelConnection(Role.ADDON)
    payload = SETTING.pack(SETTING_INITIAL_STREAM_WINDOW, 1 << 20) + SETTING.pack(
        SETTING_CONTROL, 0
    )
    assert addon.receive_data(encode_frame(FrameType.SETTINGS, 0, payload)) == []
    assert not addon.peer_accepts_control


# ====================================================================== exchanges


def test_request_and_reply() -> None:
    relay, addon = pair()
    body = {"op": "create_app_link", "name": "Anna's phone ☎"}
    request_id = addon.send_control_request(body)
    assert addon.control_requests_pending == 1
    assert exchange(addon, relay) == [ControlRequested(request_id, body)]
    relay.send_control_reply(request_id, {"url": "https://abc.example", "name": body["name"]})
    assert exchange(relay, addon) == [
        ControlAnswered(request_id, {"url": "https://abc.example", "name": body["name"]})
    ]
    assert addon.control_requests_pending == 0
    with pytest.raises(RuntimeError, match="no control request"):
        relay.send_control_reply(request_id, {})  # once only


def test_control_rides_beside_streams_without_disturbing_them() -> None:
    relay, addon = pair()
    sid = relay.open_stream(RequestHead("GET", "/"), websocket=False, end_stream=True)
    assert isinstance(exchange(relay, addon)[0], StreamOpened)
    addon.send_response(sid, ResponseHead(200), end_stream=False)
    addon.send_data(sid, b"x" * 100_000, end_stream=True)
    first = addon.send_control_request({"op": "a"})
    second = addon.send_control_request({"op": "b"})
    assert first != second
    events = exchange(addon, relay)
    requests = [e for e in events if isinstance(e, ControlRequested)]
    assert [r.body["op"] for r in requests] == ["a", "b"]
    # Answered out of order: ids, not order, match replies to requests.
    relay.send_control_reply(second, {"n": 2})
    relay.send_control_reply(first, {"n": 1})
    answers = [e for e in exchange(relay, addon) if isinstance(e, ControlAnswered)]
    assert [(a.request_id, a.body["n"]) for a in answers] == [(second, 2), (first, 1)]
    while data := addon.data_to_send():
        for event in relay.receive_data(data):
            if isinstance(event, DataReceived):
                relay.acknowledge(event.stream_id, len(event.data))
        addon.receive_data(relay.data_to_send())
    assert not relay.terminated
    assert not addon.terminated


def test_the_api_refuses_what_the_peer_would_reject() -> None:
    relay, addon = pair()
    with pytest.raises(ValueError, match="control body over"):
        addon.send_control_request({"name": "x" * MAX_CONTROL_BODY})
    with pytest.raises(RuntimeError, match="only the add-on"):
        relay.send_control_request({"op": "x"})
    ids = [addon.send_control_request({"op": str(i)}) for i in range(MAX_PENDING_CONTROL)]
    with pytest.raises(RuntimeError, match="too many"):
        addon.send_control_request({"op": "one more"})
    exchange(addon, relay)
    relay.send_control_reply(ids[0], {})
    exchange(relay, addon)
    addon.send_control_request({"op": "room again"})  # one answered: room for one


# ====================================================================== bad input


def test_malformed_bodies_get_a_clean_error_reply() -> None:
    relay, _ = pair()
    bodies = [b"[1, 2]", b"not json", b"\xff\xfe", b'{"a": NaN}', b"[" * 5000, b""]
    wire = b"".join(control_frame(i + 1, body) for i, body in enumerate(bodies))
    assert relay.receive_data(wire) == []
    assert not relay.terminated
    answered = replies(relay.data_to_send())
    assert [request_id for request_id, _ in answered] == list(range(1, len(bodies) + 1))
    assert all(b'"error":"malformed"' in body for _, body in answered)


def test_more_than_the_pending_limit_get_busy() -> None:
    relay, _ = pair()
    wire = b"".join(control_frame(i, b'{"op":"x"}') for i in range(1, MAX_PENDING_CONTROL + 3))
    events = relay.receive_data(wire)
    assert [e.request_id for e in events if isinstance(e, ControlRequested)] == list(
        range(1, MAX_PENDING_CONTROL + 1)
    )
    busy = replies(relay.data_to_send())
    assert [request_id for request_id, _ in busy] == [
        MAX_PENDING_CONTROL + 1,
        MAX_PENDING_CONTROL + 2,
    ]
    assert all(b'"error":"busy"' in body for _, body in busy)


@pytest.mark.parametrize(
    ("wire", "code", "match"),
    [
        (encode_frame(FrameType.CONTROL, 0, b"\x00\x01"), ErrorCode.PROTOCOL, "malformed CONTROL"),
        (
            control_frame(1, b'{"a":"' + b"x" * MAX_CONTROL_BODY + b'"}'),
            ErrorCode.FRAME_SIZE,
            "too large",
        ),
        (
            control_frame(1, b"{}") + control_frame(1, b"{}"),
            ErrorCode.PROTOCOL,
            "id in use",
        ),
        (control_frame(1, b"{}", Flags.ACK), ErrorCode.PROTOCOL, "unknown control request"),
    ],
)
def test_tunnel_errors_at_the_relay(wire: bytes, code: ErrorCode, match: str) -> None:
    relay, _ = pair()
    terminated(relay.receive_data(wire), code, match)


def test_a_relay_that_did_not_advertise_refuses_requests() -> None:
    relay, _ = pair(relay=None)
    events = relay.receive_data(control_frame(1, b'{"op":"create_app_link"}'))
    terminated(events, ErrorCode.PROTOCOL, "not accepted here")


def test_requests_sent_to_the_addon_end_the_tunnel() -> None:
    _, addon = pair()
    events = addon.receive_data(control_frame(1, b'{"op":"create_app_link"}'))
    terminated(events, ErrorCode.PROTOCOL, "not accepted here")


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (control_frame(7, b"{}", Flags.ACK), "unknown control request"),
        (control_frame(1, b"[]", Flags.ACK), "malformed control reply"),
    ],
)
def test_bad_replies_end_the_tunnel_at_the_addon(reply: bytes, match: str) -> None:
    _, addon = pair()
    addon.send_control_request({"op": "x"})
    terminated(addon.receive_data(reply), ErrorCode.PROTOCOL, match)


def test_a_second_reply_to_one_request_is_refused() -> None:
    relay, addon = pair()
    request_id = addon.send_control_request({"op": "x"})
    exchange(addon, relay)
    relay.send_control_reply(request_id, {"ok": True})
    data = relay.data_to_send()
    assert len(addon.receive_data(data)) == 1
    terminated(addon.receive_data(data), ErrorCode.PROTOCOL, "unknown control request")
