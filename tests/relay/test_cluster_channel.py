"""The withdrawal channel's lifecycle against a real Redis: a stop always stops."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis_server import RedisServer

from homeport.relay.cluster.channel import RevocationChannel
from homeport.relay.cluster.messages import Sealer
from homeport.relay.live import Withdrawal

KEY = b"c" * 32


def channel(redis_server: RedisServer, changes: list[bool]) -> RevocationChannel:
    heard: list[Withdrawal] = []
    return RevocationChannel(
        redis_server.url,
        Sealer(KEY, "homeport-test-channel"),
        node="node-a",
        on_withdrawal=heard.append,
        on_change=changes.append,
        channel="homeport-test-channel",
    )


async def test_a_stop_ends_a_listener_whose_cancellation_was_lost(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Redis client's own timeouts can turn a cancellation into a TimeoutError,
    which the listener retries on: with one cancel() a node's shutdown waited for
    ever (a two-node test's teardown hung in CI that way)."""
    changes: list[bool] = []
    node = channel(redis_server, changes)
    subscription = node._subscription
    lost: list[bool] = []

    async def losing(pubsub: Any) -> None:
        try:
            await subscription(pubsub)
        except asyncio.CancelledError:
            if not lost:
                lost.append(True)
                raise TimeoutError from None  # what a library's timeout may do
            raise

    monkeypatch.setattr(node, "_subscription", losing)
    node.start()
    await node.wait_up(10)
    started = time.monotonic()
    async with asyncio.timeout(10):
        await node.stop()
    assert lost == [True]
    # Asked again at once (cancel_and_wait), not whenever the loop happens to end.
    assert time.monotonic() - started < 3
    assert not node.up
    assert changes == [True]  # a stop is not reported as a channel lost


async def test_a_stop_while_the_sender_publishes_stops(redis_server: RedisServer) -> None:
    changes: list[bool] = []
    node = channel(redis_server, changes)
    node.start()
    await node.wait_up(10)
    for user in range(50):
        node.publish(Withdrawal.user(user))
    async with asyncio.timeout(10):
        await node.stop()
    left = [task for task in asyncio.all_tasks() if task.get_name().startswith("cluster-")]
    assert all(task.done() for task in left)
