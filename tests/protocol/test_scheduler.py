"""Priority classes share a saturated tunnel by weight: urgent first, nobody starves."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_flow_control import (
    CHUNK,
    MiB,
    Pair,
    body,
    get,
    pattern,
    received,
    respond,
    sent_order,
)

from homeport.protocol.connection import INTERACTIVE_HORIZON, Role, Settings
from homeport.protocol.frames import FrameType
from homeport.protocol.heads import PRIORITY_BULK, ResponseHead
from homeport.protocol.scheduler import CLASSES, ClassScheduler, weight

# ======================================================== the class scheduler alone


def serve(scheduler: ClassScheduler[str], turns: int, size: int = CHUNK) -> list[int]:
    """Serve ``turns`` turns of ``size`` bytes, keeping every queue as it is (backlogged)."""
    order = []
    for _ in range(turns):
        priority = scheduler.next_class(CHUNK)
        assert priority is not None
        queue = scheduler.queues[priority]
        queue.rotate(-1)
        scheduler.charge(priority, size)
        order.append(priority)
    return order


def test_weights_halve_per_class() -> None:
    assert [weight(p) for p in range(CLASSES)] == [128, 64, 32, 16, 8, 4, 2, 1]


@pytest.mark.parametrize(("high", "low"), [(0, 7), (0, 3), (3, 7), (6, 7), (2, 5)])
def test_backlogged_classes_share_by_weight(high: int, low: int) -> None:
    scheduler: ClassScheduler[str] = ClassScheduler()
    scheduler.queues[high].append("a")
    scheduler.queues[low].append("b")
    ratio = weight(high) // weight(low)
    counts = Counter(serve(scheduler, 40 * (ratio + 1)))
    assert counts[low] == 40  # exactly its share: the lower class is never starved
    assert counts[high] == 40 * ratio


def test_nothing_ready_means_no_class() -> None:
    scheduler: ClassScheduler[str] = ClassScheduler()
    assert scheduler.next_class(CHUNK) is None


def test_first_turns_go_to_the_most_urgent_class() -> None:
    scheduler: ClassScheduler[str] = ClassScheduler()
    for priority in (7, 3, 0):
        scheduler.queues[priority].append(str(priority))
    assert serve(scheduler, 8)[:8] == [0] * 8


def test_idle_time_banks_no_credit() -> None:
    """A bulk class that waited while the interactive one ran gets its share, not a burst."""
    scheduler: ClassScheduler[str] = ClassScheduler()
    scheduler.queues[0].append("ws")
    serve(scheduler, 1000)
    scheduler.queues[0].clear()
    scheduler.queues[7].append("camera")
    serve(scheduler, 10)
    scheduler.queues[0].append("ws")
    # The interactive class is back: it gets the next turn (the camera is ahead of the clock).
    assert serve(scheduler, 1) == [0]
    counts = Counter(serve(scheduler, 129 * 5))
    assert counts[7] <= 6


# The property (weighted fair queueing's fairness bound): while a class p stays
# backlogged, another class q gets at most its weight's worth of bytes between two
# turns of p — (p's last turn + one chunk) * w(q) / w(p) — plus one turn of overshoot.
MAX_TURN = CHUNK + 10


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "remove", "serve"]),
            st.integers(0, CLASSES - 1),
            st.integers(1, MAX_TURN),
        ),
        min_size=1,
        max_size=300,
    )
)
def test_no_class_waits_longer_than_its_weight_allows(ops: list[tuple[str, int, int]]) -> None:
    scheduler: ClassScheduler[str] = ClassScheduler()
    # For each backlogged class: its last turn's size, and bytes others sent since.
    waiting: dict[int, tuple[int, Counter[int]]] = {}
    for op, priority, size in ops:
        queue = scheduler.queues[priority]
        if op == "add":
            if not queue:
                waiting[priority] = (0, Counter())
            queue.append(f"s{priority}")
        elif op == "remove":
            queue.clear()
            waiting.pop(priority, None)
        else:
            chosen = scheduler.next_class(CHUNK)
            if chosen is None:
                assert not waiting
                continue
            assert scheduler.queues[chosen]
            scheduler.charge(chosen, size)
            for other, (last_turn, sent) in waiting.items():
                if other != chosen:
                    sent[chosen] += size
                    share = (last_turn + CHUNK) * weight(chosen) // weight(other)
                    assert sent[chosen] <= share + MAX_TURN, (chosen, other, sent)
            waiting[chosen] = (size, Counter())


# ================================================================= in the connection


def saturate(p: Pair, *priorities: int, size: int = 8 * MiB) -> list[int]:
    sids = [
        p.relay.open_stream(get(f"/s/{i}", prio), websocket=False, end_stream=True)
        for i, prio in enumerate(priorities)
    ]
    p.pump()
    for sid in sids:
        respond(p, sid, pattern(size))
    return sids


def test_a_saturating_interactive_stream_does_not_starve_bulk() -> None:
    """Strict priority would send all 16 MiB of the chatty stream first."""
    p = Pair(relay=Settings(initial_stream_window=32 * MiB, connection_window=64 * MiB))
    chatty, bulk = saturate(p, 0, PRIORITY_BULK, size=16 * MiB)
    sizes = Counter[int]()
    for sid, kind, size, _ in sent_order(p.addon.data_to_send(8 * MiB)):
        if kind is FrameType.DATA:
            sizes[sid] += size
    assert sizes[bulk] >= CHUNK  # it moves...
    assert sizes[chatty] >= 60 * sizes[bulk]  # ...at about 1/129 of the tunnel


def test_websocket_message_overtakes_a_running_camera_stream() -> None:
    p = Pair()
    ws = p.relay.open_stream(get("/api/websocket", 0), websocket=True, end_stream=False)
    (camera,) = saturate(p, PRIORITY_BULK)
    p.addon.send_response(ws, ResponseHead(101), end_stream=False)
    p.deliver(Role.ADDON, p.addon.data_to_send(4 * CHUNK))  # the camera is under way
    p.addon.send_ws_message(ws, b'{"type":"result"}', text=True)
    order = sent_order(p.addon.data_to_send())
    position = next(i for i, (sid, kind, *_) in enumerate(order) if kind is FrameType.WS_MESSAGE)
    assert sum(size for sid, _, size, _ in order[:position] if sid == camera) <= CHUNK


def test_set_priority_moves_a_queued_stream_and_keeps_its_bytes_in_order() -> None:
    p = Pair()
    camera, api = saturate(p, 0, 3, size=2 * MiB)  # the "camera" was classed interactive
    p.addon.set_priority(camera, PRIORITY_BULK)
    assert p.addon.priority(camera) == PRIORITY_BULK
    data = p.addon.data_to_send(MiB)
    p.deliver(Role.ADDON, data)
    first = [sid for sid, kind, *_ in sent_order(data) if kind is FrameType.DATA]
    assert first.count(api) > first.count(camera)
    p.pump()
    assert body(p.relay_events, camera) == pattern(2 * MiB)
    assert body(p.relay_events, api) == pattern(2 * MiB)
    p.assert_settled()


def test_set_priority_refuses_an_unknown_class_and_ignores_closed_streams() -> None:
    p = Pair()
    with pytest.raises(ValueError, match="priority"):
        p.addon.set_priority(1, PRIORITY_BULK + 1)
    p.addon.set_priority(99, 0)  # no such stream: nothing happens
    assert p.addon.priority(99) is None


@settings(max_examples=60, deadline=None)
@given(
    streams=st.lists(
        st.tuples(st.integers(0, PRIORITY_BULK), st.integers(0, 300_000)), min_size=1, max_size=8
    ),
    moves=st.lists(st.tuples(st.integers(0, 7), st.integers(0, PRIORITY_BULK)), max_size=6),
    limit=st.integers(1, 200_000),
    chunk=st.sampled_from([1024, 16 * 1024, 32 * 1024]),
)
def test_every_stream_arrives_whole_and_in_order(
    streams: list[tuple[int, int]], moves: list[tuple[int, int]], limit: int, chunk: int
) -> None:
    p = Pair(addon=Settings(chunk_size=chunk))
    sids = [
        p.relay.open_stream(get(f"/s/{i}", prio), websocket=False, end_stream=True)
        for i, (prio, _) in enumerate(streams)
    ]
    p.pump()
    for sid, (_, size) in zip(sids, streams, strict=True):
        respond(p, sid, pattern(size, sid))
    for index, prio in moves:
        if index < len(sids):
            p.addon.set_priority(sids[index], prio)
        p.pump(limit=limit)
    p.pump(limit=limit)
    for sid, (_, size) in zip(sids, streams, strict=True):
        assert body(p.relay_events, sid) == pattern(size, sid)
    p.assert_settled()


# ============================================================ bulk bytes in flight


def in_flight(p: Pair, stream_id: int) -> int:
    """Bytes the add-on framed on a stream that the relay has not consumed yet."""
    return p.framed[Role.ADDON, stream_id] - received(p.relay_events, stream_id)


def test_bulk_keeps_less_in_flight_while_interactive_traffic_moves() -> None:
    """What is already sent cannot be overtaken: bound it, so a WebSocket answer waits less."""
    p = Pair()
    api, camera = saturate(p, 0, PRIORITY_BULK, size=4 * MiB)
    p.stalled.add(camera)
    p.pump()
    budget = Settings().bulk_in_flight
    assert p.framed[Role.ADDON, camera] == budget  # not the whole 1 MiB window
    assert body(p.relay_events, api) == pattern(4 * MiB)
    # The reader catches up: everything arrives, in order, nothing lost.
    p.release(p.relay, camera)
    p.pump()
    assert body(p.relay_events, camera) == pattern(4 * MiB)
    p.assert_settled()


def test_bulk_uses_its_whole_window_when_nothing_interactive_moves() -> None:
    p = Pair()
    (camera,) = saturate(p, PRIORITY_BULK, size=4 * MiB)
    p.stalled.add(camera)
    p.pump()
    assert p.framed[Role.ADDON, camera] == p.relay.settings.initial_stream_window


def test_the_budget_lifts_once_interactive_traffic_has_been_quiet() -> None:
    p = Pair()
    api = p.relay.open_stream(get("/api/states", 0), websocket=False, end_stream=True)
    p.pump()
    respond(p, api, b"{}")
    p.pump()  # interactive traffic just moved
    stalled, busy = saturate(p, PRIORITY_BULK, 3, size=2 * INTERACTIVE_HORIZON)
    p.stalled.add(stalled)
    p.pump(limit=64 * 1024)
    # Once the busy stream has sent a horizon's worth, the stalled one may fill its window.
    assert received(p.relay_events, busy) == 2 * INTERACTIVE_HORIZON
    assert p.framed[Role.ADDON, stalled] == p.relay.settings.initial_stream_window


def test_the_budget_never_starves_a_stream_whose_reader_consumes() -> None:
    """Smallest budget against the largest update threshold: credit still comes back."""
    window = 4 * MiB
    p = Pair(
        relay=Settings(initial_stream_window=window, connection_window=16 * MiB),
        addon=Settings(bulk_in_flight=CHUNK),
    )
    ws = p.relay.open_stream(get("/api/websocket", 0), websocket=True, end_stream=False)
    (bulk,) = saturate(p, PRIORITY_BULK, size=3 * window)
    p.addon.send_response(ws, ResponseHead(101), end_stream=False)
    for i in range(40):
        p.addon.send_ws_message(ws, b"x" * 100, text=True)
        p.pump(limit=256 * 1024)
        assert in_flight(p, bulk) <= window // 4 + CHUNK, i
    p.pump()
    assert body(p.relay_events, bulk) == pattern(3 * window)


def test_bulk_in_flight_must_hold_a_chunk() -> None:
    with pytest.raises(ValueError, match="bulk_in_flight"):
        Settings(bulk_in_flight=CHUNK - 1)
