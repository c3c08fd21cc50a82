"""Property tests: heads round-trip, chunking never matters, windows always balance."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homeport.protocol.connection import DEFAULT_WINDOW, Role, Settings, TunnelConnection
from homeport.protocol.errors import ErrorCode, StreamViolation
from homeport.protocol.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    StreamOpened,
    WebSocketMessageReceived,
)
from homeport.protocol.heads import (
    HeadError,
    RequestHead,
    ResponseHead,
    decode_request_head,
    decode_response_head,
    encode_request_head,
    encode_response_head,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ==================================================================== heads

tokens = st.from_regex(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}", fullmatch=True)
targets = st.builds(
    lambda rest: "/" + rest,
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=120),
).filter(lambda t: not t.startswith("//"))
values = st.text(
    st.one_of(
        st.sampled_from("\t "),
        st.characters(min_codepoint=0x21, max_codepoint=0x7E),
        st.characters(min_codepoint=0x80, max_codepoint=0xFF),
    ),
    min_size=20,
    max_size=120,
)
headers = st.lists(st.tuples(tokens, values), max_size=20)


@FAST
@given(tokens, targets, headers, st.integers(0, 7))
def test_request_head_round_trip(
    method: str, target: str, fields: list[tuple[str, str]], priority: int
) -> None:
    head = RequestHead(method, target, fields, priority)
    decoded = decode_request_head(encode_request_head(head))
    assert decoded == RequestHead(method, target, [(n.lower(), v) for n, v in fields], priority)


@FAST
@given(st.integers(100, 599), headers)
def test_response_head_round_trip(status: int, fields: list[tuple[str, str]]) -> None:
    decoded = decode_response_head(encode_response_head(ResponseHead(status, fields)))
    assert decoded == ResponseHead(status, [(n.lower(), v) for n, v in fields])


@FAST
@given(
    st.text(max_size=40),
    st.text(max_size=60),
    st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=4),
)
def test_encoder_refuses_or_round_trips_any_text(
    method: str, target: str, fields: list[tuple[str, str]]
) -> None:
    """Whatever an application hands in: a HeadError, or bytes that decode back."""
    try:
        payload = encode_request_head(RequestHead(method, target, fields))
    except HeadError:
        return
    decoded = decode_request_head(payload)
    assert (decoded.method, decoded.target) == (method, target)
    for _, value in decoded.headers:
        assert not any(c in value for c in "\r\n\x00")


@FAST
@given(st.binary(max_size=300))
def test_decoders_only_raise_head_error(payload: bytes) -> None:
    for decode, encode in (
        (decode_request_head, encode_request_head),
        (decode_response_head, encode_response_head),
    ):
        try:
            head = decode(payload)
        except HeadError:
            continue
        assert decode(encode(head)) == head


# ============================================================ chunking


def scenario_relay() -> tuple[TunnelConnection, list[int]]:
    """A relay with a fixed set of streams open; called twice it builds the same state."""
    relay = TunnelConnection(Role.RELAY)
    sids = [
        relay.open_stream(RequestHead("GET", "/a"), websocket=False, end_stream=True),
        relay.open_stream(
            RequestHead("POST", "/b", [("x", "1")]), websocket=False, end_stream=False
        ),
        relay.open_stream(RequestHead("GET", "/ws"), websocket=True, end_stream=False),
        relay.open_stream(RequestHead("GET", "/c", priority=7), websocket=False, end_stream=True),
    ]
    relay.send_data(sids[1], bytes(range(256)) * 300, end_stream=True)
    return relay, sids


def record_wires(body_size: int, message_size: int) -> tuple[bytes, bytes]:
    """Run the scenario against a real add-on; return (relay→add-on, add-on→relay) bytes."""
    relay, sids = scenario_relay()
    addon = TunnelConnection(Role.ADDON)
    to_addon, to_relay = bytearray(), bytearray()
    for _ in range(10_000):
        out = relay.data_to_send()
        to_addon += out
        for event in addon.receive_data(out):
            if isinstance(event, DataReceived | WebSocketMessageReceived):
                addon.acknowledge(event.stream_id, len(event.data))
            if isinstance(event, StreamOpened):
                if event.websocket:
                    addon.send_response(event.stream_id, ResponseHead(101), end_stream=False)
                    addon.send_ws_message(event.stream_id, b"m" * message_size, text=False)
                    addon.send_ws_message(event.stream_id, b"hello", text=True)
                    addon.send_ws_close(event.stream_id, 1000, "done")
                else:
                    addon.send_response(
                        event.stream_id, ResponseHead(200, [("a", "b")]), end_stream=False
                    )
                    addon.send_data(event.stream_id, b"r" * body_size, end_stream=True)
        back = addon.data_to_send()
        to_relay += back
        for event in relay.receive_data(back):
            if isinstance(event, DataReceived | WebSocketMessageReceived):
                relay.acknowledge(event.stream_id, len(event.data))
        if not out and not back:
            break
    relay.ping(b"pingpong")
    to_addon += relay.data_to_send()
    relay.reset_stream(sids[2], ErrorCode.CANCEL, "bye")  # may already be closed: no-op
    to_addon += relay.data_to_send()
    return bytes(to_addon), bytes(to_relay)


def feed(conn: TunnelConnection, wire: bytes, cuts: list[int]) -> list[Event]:
    events: list[Event] = []
    start = 0
    for cut in [*sorted(set(cuts)), len(wire)]:
        events += conn.receive_data(wire[start:cut])
        for event in events:
            if isinstance(event, DataReceived | WebSocketMessageReceived):
                conn.acknowledge(event.stream_id, len(event.data))
        start = max(start, cut)
    return events


def passive_addon() -> TunnelConnection:
    return TunnelConnection(Role.ADDON)


def passive_relay() -> TunnelConnection:
    return scenario_relay()[0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 200_000),
    st.integers(0, 150_000),
    st.data(),
    st.sampled_from([b"", b"\x00\x00\x00\x00\x42\x00\x00\x00\x00\x00", b"\xff" * 15]),
)
def test_any_chunking_gives_the_same_events(
    body_size: int, message_size: int, data: st.DataObject, tail: bytes
) -> None:
    to_addon, to_relay = record_wires(body_size, message_size)
    factories: list[tuple[Callable[[], TunnelConnection], bytes]] = [
        (passive_addon, to_addon + tail),
        (passive_relay, to_relay + tail),
    ]
    for factory, wire in factories:
        cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=40))
        whole = feed(factory(), wire, [])
        chunked = feed(factory(), wire, cuts)
        assert chunked == whole
        assert feed(factory(), wire, list(range(0, len(wire), 997))) == whole
        if tail:
            assert isinstance(whole[-1], ConnectionTerminated)
        else:
            assert not any(isinstance(e, ConnectionTerminated) for e in whole)


# ================================================================ windows

SMALL = Settings(
    initial_stream_window=DEFAULT_WINDOW,
    connection_window=2 * DEFAULT_WINDOW,
    chunk_size=16 * 1024,
    max_concurrent_streams=8,
)

side = st.sampled_from([Role.RELAY, Role.ADDON])
index = st.integers(0, 15)
size = st.integers(0, 300_000)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("open"), size, st.booleans()),
        st.tuples(st.just("send"), side, index, size, st.booleans()),
        st.tuples(st.just("reset"), side, index),
        st.tuples(st.just("ack"), side, index, st.floats(0, 1)),
        st.tuples(st.just("flush"), side, st.integers(1, 200_000)),
        st.tuples(st.just("deliver"), side, st.integers(0, 300_000)),
    ),
    min_size=20,
    max_size=120,
)


@dataclass
class Model:
    """Two connections with explicit wires in between and an application that may lag."""

    relay: TunnelConnection = field(default_factory=lambda: TunnelConnection(Role.RELAY, SMALL))
    addon: TunnelConnection = field(default_factory=lambda: TunnelConnection(Role.ADDON, SMALL))
    wires: dict[Role, bytearray] = field(
        default_factory=lambda: {Role.RELAY: bytearray(), Role.ADDON: bytearray()}
    )
    #: Bytes each side's application was given and has not acknowledged, by stream.
    held: dict[Role, dict[int, int]] = field(
        default_factory=lambda: {Role.RELAY: {}, Role.ADDON: {}}
    )
    sids: list[int] = field(default_factory=list)

    def conn(self, role: Role) -> TunnelConnection:
        return self.relay if role is Role.RELAY else self.addon

    def apply(self, op: tuple[object, ...]) -> None:
        kind = op[0]
        if kind == "open":
            _, n, end = op
            try:
                sid = self.relay.open_stream(
                    RequestHead("POST", "/"), websocket=False, end_stream=bool(end) and not n
                )
            except StreamViolation:
                return
            self.sids.append(sid)
            if n:
                self.relay.send_data(sid, b"u" * int(n), end_stream=bool(end))
        elif kind == "send" and self.sids:
            _, role, i, n, end = op
            sid = self.sids[int(i) % len(self.sids)]
            conn = self.conn(role)
            if not conn.has_stream(sid):
                return
            try:
                if role is Role.ADDON and not conn._streams[sid].response_seen:
                    conn.send_response(sid, ResponseHead(200), end_stream=False)
                conn.send_data(sid, b"d" * int(n), end_stream=bool(end))
            except RuntimeError:
                pass  # that side already ended the stream
        elif kind == "reset" and self.sids:
            _, role, i = op
            self.conn(role).reset_stream(self.sids[int(i) % len(self.sids)], ErrorCode.CANCEL)
        elif kind == "ack" and self.sids:
            _, role, i, fraction = op
            sid = self.sids[int(i) % len(self.sids)]
            held = self.held[role].get(sid, 0)
            amount = int(held * fraction)
            self.conn(role).acknowledge(sid, amount)
            self.held[role][sid] = held - amount
        elif kind == "flush":
            _, role, limit = op
            self.wires[role] += self.conn(role).data_to_send(limit)
        elif kind == "deliver":
            _, role, n = op
            self.deliver(role, int(n))
        self.check()

    def deliver(
        self, sender: Role, n: int, messages: dict[Role, list[bytes]] | None = None
    ) -> None:
        wire = self.wires[sender]
        chunk = bytes(wire[:n])
        del wire[:n]
        receiver = Role.ADDON if sender is Role.RELAY else Role.RELAY
        for event in self.conn(receiver).receive_data(chunk):
            if isinstance(event, DataReceived | WebSocketMessageReceived):
                held = self.held[receiver]
                held[event.stream_id] = held.get(event.stream_id, 0) + len(event.data)
            if isinstance(event, WebSocketMessageReceived) and messages is not None:
                messages[receiver].append(event.data)

    def deliver_all(
        self, messages: dict[Role, list[bytes]] | None = None, *, ack: bool = False
    ) -> None:
        """Flush and deliver until both sides are quiet, acknowledging if asked to."""
        for _ in range(10_000):
            for role in Role:
                self.wires[role] += self.conn(role).data_to_send()
            if not any(self.wires.values()):
                return
            for role in Role:
                self.deliver(role, len(self.wires[role]), messages)
                if ack:
                    for sid, n in list(self.held[role].items()):
                        self.conn(role).acknowledge(sid, n)
                        self.held[role][sid] = 0
        raise AssertionError("never quiet")  # pragma: no cover

    def check_websocket(self, sid: int) -> None:
        for role in Role:
            conn = self.conn(role)
            assert not conn.terminated
            window = conn.settings.initial_stream_window
            charged = sum(window - s.recv_window - s.unacked for s in conn._streams.values())
            assert conn._recv_window + conn._unacked + charged == conn.settings.connection_window
            stream = conn._streams[sid]
            held = self.held[role].get(sid, 0)
            # Charged bytes: what the reader holds, less what was paid ahead, plus the
            # partial message's bytes still charged.
            assert window - stream.recv_window - stream.unacked == (
                held - stream.prepaid + stream.ws_unprepaid
            )
            assert stream.prepaid + stream.ws_prepaid <= conn.settings.max_ws_message
            assert held <= window + conn.settings.max_ws_message
            assert stream.send_window >= 0

    def check(self) -> None:
        for role in Role:
            conn = self.conn(role)
            assert not conn.terminated
            assert conn._send_window >= 0
            live = {sid: n for sid, n in self.held[role].items() if conn.has_stream(sid)}
            # Every byte of tunnel credit is granted, pending, or held by the application.
            total = conn._recv_window + conn._unacked + sum(live.values())
            assert total == conn.settings.connection_window
            for sid, stream in conn._streams.items():
                assert stream.send_window >= 0
                window = conn.settings.initial_stream_window
                assert window - stream.recv_window - stream.unacked == live.get(sid, 0)

    def settle(self) -> None:
        for _ in range(1000):
            for role in Role:
                self.wires[role] += self.conn(role).data_to_send()
            if not any(self.wires.values()):
                break
            for role in Role:
                self.deliver(role, len(self.wires[role]))
            for role in Role:
                for sid, n in list(self.held[role].items()):
                    self.conn(role).acknowledge(sid, n)
                    self.held[role][sid] = 0
        for sid in self.relay.stream_ids():
            self.relay.reset_stream(sid, ErrorCode.CANCEL)
        for _ in range(1000):
            out = self.relay.data_to_send()
            back = self.addon.data_to_send()
            if not out and not back:
                break
            self.addon.receive_data(out)
            self.relay.receive_data(back)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_windows_balance_under_any_interleaving(ops: list[tuple[object, ...]]) -> None:
    model = Model()
    for op in ops:
        model.apply(op)
    model.settle()
    relay, addon = model.relay, model.addon
    assert relay.stream_ids() == []
    assert addon.stream_ids() == []
    for conn in (relay, addon):
        assert conn._recv_window + conn._unacked == conn.settings.connection_window
    assert relay._send_window == addon._recv_window
    assert addon._send_window == relay._recv_window


# ====================================================== WebSocket windows

WS_SETTINGS = Settings(
    initial_stream_window=DEFAULT_WINDOW,
    connection_window=2 * DEFAULT_WINDOW,
    chunk_size=16 * 1024,
    max_ws_message=512 * 1024,
)
ws_operations = st.lists(
    st.one_of(
        st.tuples(st.just("send"), side, st.integers(0, 512 * 1024)),
        st.tuples(st.just("ack"), side, st.floats(0, 1)),
        st.tuples(st.just("flush"), side, st.integers(1, 100_000)),
        st.tuples(st.just("deliver"), side, st.integers(0, 200_000)),
    ),
    min_size=10,
    max_size=60,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ws_operations)
def test_websocket_windows_balance_and_never_deadlock(ops: list[tuple[object, ...]]) -> None:
    """Messages of any size up to the limit, acknowledged at any pace: the books stay
    exact, a lagging reader holds at most window + max_ws_message, and once the reader
    catches up every message arrives intact and in order."""
    model = Model(
        relay=TunnelConnection(Role.RELAY, WS_SETTINGS),
        addon=TunnelConnection(Role.ADDON, WS_SETTINGS),
    )
    sid = model.relay.open_stream(RequestHead("GET", "/ws"), websocket=True, end_stream=False)
    model.deliver_all()
    model.addon.send_response(sid, ResponseHead(101), end_stream=False)
    model.deliver_all()
    sent: dict[Role, list[bytes]] = {Role.RELAY: [], Role.ADDON: []}
    got: dict[Role, list[bytes]] = {Role.RELAY: [], Role.ADDON: []}
    for op in ops:
        kind, role = op[0], op[1]
        conn = model.conn(role)
        if kind == "send":
            message = bytes([len(sent[role]) % 256]) * int(op[2])
            sent[role].append(message)
            conn.send_ws_message(sid, message, text=False)
        elif kind == "ack":
            held = model.held[role].get(sid, 0)
            amount = int(held * op[2])
            conn.acknowledge(sid, amount)
            model.held[role][sid] = held - amount
        elif kind == "flush":
            model.wires[role] += conn.data_to_send(op[2])
        else:
            model.deliver(role, int(op[2]), got)
        model.check_websocket(sid)
    for role in Role:  # the readers catch up
        model.conn(role).acknowledge(sid, model.held[role].get(sid, 0))
        model.held[role][sid] = 0
    model.deliver_all(got, ack=True)
    assert got[Role.ADDON] == sent[Role.RELAY]
    assert got[Role.RELAY] == sent[Role.ADDON]
    model.relay.send_ws_close(sid, 1000)
    model.addon.send_ws_close(sid, 1000)
    model.deliver_all(got, ack=True)
    for conn in (model.relay, model.addon):
        assert conn.stream_ids() == []
        assert conn._recv_window + conn._unacked == conn.settings.connection_window
    assert model.relay._send_window == model.addon._recv_window
    assert model.addon._send_window == model.relay._recv_window
