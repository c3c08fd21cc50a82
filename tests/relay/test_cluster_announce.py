"""``homeport admin``'s announcements: the nodes' own sealed messages, through a real Redis."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from ports import reserve_port
from redis_server import RedisServer

from homeport.relay.cluster.announce import AnnounceFailed, announce, session_withdrawals
from homeport.relay.cluster.channel import CHANNEL
from homeport.relay.cluster.messages import MAX_AGE, MAX_IDS, LinkedNotice, Sealer
from homeport.relay.cluster.sealed import ReplayGuard
from homeport.relay.live import Withdrawal

KEY = b"k" * 32


def test_many_sessions_go_in_messages_a_node_accepts() -> None:
    messages = session_withdrawals(range(1, 2 * MAX_IDS + 2))
    assert [len(m.session_ids) for m in messages] == [MAX_IDS, MAX_IDS, 1]
    sealer = Sealer(KEY, CHANNEL)
    for message in messages:
        assert sealer.open(sealer.seal(message, node="admin-1", now=time.time())).news == message
    assert session_withdrawals([]) == []


async def test_a_node_hears_the_announcement_as_genuine(redis_server: RedisServer) -> None:
    news = [Withdrawal.user(7), LinkedNotice.of_key("ed25519:" + "A" * 43)]
    listener = aioredis.Redis.from_url(redis_server.url)
    pubsub = listener.pubsub()
    try:
        await pubsub.subscribe(CHANNEL)
        assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"
        assert await announce(redis_server.url, KEY, news) == 1
        heard = []
        async with asyncio.timeout(5):
            while len(heard) < len(news):
                message = await pubsub.get_message(timeout=1)
                if message is not None and message["type"] == "message":
                    heard.append(message["data"])
    finally:
        await pubsub.aclose()
        await listener.aclose()
    sealer, guard = Sealer(KEY, CHANNEL), ReplayGuard(max_age=MAX_AGE)
    envelopes = [sealer.open(data) for data in heard]
    for envelope in envelopes:
        guard.check(envelope, time.time())
        assert envelope.node.startswith("admin-")
    assert [e.news for e in envelopes] == news


async def test_no_redis_is_said_quickly() -> None:
    started = time.monotonic()
    with pytest.raises(AnnounceFailed):
        await announce(f"redis://127.0.0.1:{reserve_port()}/0", KEY, [Withdrawal.user(7)])
    assert time.monotonic() - started < 5
