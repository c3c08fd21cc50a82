"""Fuzzing both roles: whatever bytes arrive, only events come out, never an exception.

Bounded: a few hundred hypothesis examples, and a plain mutation loop with a
fixed seed and a fixed count (also cut short by a time budget), so the whole
file stays within a few seconds and is reproducible.
"""

from __future__ import annotations

import itertools
import random
import struct
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homeport.protocol.connection import Role, Settings, TunnelConnection
from homeport.protocol.errors import ErrorCode, StreamViolation
from homeport.protocol.events import (
    ConnectionTerminated,
    ControlRequested,
    DataReceived,
    Event,
    StreamOpened,
    WebSocketMessageReceived,
)
from homeport.protocol.frames import HEADER, Flags, FrameType, encode_frame
from homeport.protocol.heads import (
    HeadError,
    RequestHead,
    ResponseHead,
    encode_request_head,
    encode_response_head,
)

SEED = 20240611
MUTATIONS = 10_000
TIME_BUDGET = 8.0  # seconds for the mutation loop, as a safety net on slow machines

# ================================================================ set-up

#: The relay answers CONTROL requests, as the real one does.
RELAY_SETTINGS = Settings(accept_control=True)
RELAY_ROLE = (Role.RELAY, RELAY_SETTINGS)


def prepared_relay() -> TunnelConnection:
    """A relay with plain and WebSocket streams open, so that fuzzed frames hit live state."""
    relay = TunnelConnection(Role.RELAY, RELAY_SETTINGS)
    for i in range(3):
        relay.open_stream(RequestHead("GET", f"/{i}"), websocket=False, end_stream=True)
        relay.open_stream(RequestHead("GET", f"/ws/{i}"), websocket=True, end_stream=False)
    upload = relay.open_stream(
        RequestHead("POST", "/up", [("a", "b")]), websocket=False, end_stream=False
    )
    relay.send_data(upload, b"u" * 70_000, end_stream=True)
    return relay


def prepared(role: Role) -> TunnelConnection:
    return prepared_relay() if role is Role.RELAY else TunnelConnection(Role.ADDON)


def settings_of_peer(role: Role) -> bytes:
    peer = TunnelConnection(Role.ADDON) if role is Role.RELAY else TunnelConnection(*RELAY_ROLE)
    return peer.data_to_send()


def record() -> dict[Role, bytes]:
    """Genuine traffic of a busy tunnel: what each role receives."""
    relay = prepared_relay()
    addon = TunnelConnection(Role.ADDON)
    wires = {Role.ADDON: bytearray(), Role.RELAY: bytearray()}
    for _ in range(1000):
        out = relay.data_to_send()
        wires[Role.ADDON] += out
        for event in addon.receive_data(out):
            if isinstance(event, DataReceived | WebSocketMessageReceived):
                addon.acknowledge(event.stream_id, len(event.data))
            elif isinstance(event, StreamOpened):
                sid = event.stream_id
                if event.websocket:
                    addon.send_response(sid, ResponseHead(101), end_stream=False)
                    addon.send_ws_message(sid, b"x" * 40_000, text=True)
                    addon.send_ws_message(sid, b"\x00\x01", text=False)
                    addon.send_ws_close(sid, 1001, "bye")
                else:
                    addon.send_response(sid, ResponseHead(200, [("c", "d")]), end_stream=False)
                    addon.send_data(sid, b"r" * 50_000, end_stream=True)
        back = addon.data_to_send()
        wires[Role.RELAY] += back
        for event in relay.receive_data(back):
            if isinstance(event, DataReceived | WebSocketMessageReceived):
                relay.acknowledge(event.stream_id, len(event.data))
            if isinstance(event, WebSocketMessageReceived) and relay.has_stream(event.stream_id):
                relay.send_ws_message(event.stream_id, b"echo", text=True)
        if not out and not back:
            break
    relay.ping(b"12345678")
    addon.send_control_request({"op": "create_app_link", "name": "phone"})
    request = addon.data_to_send()
    wires[Role.RELAY] += request
    for event in relay.receive_data(request):
        if isinstance(event, ControlRequested):
            relay.send_control_reply(event.request_id, {"url": "https://x.example", "name": "p"})
    # Not in the add-on's corpus: a fresh add-on never asked, so the reply would be bad input.
    relay.data_to_send()
    relay.goaway(ErrorCode.NO_ERROR, "drain")
    wires[Role.ADDON] += relay.data_to_send()
    addon.send_control_request({"op": "x"})
    addon.ping(b"abcdefgh")
    addon.reset_stream(1, ErrorCode.CANCEL)
    wires[Role.RELAY] += addon.data_to_send()
    return {role: bytes(wire) for role, wire in wires.items()}


def drive(conn: TunnelConnection, chunks: list[bytes], rng: random.Random | None = None) -> None:
    """Feed chunks, react like an application would, and check the contract."""
    for chunk in chunks:
        events = conn.receive_data(chunk)
        assert isinstance(events, list)
        for event in events:
            assert isinstance(event, Event), event
            react(conn, event, rng)
        conn.data_to_send()
        if conn.terminated:
            assert conn.receive_data(chunk) == []
    conn.data_to_send(1000)
    if not conn.terminated:
        assert_books_balance(conn)


def assert_books_balance(conn: TunnelConnection) -> None:
    """Every byte of tunnel credit is granted, pending, or held on a live stream."""
    window = conn.settings.initial_stream_window
    held = sum(window - s.recv_window - s.unacked for s in conn._streams.values())
    assert conn._recv_window + conn._unacked + held == conn.settings.connection_window
    assert conn._send_window >= 0
    assert all(s.send_window >= 0 for s in conn._streams.values())


def react(conn: TunnelConnection, event: Event, rng: random.Random | None) -> None:
    """API calls may refuse (RuntimeError, StreamViolation, HeadError) but never corrupt state."""
    try:
        if isinstance(event, DataReceived | WebSocketMessageReceived):
            conn.acknowledge(event.stream_id, len(event.data))
        elif isinstance(event, StreamOpened):
            if event.websocket and (rng is None or rng.random() < 0.7):
                conn.send_response(event.stream_id, ResponseHead(101), end_stream=False)
                conn.send_ws_message(event.stream_id, b"hi", text=True)
            else:
                conn.send_response(event.stream_id, ResponseHead(200), end_stream=False)
                conn.send_data(event.stream_id, b"body", end_stream=True)
        elif isinstance(event, ControlRequested):
            conn.send_control_reply(event.request_id, {"error": "unknown_op"})
        if rng is not None and rng.random() < 0.05:
            conn.reset_stream(rng.randrange(1, 10), ErrorCode.CANCEL)
    except (RuntimeError, StreamViolation, HeadError):
        pass


# ============================================================ hypothesis

FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.sampled_from(list(Role)), st.lists(st.binary(max_size=200), max_size=10))
def test_random_bytes_after_settings(role: Role, chunks: list[bytes]) -> None:
    drive(prepared(role), [settings_of_peer(role), *chunks])


@FUZZ
@given(st.sampled_from(list(Role)), st.binary(max_size=400))
def test_random_bytes_from_the_first_byte(role: Role, data: bytes) -> None:
    drive(prepared(role), [data])


def payloads() -> st.SearchStrategy[bytes]:
    u32 = st.integers(0, 2**32 - 1).map(lambda n: struct.pack(">I", n))
    heads = st.builds(
        lambda m, t, p: encode_request_head(RequestHead(m, t, [("h", "v")], p)),
        st.sampled_from(["GET", "POST", "DELETE"]),
        st.sampled_from(["/", "/api", "/a?b=c"]),
        st.integers(0, 7),
    )
    responses = st.builds(
        lambda s: encode_response_head(ResponseHead(s, [("x", "y")])), st.integers(100, 599)
    )
    return st.one_of(
        st.binary(max_size=64),
        u32,
        u32.map(lambda b: b + b"reason"),
        heads,
        responses,
        st.just(b"\x03\xe8bye"),
        st.binary(min_size=8, max_size=8),
        u32.map(lambda b: b + b'{"op":"create_app_link","name":"p"}'),
        u32.map(lambda b: b + b"[1]"),
    )


frames = st.builds(
    lambda t, flags, sid, payload: encode_frame(FrameType(t), sid, payload, Flags(flags)),
    st.sampled_from([t.value for t in FrameType]),
    st.integers(0, 0x1F),
    st.integers(0, 9),
    payloads(),
).filter(lambda f: len(f) < 70_000)


@FUZZ
@given(st.sampled_from(list(Role)), st.lists(frames, max_size=25), st.booleans())
def test_sequences_of_plausible_frames(
    role: Role, sequence: list[bytes], settings_first: bool
) -> None:
    chunks = [settings_of_peer(role)] if settings_first else []
    drive(prepared(role), chunks + sequence)


# ======================================================== mutation loop


def split_frames(wire: bytes) -> list[bytes]:
    out, offset = [], 0
    while offset + HEADER.size <= len(wire):
        length = HEADER.unpack_from(wire, offset)[0]
        out.append(wire[offset : offset + HEADER.size + length])
        offset += HEADER.size + length
    return out


def mutate(rng: random.Random, wire: bytes, other: bytes) -> bytes:
    data = bytearray(wire)
    for _ in range(rng.randint(1, 4)):
        if not data:
            data += rng.randbytes(rng.randint(1, 30))
        choice = rng.randrange(9)
        pos = rng.randrange(len(data))
        if choice == 0:  # flip a bit
            data[pos] ^= 1 << rng.randrange(8)
        elif choice == 1:  # set a byte to an interesting value
            data[pos] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif choice == 2:  # insert random bytes
            data[pos:pos] = rng.randbytes(rng.randint(1, 20))
        elif choice == 3:  # delete a range
            del data[pos : pos + rng.randint(1, 40)]
        elif choice == 4:  # duplicate a range
            data[pos:pos] = data[pos : pos + rng.randint(1, 200)]
        elif choice == 5:  # truncate
            del data[pos:]
        else:  # frame-aware: drop, duplicate, swap, or splice in a foreign frame
            parts = split_frames(bytes(data))
            if len(parts) < 2:
                continue
            i, j = rng.randrange(len(parts)), rng.randrange(len(parts))
            if choice == 6:
                del parts[i]
            elif choice == 7:
                parts[i], parts[j] = parts[j], parts[i]
            else:
                foreign = split_frames(other)
                parts.insert(i, rng.choice(foreign) if foreign else rng.randbytes(12))
            data = bytearray(b"".join(parts))
    return bytes(data)


def random_chunks(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randint(0, 12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def test_mutated_genuine_traffic() -> None:
    wires = record()
    rng = random.Random(SEED)
    deadline = time.monotonic() + TIME_BUDGET
    outcomes = {"terminated": 0, "survived": 0}
    for i in range(MUTATIONS):
        if time.monotonic() > deadline:
            break
        role = Role.ADDON if i % 2 else Role.RELAY
        other = wires[Role.RELAY if role is Role.ADDON else Role.ADDON]
        data = mutate(rng, wires[role], other)
        conn = prepared(role)
        drive(conn, random_chunks(rng, data), rng)
        outcomes["terminated" if conn.terminated else "survived"] += 1
    # The mutations reach both the fatal and the survivable paths.
    assert outcomes["terminated"] > 50
    assert outcomes["survived"] > 50


def test_genuine_traffic_is_accepted_whole() -> None:
    """The corpus the mutations start from is itself clean."""
    for role, wire in record().items():
        conn = prepared(role)
        events: list[Event] = []
        for event in conn.receive_data(wire):
            events.append(event)
            react(conn, event, None)
        assert not any(isinstance(e, ConnectionTerminated) for e in events)
        assert not conn.terminated
