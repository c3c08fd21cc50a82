"""Credit windows and scheduling: one slow reader never stalls the rest of the tunnel."""

from __future__ import annotations

from collections import defaultdict
from typing import TypeVar

from homeport.protocol.connection import MAX_FRAME_SIZE, Role, Settings, TunnelConnection
from homeport.protocol.errors import ErrorCode, ProtocolViolation
from homeport.protocol.events import (
    DataReceived,
    Event,
    StreamReset,
    WebSocketMessageReceived,
)
from homeport.protocol.frames import Flags, Frame, FrameDecoder, FrameType
from homeport.protocol.heads import RequestHead, ResponseHead

MiB = 1024 * 1024
CHUNK = Settings().chunk_size


class Pair:
    """A relay and an add-on joined back to back in memory (see test_connection.py)."""

    def __init__(
        self, relay: Settings | None = None, addon: Settings | None = None, *, connect: bool = True
    ) -> None:
        self.relay = TunnelConnection(Role.RELAY, relay)
        self.addon = TunnelConnection(Role.ADDON, addon)
        self.relay_events: list[Event] = []
        self.addon_events: list[Event] = []
        self.stalled: set[int] = set()
        self.framed: dict[tuple[Role, int], int] = defaultdict(int)
        self._observers = {role: FrameDecoder(MAX_FRAME_SIZE) for role in Role}
        if connect:
            self.pump()

    def pump(self, limit: int = MiB) -> tuple[list[Event], list[Event]]:
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
                return relay_new, addon_new
        raise AssertionError("the pair never went quiet")  # pragma: no cover

    def deliver(self, sender: Role, data: bytes) -> list[Event]:
        try:
            observed = self._observers[sender].feed(data)
        except ProtocolViolation:
            observed = []
        for frame in observed:
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

    def release(self, conn: TunnelConnection, stream_id: int) -> None:
        """A stalled reader catches up: acknowledge everything it was given."""
        self.stalled.discard(stream_id)
        events = self.relay_events if conn is self.relay else self.addon_events
        conn.acknowledge(stream_id, received(events, stream_id))

    def assert_settled(self) -> None:
        assert self.relay.stream_ids() == []
        assert self.addon.stream_ids() == []
        for conn in (self.relay, self.addon):
            assert not conn.terminated
            assert conn._recv_window + conn._unacked == conn.settings.connection_window
        assert self.relay._send_window == self.addon._recv_window
        assert self.addon._send_window == self.relay._recv_window


E = TypeVar("E", bound=Event)


def of_type(events: list[Event], cls: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, cls)]


def received(events: list[Event], stream_id: int) -> int:
    return sum(
        len(e.data)
        for e in events
        if isinstance(e, DataReceived | WebSocketMessageReceived) and e.stream_id == stream_id
    )


def body(events: list[Event], stream_id: int) -> bytes:
    return b"".join(
        e.data for e in events if isinstance(e, DataReceived) and e.stream_id == stream_id
    )


def pattern(size: int, seed: int = 0) -> bytes:
    block = bytes((i * 7 + seed) % 253 for i in range(8192))
    return (block * (size // len(block) + 1))[:size]


def get(path: str = "/", priority: int = 3) -> RequestHead:
    return RequestHead("GET", path, [], priority)


def respond(p: Pair, stream_id: int, data: bytes, *, end: bool = True) -> None:
    p.addon.send_response(stream_id, ResponseHead(200), end_stream=False)
    p.addon.send_data(stream_id, data, end_stream=end)


def frames_of(data: bytes) -> list[Frame]:
    return FrameDecoder(MAX_FRAME_SIZE).feed(data)


# ============================================================== per-stream windows


def test_stalled_download_blocks_only_its_own_stream() -> None:
    # The whole window, not the smaller in-flight budget bulk streams get while
    # interactive traffic moves (tested in test_scheduler.py): windows are the point here.
    p = Pair(addon=Settings(bulk_in_flight=MiB))
    camera = p.relay.open_stream(
        get("/api/camera_proxy_stream/cam", 7), websocket=False, end_stream=True
    )
    api = p.relay.open_stream(get("/api/states", 0), websocket=False, end_stream=True)
    p.pump()
    p.stalled.add(camera)  # a paused tab: the relay never consumes these bytes
    respond(p, camera, pattern(5 * MiB, 1))
    respond(p, api, pattern(3 * MiB, 2))
    p.pump()
    window = p.relay.settings.initial_stream_window
    assert body(p.relay_events, api) == pattern(3 * MiB, 2)  # 3 windows' worth flowed
    assert p.framed[Role.ADDON, camera] == window  # never a byte more than granted
    assert p.addon.buffered(camera) == 5 * MiB - window
    # New streams keep working while the camera is stuck.
    for i in range(5):
        sid = p.relay.open_stream(get(f"/api/{i}"), websocket=False, end_stream=True)
        p.pump()
        respond(p, sid, pattern(300_000, i))
        relay_events, _ = p.pump()
        assert body(relay_events, sid) == pattern(300_000, i)
    assert p.framed[Role.ADDON, camera] == window
    # The reader catches up: the rest flows, nothing lost or duplicated.
    p.release(p.relay, camera)
    p.pump()
    assert body(p.relay_events, camera) == pattern(5 * MiB, 1)
    p.assert_settled()


def test_stalled_upload_blocks_only_its_own_stream() -> None:
    p = Pair()
    upload = p.relay.open_stream(
        RequestHead("POST", "/api/backup"), websocket=False, end_stream=False
    )
    p.relay.send_data(upload, pattern(4 * MiB), end_stream=True)
    other = p.relay.open_stream(RequestHead("POST", "/api/x"), websocket=False, end_stream=False)
    p.relay.send_data(other, pattern(2 * MiB, 5), end_stream=True)
    p.stalled.add(upload)  # Home Assistant reads the backup slowly... not at all
    p.pump()
    window = p.addon.settings.initial_stream_window
    assert p.framed[Role.RELAY, upload] == window
    assert p.relay.buffered(upload) == 4 * MiB - window
    assert body(p.addon_events, other) == pattern(2 * MiB, 5)
    respond(p, other, b"ok")
    p.pump()
    p.release(p.addon, upload)
    p.pump()
    assert body(p.addon_events, upload) == pattern(4 * MiB)
    respond(p, upload, b"stored")
    p.pump()
    p.assert_settled()


def test_many_stalled_streams_do_not_starve_the_tunnel() -> None:
    """Regression: with stalled streams holding over 3/4 of the tunnel window, credit
    below the update batch threshold was never returned and every stream stopped."""
    p = Pair()
    stalled = [p.relay.open_stream(get(), websocket=False, end_stream=True) for _ in range(7)]
    active = p.relay.open_stream(get(), websocket=False, end_stream=True)
    p.pump()
    p.stalled.update(stalled)
    for sid in [*stalled, active]:
        respond(p, sid, pattern(3 * MiB, sid))
    p.pump()
    assert body(p.relay_events, active) == pattern(3 * MiB, active)
    assert all(p.framed[Role.ADDON, sid] == MiB for sid in stalled)
    assert p.relay._recv_window + p.relay._unacked + 7 * MiB == p.relay.settings.connection_window


def test_tunnel_window_is_shared_and_a_reset_gives_the_held_credit_back() -> None:
    """Streams that hold unacknowledged bytes when reset pay them back to the tunnel."""
    relay = Settings(initial_stream_window=1 * MiB, connection_window=4 * MiB)
    p = Pair(relay=relay)
    stalled = [p.relay.open_stream(get(), websocket=False, end_stream=True) for _ in range(4)]
    p.pump()
    p.stalled.update(stalled)
    for sid in stalled:
        respond(p, sid, pattern(2 * MiB))
    p.pump()
    assert p.relay._recv_window == 0  # the tunnel window is all held by stalled readers
    waiting = p.relay.open_stream(get(), websocket=False, end_stream=True)
    p.pump()
    respond(p, waiting, pattern(MiB, 9))
    relay_events, _ = p.pump()
    assert body(relay_events, waiting) == b""  # blocked on the tunnel window, not its own
    # Two readers give up: their held credit returns and the waiting stream flows.
    for sid in stalled[:2]:
        p.relay.reset_stream(sid, ErrorCode.CANCEL)
    p.pump()
    assert body(p.relay_events, waiting) == pattern(MiB, 9)
    assert of_type(p.addon_events, StreamReset) == [
        StreamReset(sid, ErrorCode.CANCEL, "", remote=True) for sid in stalled[:2]
    ]
    # The add-on resets the other two while its own bytes are still queued.
    for sid in stalled[2:]:
        p.addon.reset_stream(sid, ErrorCode.UPSTREAM_TIMEOUT)
    p.pump()
    p.assert_settled()


def test_reset_with_data_in_flight_both_ways_keeps_the_books_exact() -> None:
    p = Pair()
    sid = p.relay.open_stream(RequestHead("POST", "/x"), websocket=False, end_stream=False)
    p.relay.send_data(sid, pattern(700_000))
    p.pump()
    respond(p, sid, pattern(3 * MiB), end=False)
    p.relay.send_data(sid, pattern(500_000))
    to_addon, to_relay = p.relay.data_to_send(), p.addon.data_to_send()
    p.relay.reset_stream(sid, ErrorCode.CANCEL)
    p.addon.reset_stream(sid, ErrorCode.CANCEL)
    p.deliver(Role.RELAY, to_addon)  # late frames on both sides, for a forgotten stream
    p.deliver(Role.ADDON, to_relay)
    p.pump()
    p.assert_settled()


def test_acknowledging_after_end_of_stream_is_not_paid_twice() -> None:
    """Regression: bytes acknowledged after the peer's END_STREAM, while our own half
    was still open, were paid back again when the stream ended: the tunnel window grew."""
    p = Pair()
    sid = p.relay.open_stream(RequestHead("POST", "/x"), websocket=False, end_stream=False)
    p.relay.send_data(sid, pattern(300_000), end_stream=True)
    p.stalled.add(sid)
    p.pump()
    p.release(p.addon, sid)  # acknowledged after END_STREAM, before the response
    p.addon.send_response(sid, ResponseHead(201), end_stream=True)
    p.pump()
    p.assert_settled()


def test_late_and_excess_acknowledgements_do_not_inflate_windows() -> None:
    p = Pair()
    sid = p.relay.open_stream(get(), websocket=False, end_stream=True)
    p.pump()
    p.stalled.add(sid)
    respond(p, sid, pattern(400_000), end=False)
    p.pump()
    p.relay.acknowledge(sid, 10 * MiB)  # more than it ever received
    p.relay.acknowledge(sid, 400_000)  # twice
    p.relay.acknowledge(sid, -5)
    p.addon.send_data(sid, b"", end_stream=True)
    p.pump()
    p.relay.acknowledge(sid, 400_000)  # after the stream ended
    p.pump()
    p.assert_settled()


def test_settings_raise_the_window_of_streams_opened_before_them() -> None:
    p = Pair(addon=Settings(initial_stream_window=4 * MiB), connect=False)
    sid = p.relay.open_stream(RequestHead("PUT", "/x"), websocket=False, end_stream=False)
    p.relay.send_data(sid, pattern(6 * MiB), end_stream=True)
    first = p.relay.data_to_send()  # before SETTINGS: the protocol default window only
    assert sum(len(f.payload) for f in frames_of(first) if f.type is FrameType.DATA) == 256 * 1024
    p.stalled.add(sid)
    p.deliver(Role.RELAY, first)
    p.pump()
    assert received(p.addon_events, sid) == 4 * MiB
    p.release(p.addon, sid)
    p.pump()
    respond(p, sid, b"")
    p.pump()
    p.assert_settled()


def test_buffered_is_the_backpressure_signal() -> None:
    p = Pair()
    sid = p.relay.open_stream(get(), websocket=False, end_stream=True)
    p.pump()
    p.stalled.add(sid)
    respond(p, sid, pattern(3 * MiB))
    assert p.addon.buffered(sid) == 3 * MiB
    p.deliver(Role.ADDON, p.addon.data_to_send(100_000))
    assert 3 * MiB - p.addon.buffered(sid) == p.framed[Role.ADDON, sid] > 0
    p.pump()
    assert p.addon.buffered(sid) == 2 * MiB
    assert p.addon.buffered(12345) == 0


# ========================================================== WebSocket messages


def open_websocket(p: Pair, priority: int = 3) -> int:
    sid = p.relay.open_stream(get("/api/websocket", priority), websocket=True, end_stream=False)
    p.pump()
    p.addon.send_response(sid, ResponseHead(101), end_stream=False)
    p.pump()
    return sid


def test_stalled_websocket_reader_is_bounded() -> None:
    """Regression: only each message's last fragment was charged to the window, so a
    reader that never acknowledged let the peer send without limit."""
    relay = Settings(max_ws_message=512 * 1024)
    p = Pair(relay=relay)
    sid = open_websocket(p)
    p.stalled.add(sid)
    for i in range(100):
        p.addon.send_ws_message(sid, pattern(100_000, i), text=False)
    p.pump()
    bound = relay.initial_stream_window + relay.max_ws_message
    assert p.framed[Role.ADDON, sid] <= bound
    assert p.addon.buffered(sid) >= 100 * 100_000 - bound
    p.release(p.relay, sid)
    p.pump()
    messages = of_type(p.relay_events, WebSocketMessageReceived)
    assert [m.data for m in messages] == [pattern(100_000, i) for i in range(100)]


def test_small_messages_of_a_stalled_reader_stop_at_the_window() -> None:
    p = Pair()
    sid = open_websocket(p)
    p.stalled.add(sid)
    for i in range(1000):
        p.relay.send_ws_message(sid, pattern(10_000, i), text=True)
    p.pump()
    assert p.framed[Role.RELAY, sid] <= p.addon.settings.initial_stream_window
    p.release(p.addon, sid)
    p.pump()
    assert len(of_type(p.addon_events, WebSocketMessageReceived)) == 1000


def test_big_message_behind_held_messages_does_not_deadlock() -> None:
    """The prepayment budget is spent on messages the reader still holds; once it
    acknowledges them, the half-received message must be able to finish."""
    relay = Settings(max_ws_message=2 * MiB)
    p = Pair(relay=relay)
    sid = open_websocket(p)
    p.stalled.add(sid)
    p.addon.send_ws_message(sid, pattern(2 * MiB, 1), text=False)
    p.addon.send_ws_message(sid, pattern(2 * MiB, 2), text=False)
    p.pump()
    assert [m.data for m in of_type(p.relay_events, WebSocketMessageReceived)] == [
        pattern(2 * MiB, 1)
    ]
    p.release(p.relay, sid)
    p.pump()
    assert [m.data for m in of_type(p.relay_events, WebSocketMessageReceived)] == [
        pattern(2 * MiB, 1),
        pattern(2 * MiB, 2),
    ]
    p.relay.send_ws_close(sid, 1000)
    p.addon.send_ws_close(sid, 1000)
    p.pump()
    p.assert_settled()


def test_websocket_over_many_windows_with_a_busy_tunnel() -> None:
    p = Pair()
    ws = open_websocket(p, priority=0)
    download = p.relay.open_stream(get("/big", 7), websocket=False, end_stream=True)
    p.pump()
    respond(p, download, pattern(8 * MiB))
    for i in range(4):
        p.addon.send_ws_message(ws, pattern(3 * MiB, i), text=False)
        p.relay.send_ws_message(ws, pattern(3 * MiB, i + 10), text=True)
    p.pump()
    assert body(p.relay_events, download) == pattern(8 * MiB)
    assert len(of_type(p.relay_events, WebSocketMessageReceived)) == 4
    assert len(of_type(p.addon_events, WebSocketMessageReceived)) == 4
    p.relay.send_ws_close(ws, 1000)
    p.addon.send_ws_close(ws, 1000)
    p.pump()
    p.assert_settled()


# ================================================================== scheduling


def sent_order(data: bytes) -> list[tuple[int, FrameType, int, bool]]:
    return [
        (f.stream_id, f.type, len(f.payload), bool(f.flags & (Flags.END_STREAM | Flags.FIN)))
        for f in frames_of(data)
        if f.stream_id
    ]


def bytes_before_end(order: list[tuple[int, FrameType, int, bool]], big: int, small: int) -> int:
    """DATA bytes of ``big`` framed before ``small``'s last frame."""
    total = 0
    for sid, kind, size, end in order:
        if sid == small and end:
            return total
        if sid == big and kind is FrameType.DATA:
            total += size
    raise AssertionError("the small response never finished")


def test_small_response_is_not_stuck_behind_a_50_mib_download() -> None:
    wide = Settings(initial_stream_window=64 * MiB, connection_window=64 * MiB)
    p = Pair(relay=wide)
    download = p.relay.open_stream(get("/backup.tar"), websocket=False, end_stream=True)
    small = p.relay.open_stream(get("/api/states/sun.sun"), websocket=False, end_stream=True)
    p.pump()
    respond(p, download, pattern(50 * MiB))
    respond(p, small, b'{"state": "above_horizon"}' + b" " * 174)
    out = p.addon.data_to_send()
    assert bytes_before_end(sent_order(out), download, small) <= CHUNK
    p.deliver(Role.ADDON, out)
    # Queued later, while the download is in full flow: still at most about one chunk.
    p.deliver(Role.ADDON, p.addon.data_to_send(4 * MiB))
    late = p.relay.open_stream(get("/api/late"), websocket=False, end_stream=True)
    p.deliver(Role.RELAY, p.relay.data_to_send())
    p.deliver(Role.ADDON, p.addon.data_to_send(4 * MiB))
    assert p.addon.buffered(download) > 40 * MiB
    respond(p, late, b"x" * 200)
    out = p.addon.data_to_send()
    assert bytes_before_end(sent_order(out), download, late) <= CHUNK
    p.deliver(Role.ADDON, out)
    p.pump()
    assert body(p.relay_events, download) == pattern(50 * MiB)
    p.assert_settled()


def test_websocket_message_is_not_stuck_behind_a_download() -> None:
    p = Pair()
    download = p.relay.open_stream(get("/big"), websocket=False, end_stream=True)
    ws = open_websocket(p)
    respond(p, download, pattern(900_000))
    p.addon.send_ws_message(ws, b'{"type": "event"}', text=True)
    order = sent_order(p.addon.data_to_send())
    position = next(i for i, (sid, *_rest) in enumerate(order) if sid == ws)
    before = [size for sid, kind, size, _ in order[:position] if kind is FrameType.DATA]
    assert sum(before) <= CHUNK


def test_interactive_priority_goes_before_bulk() -> None:
    p = Pair()
    bulk = p.relay.open_stream(get("/camera", 7), websocket=False, end_stream=True)
    default = p.relay.open_stream(get("/page", 3), websocket=False, end_stream=True)
    interactive = p.relay.open_stream(get("/api/services", 0), websocket=False, end_stream=True)
    p.pump()
    respond(p, bulk, pattern(600_000))  # queued first
    respond(p, default, pattern(200_000))
    respond(p, interactive, pattern(200_000))
    order = [sid for sid, kind, *_ in sent_order(p.addon.data_to_send()) if kind is FrameType.DATA]
    assert order.index(bulk) > max(i for i, sid in enumerate(order) if sid == default)
    assert order.index(default) > max(i for i, sid in enumerate(order) if sid == interactive)


def test_round_robin_within_a_priority_class() -> None:
    p = Pair()
    sids = [p.relay.open_stream(get(), websocket=False, end_stream=True) for _ in range(3)]
    p.pump()
    for sid in sids:
        respond(p, sid, pattern(5 * CHUNK))
    order = [sid for sid, kind, *_ in sent_order(p.addon.data_to_send()) if kind is FrameType.DATA]
    assert order[:6] == sids + sids
