"""Secrets shown once after a redirect: in memory on one relay, sealed in Redis on several.

The Redis store is tested against a real ``redis-server`` (tests/support/redis_server.py),
stopped and started again where Redis being away is the point.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis_server import RedisServer

from homeport.accounts.secretbox import SecretBox
from homeport.relay.site.once import (
    PREFIX,
    OnceStore,
    OnceUnavailable,
    SealedShownOnce,
    ShownOnce,
)

SESSION, OTHER = 41, 42
SECRET = {"codes": ["alpha-bravo-charlie", "delta-echo-foxtrot"], "first": True}
KEY = bytes(range(32))


@pytest.fixture
async def sealed(redis_server: RedisServer) -> AsyncIterator[SealedShownOnce]:
    store = SealedShownOnce(redis_server.url, SecretBox(KEY), lifetime=300)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> OnceStore:
    if request.param == "memory":
        return ShownOnce()
    sealed: SealedShownOnce = request.getfixturevalue("sealed")
    return sealed


async def test_shown_once_then_never_again(store: OnceStore) -> None:
    ticket = await store.put(SESSION, "recovery_codes", SECRET)
    assert await store.take(SESSION, "recovery_codes", ticket) == SECRET
    assert await store.take(SESSION, "recovery_codes", ticket) is None


async def test_another_session_or_kind_gets_nothing(store: OnceStore) -> None:
    ticket = await store.put(SESSION, "recovery_codes", SECRET)
    assert await store.take(OTHER, "recovery_codes", ticket) is None
    assert await store.take(SESSION, "app_link", ticket) is None
    assert await store.take(SESSION, "recovery_codes", "not-the-ticket") is None
    assert await store.take(SESSION, "recovery_codes", None) is None
    assert await store.take(SESSION, "recovery_codes", "x" * 65) is None


async def test_it_expires() -> None:
    memory = ShownOnce(lifetime=0.05)
    ticket = await memory.put(SESSION, "app_link", SECRET)
    await asyncio.sleep(0.1)
    assert await memory.take(SESSION, "app_link", ticket) is None


async def test_in_redis_another_session_cannot_spend_the_owners_entry(
    sealed: SealedShownOnce,
) -> None:
    """A stolen ticket read by another session derives another name: the owner still sees it."""
    ticket = await sealed.put(SESSION, "app_link", SECRET)
    assert await sealed.take(OTHER, "app_link", ticket) is None
    assert await sealed.take(SESSION, "app_link", ticket) == SECRET


async def test_in_redis_it_is_sealed_and_names_no_ticket(
    sealed: SealedShownOnce, raw: aioredis.Redis
) -> None:
    ticket = await sealed.put(SESSION, "recovery_codes", SECRET)
    (name,) = [key async for key in raw.scan_iter(PREFIX + "*")]
    assert ticket.encode() not in name
    value = await raw.get(name)
    assert value is not None
    for secret in SECRET["codes"]:
        assert str(secret).encode() not in value
    ttl = await raw.pttl(name)
    assert 0 < ttl <= 300_000  # Redis drops it by itself


async def test_in_redis_it_expires(redis_server: RedisServer) -> None:
    short = SealedShownOnce(redis_server.url, SecretBox(KEY), lifetime=0.2)
    try:
        ticket = await short.put(SESSION, "app_link", SECRET)
        await asyncio.sleep(0.5)
        assert await short.take(SESSION, "app_link", ticket) is None
    finally:
        await short.close()


async def test_in_redis_an_altered_or_moved_entry_is_refused(
    sealed: SealedShownOnce, raw: aioredis.Redis
) -> None:
    ticket = await sealed.put(SESSION, "app_link", SECRET)
    name = sealed.name(SESSION, "app_link", ticket)
    value = await raw.get(name)
    assert isinstance(value, bytes)
    altered = value[:-1] + bytes([value[-1] ^ 1])
    await raw.set(name, altered)
    assert await sealed.take(SESSION, "app_link", ticket) is None

    # The genuine bytes copied under another session's (or kind's) name do not open there.
    for session, kind in ((OTHER, "app_link"), (SESSION, "invitation")):
        await raw.set(sealed.name(session, kind, ticket), value)
        assert await sealed.take(session, kind, ticket) is None

    # Sealed under another secret-box key (another relay's data dir): refused too.
    foreign = SealedShownOnce(sealed_url(raw), SecretBox(bytes(32)))
    try:
        ticket = await foreign.put(SESSION, "app_link", SECRET)
        assert await sealed.take(SESSION, "app_link", ticket) is None
    finally:
        await foreign.close()


def sealed_url(raw: aioredis.Redis) -> str:
    kwargs = raw.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/0"


async def test_redis_down_is_said_and_nothing_is_spent(
    sealed: SealedShownOnce, redis_server: RedisServer
) -> None:
    ticket = await sealed.put(SESSION, "recovery_codes", SECRET)
    redis_server.stop()
    with pytest.raises(OnceUnavailable):
        await sealed.put(SESSION, "recovery_codes", SECRET)
    with pytest.raises(OnceUnavailable):
        await sealed.take(SESSION, "recovery_codes", ticket)
    redis_server.start()  # no persistence: a restarted Redis has forgotten every entry
    fresh = await sealed.put(SESSION, "recovery_codes", SECRET)
    assert await sealed.take(SESSION, "recovery_codes", fresh) == SECRET
