"""The presence directory (relay/cluster/presence.py): sealed records, expiry, newest claim wins.

Records are checked on their own (forged, altered, moved, replayed); the
directory runs against a real ``redis-server`` (tests/support/redis_server.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime

import pytest
import redis.asyncio as aioredis
from redis_server import RedisServer

from homeport.relay.cluster.presence import (
    MAX_RECORD_AGE,
    MoveRequest,
    PresenceDirectory,
    RecordSealer,
    key_for,
)
from homeport.relay.cluster.sealed import RefusedMessage

pytestmark = pytest.mark.timeout(60)

KEY = b"test cluster key: 0123456789abcdefghijklmnopqrstuvwxyz"
HOME = "a" * 26
OTHER_HOME = "b" * 26


def test_a_record_opens_with_the_key_that_sealed_it() -> None:
    sealer = RecordSealer(KEY)
    now = time.time()
    record = sealer.open(HOME, sealer.seal(HOME, node="node-1", now=now), now=now)
    assert (record.instance_id, record.node) == (HOME, "node-1")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (
            lambda s, now: RecordSealer(b"another key, just as long: 0123456789abcdef").seal(
                HOME, node="node-1", now=now
            ),
            "bad signature",
        ),
        (
            lambda s, now: s.seal(HOME, node="node-1", now=now).replace(b"node-1", b"node-2"),
            "bad signature",
        ),
        (lambda s, now: s.seal(OTHER_HOME, node="node-1", now=now), "bad signature"),
        (lambda s, now: s.seal(HOME, node="node-1", now=now - MAX_RECORD_AGE - 1), "too old"),
        (
            lambda s, now: s.seal(HOME, node="node-1", now=now + MAX_RECORD_AGE + 1),
            "from the future",
        ),
        (lambda s, now: b"node-1", "unknown format"),
        (lambda s, now: b"hp1p:" + b"0" * 64 + b":{}", "bad signature"),
    ],
    ids=["forged", "altered", "another-homes-record", "replayed", "future", "plain", "no-mac"],
)
def test_a_record_that_is_not_genuine_and_fresh_is_refused(make: object, reason: str) -> None:
    sealer = RecordSealer(KEY)
    now = time.time()
    data = make(sealer, now)  # type: ignore[operator]
    with pytest.raises(RefusedMessage) as refused:
        sealer.open(HOME, data, now=now)
    assert refused.value.reason == reason


class Marks:
    def __init__(self, connected: Sequence[str]) -> None:
        self.connected = list(connected)
        self.marked: list[str] = []

    async def connected_before(self, cutoff: datetime) -> list[str]:
        return [i for i in self.connected if i not in self.marked]

    async def mark(self, ids: Sequence[str]) -> None:
        self.marked.extend(ids)


def directory(
    redis: RedisServer, node: str, retired: list[str] | None = None, marks: Marks | None = None
) -> PresenceDirectory:
    async def retire(instance_id: str) -> None:
        if retired is not None:
            retired.append(instance_id)

    return PresenceDirectory(
        redis.url,
        KEY,
        node=node,
        retire=retire,
        refresh=0.1,
        ttl=0.6,
        sweep=0.2,
        connected_before=marks.connected_before if marks else None,
        mark_disconnected=marks.mark if marks else None,
    )


async def until(condition: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)


async def test_a_claim_is_seen_by_other_nodes_and_gone_after_a_clean_release(
    redis_server: RedisServer,
) -> None:
    a, b = directory(redis_server, "node-a"), directory(redis_server, "node-b")
    a.start()
    b.start()
    try:
        a.claim(HOME)
        holder: list[str | None] = [None]

        async def seen() -> bool:
            holder[0] = await b.holder(HOME)
            return holder[0] == "node-a"

        async with asyncio.timeout(5):
            while not await seen():
                await asyncio.sleep(0.02)
        a.release(HOME)
        async with asyncio.timeout(5):
            while await b.holder(HOME) is not None:
                await asyncio.sleep(0.02)
    finally:
        await a.stop()
        await b.stop()


async def test_a_dead_nodes_records_expire(redis_server: RedisServer) -> None:
    a, b = directory(redis_server, "node-a"), directory(redis_server, "node-b")
    a.start()
    try:
        a.claim(HOME)
        async with asyncio.timeout(5):
            while await b.holder(HOME) != "node-a":
                await asyncio.sleep(0.02)
        # As kill -9 would: the refresh stops and nothing is deleted.
        assert a._task is not None
        a._task.cancel()
        died = time.monotonic()
        async with asyncio.timeout(5):
            while await b.holder(HOME) is not None:
                await asyncio.sleep(0.05)
        assert time.monotonic() - died < 0.6 + 0.3
    finally:
        a._held.clear()
        await a.stop()
        await b.stop()


async def test_the_newest_claim_wins_and_the_older_holder_retires(
    redis_server: RedisServer,
) -> None:
    retired_a: list[str] = []
    a = directory(redis_server, "node-a", retired_a)
    b = directory(redis_server, "node-b")
    a.start()
    b.start()
    try:
        a.claim(HOME)
        await asyncio.sleep(0.3)
        b.claim(HOME)  # the add-on moved to node B
        await until(lambda: retired_a == [HOME])
        assert await a.holder(HOME) == "node-b"
        assert a.held == 0
    finally:
        await a.stop()
        await b.stop()


async def test_a_forged_record_is_refused_and_never_retires_the_holder(
    redis_server: RedisServer,
) -> None:
    """Someone who can write to Redis but has no cluster key claims a home: ignored."""
    retired: list[str] = []
    a = directory(redis_server, "node-a", retired)
    reader = directory(redis_server, "node-b")
    forger = RecordSealer(b"not the cluster key, but long enough 0123456789")
    client = aioredis.Redis.from_url(redis_server.url)
    a.start()
    try:
        a.claim(HOME)
        await until(lambda: a._healthy_since is not None)
        await client.set(key_for(HOME), forger.seal(HOME, node="node-evil", now=time.time()))
        await asyncio.sleep(0.4)  # a few refreshes
        assert retired == []
        assert await reader.holder(HOME) == "node-a"  # written back by its holder
        # A forged record for a home nobody holds reads as no record at all.
        await client.set(key_for(OTHER_HOME), forger.seal(OTHER_HOME, node="node-evil", now=0))
        assert await reader.holder(OTHER_HOME) is None
        assert reader.refused >= 1
    finally:
        await client.aclose()
        await a.stop()
        await reader.stop()


async def test_the_stale_sweep_marks_only_homes_no_node_holds(redis_server: RedisServer) -> None:
    """A starting node no longer marks every home disconnected: only the stale ones."""
    marks = Marks([HOME, OTHER_HOME])
    holder = directory(redis_server, "node-a")
    sweeper = directory(redis_server, "node-b", marks=marks)
    holder.start()
    holder.claim(HOME)
    sweeper.start()
    try:
        await until(lambda: marks.marked == [OTHER_HOME])
        await asyncio.sleep(0.5)
        assert marks.marked == [OTHER_HOME]
    finally:
        await holder.stop()
        await sweeper.stop()


@pytest.mark.parametrize("turns", range(4))
async def test_a_stop_right_after_a_claim_stops(redis_server: RedisServer, turns: int) -> None:
    """A claim wakes the writer; a stop in the same turn must still end it.

    On Python 3.11 ``asyncio.wait_for`` swallowed that cancellation (CPython
    gh-86296): the writer went on refreshing and ``stop()`` never returned (a
    node's shutdown hung; this file's sweep test timed out in CI once).
    """
    node = directory(redis_server, "node-a")
    node.start()
    await asyncio.sleep(0.05)  # the writer waits for its next round
    async with asyncio.timeout(4):  # about 0.2 s; the swallowed cancel took 7 s or more
        node.claim(HOME)
        for _ in range(turns):
            await asyncio.sleep(0)
        await node.stop()
    assert node.held == 0


async def test_a_stop_ends_a_writer_whose_cancellation_was_lost(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Redis client's own timeouts can turn a cancellation into a TimeoutError,
    which the writer retries on: one cancel() left it going round and ``stop()``
    waiting for ever (this file's sweep test timed out in CI that way)."""
    node = directory(redis_server, "node-a")
    write = node._write
    lost = []

    async def losing(ops: Sequence[tuple[str, str, bytes]]) -> None:
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            if not lost:
                lost.append(True)
                raise TimeoutError from None  # what a library's timeout may do
            raise
        await write(ops)

    monkeypatch.setattr(node, "_write", losing)
    node.start()
    node.claim(HOME)
    await asyncio.sleep(0.05)  # the writer is inside its write now
    started = time.monotonic()
    async with asyncio.timeout(10):
        await node.stop()
    assert lost == [True]
    # Asked again at once (cancel_and_wait), not whenever the writer happens to end.
    assert time.monotonic() - started < 3


def test_a_move_request_that_is_not_genuine_and_fresh_is_refused() -> None:
    sealer = RecordSealer(KEY)
    now = time.time()
    nonce = "0" * 32
    genuine = sealer.seal_move(HOME, node="node-a", now=now, nonce=nonce)
    assert sealer.open_move(genuine, now=now) == MoveRequest(HOME, "node-a", round(now, 3), nonce)
    forged = RecordSealer(b"another key, just as long: 0123456789abcdef").seal_move(
        HOME, node="node-a", now=now, nonce=nonce
    )
    for data, reason in [
        (forged, "bad signature"),
        (genuine.replace(b"node-a", b"node-b"), "bad signature"),
        (sealer.seal(HOME, node="node-a", now=now), "bad signature"),  # a record is no move
        (sealer.seal_move(HOME, node="node-a", now=now - 60, nonce=nonce), "too old"),
    ]:
        with pytest.raises(RefusedMessage) as refused:
            sealer.open_move(data, now=now)
        assert refused.value.reason == reason


async def test_a_move_request_moves_the_holder_once_and_a_replay_is_refused(
    redis_server: RedisServer,
) -> None:
    """Node B asks node A (which holds the home) to move it; the same bytes again: refused."""
    moved: list[str] = []

    async def move(instance_id: str) -> None:
        moved.append(instance_id)

    async def retire(instance_id: str) -> None:
        pass

    a = PresenceDirectory(
        redis_server.url, KEY, node="node-a", retire=retire, move=move, refresh=0.1, ttl=0.6
    )
    b = PresenceDirectory(
        redis_server.url, KEY, node="node-b", retire=retire, move=move, refresh=0.1, ttl=0.6
    )
    client = aioredis.Redis.from_url(redis_server.url)
    captured: list[bytes] = []
    pubsub = client.pubsub()
    await pubsub.subscribe("homeport:moves")
    a.start()
    b.start()
    try:
        a.claim(HOME)
        async with asyncio.timeout(5):
            while await b.holder(HOME) != "node-a":
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # both listeners subscribed
        assert await b.request_move(HOME)
        assert not await b.request_move(HOME)  # hysteresis: once per home per 10 s
        await until(lambda: moved == [HOME])
        async with asyncio.timeout(5):
            while not captured:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if message is not None:
                    captured.append(message["data"])
        a.claim(HOME)  # the home is back on node A; a replayed request must not move it
        refused = a.refused
        await client.publish("homeport:moves", captured[0])
        await until(lambda: a.refused > refused)
        assert moved == [HOME]
    finally:
        await pubsub.aclose()
        await client.aclose()
        await a.stop()
        await b.stop()
