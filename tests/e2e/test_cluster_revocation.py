"""Two relay nodes acting as one: revocations fan out over Redis, throttles are shared.

Real parts only: two relays (node A and node B) in this process on their own
ports, sharing one PostgreSQL database (the session's server) and one Redis
(``redis-server`` started for the test, killed and restarted by some tests);
the add-on's tunnel is on node B; browsers talk TLS to both.

The background sweep, which would also cut a revoked session's traffic within
5 s, is kept out of the way (stopped, or set to an hour), so what is measured
is the fan-out, or the fail-closed mode, and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from ports import listening_socket
from postgres import TEMPLATE, PostgresServer
from prometheus_client import generate_latest
from redis_server import RedisServer
from stack import Browser, Stack, seed_dev_ca, start_stack
from traffic import OpenTraffic
from yarl import URL

from homeport.accounts.secretbox import KEY_FILE_NAME
from homeport.relay.app import Relay
from homeport.relay.cluster.channel import CHANNEL
from homeport.relay.cluster.messages import Sealer
from homeport.relay.cluster.node import ClusterNode
from homeport.relay.config import RelayConfig
from homeport.relay.live import SESSION_ENDED_CODE, Withdrawal
from homeport.relay.metrics import RelayCollector, cluster_gauges, metrics_registry
from homeport.relay.tenant import SESSION_COOKIE
from homeport.tls.devca import DevCA

pytestmark = pytest.mark.timeout(180)

CLUSTER_KEY = b"test cluster key: 0123456789abcdefghijklmnopqrstuvwxyz"
#: The promise: a revocation on one node reaches a live WebSocket on another within this.
FAN_OUT = 1.0


@dataclass
class Cluster:
    a: Relay
    b: Stack
    redis: RedisServer

    @property
    def a_origin(self) -> str:
        return self.a.config.account_origin

    def node(self, relay: Relay) -> ClusterNode:
        assert relay.cluster is not None
        return relay.cluster


def _config(data_dir: Path, port: int, database_url: str, redis_url: str, key: Path) -> RelayConfig:
    return RelayConfig(
        data_dir=data_dir,
        listen_port=port,
        drain_seconds=2.0,
        database_url=database_url,
        redis_url=redis_url,
        cluster_key_file=key,
    )


@contextlib.asynccontextmanager
async def two_nodes(
    tmp_path: Path, dev_ca: DevCA, postgres: PostgresServer, redis: RedisServer
) -> AsyncIterator[Cluster]:
    database = await postgres.create_database(template=TEMPLATE)
    url = postgres.database_url(database)
    key = tmp_path / "cluster.key"
    key.write_bytes(CLUSTER_KEY)
    sock_a, sock_b = listening_socket(), listening_socket()
    seed_dev_ca(tmp_path / "a", dev_ca)
    # Every node of a cluster has the same secret-box key file (TOTP seeds in the shared
    # database, one-time secrets in Redis are sealed with it; docs/operations.md).
    box_key = secrets.token_bytes(32)
    for node in ("a", "b"):
        (tmp_path / node).mkdir(mode=0o700, exist_ok=True)
        (tmp_path / node / KEY_FILE_NAME).write_bytes(box_key)
        (tmp_path / node / KEY_FILE_NAME).chmod(0o600)
    a = Relay(_config(tmp_path / "a", sock_a.getsockname()[1], url, redis.url, key))
    await a.start(sock=sock_a)
    try:
        await a.housekeeping.stop()  # no sweep on A: it holds no traffic in these tests
        b_config = _config(tmp_path / "b", sock_b.getsockname()[1], url, redis.url, key)
        async with start_stack(tmp_path / "b-stack", config=b_config, sock=sock_b, ca=dev_ca) as b:
            # B's regular sweep out of the way (an hour); its degraded sweep stays.
            await b.relay.housekeeping.stop()
            b.relay.housekeeping.sweep_seconds = 3600.0
            b.relay.housekeeping.start()
            cluster = Cluster(a, b, redis)
            for relay in (a, b.relay):
                await cluster.node(relay).channel.wait_up(10)
            yield cluster
    finally:
        await a.stop()
        await postgres.drop_database(database)


@pytest.fixture
async def cluster(
    tmp_path: Path, dev_ca: DevCA, postgres_template: PostgresServer, redis_server: RedisServer
) -> AsyncIterator[Cluster]:
    async with two_nodes(tmp_path, dev_ca, postgres_template, redis_server) as running:
        yield running


async def _end_other_sessions_on_a(cluster: Cluster, laptop: Browser) -> None:
    """The owner, signed in to node A's account site, signs every other session out."""
    origin = cluster.a_origin
    async with laptop.request(
        "POST",
        origin + "/signin",
        data={"email": cluster.b.email, "password": cluster.b.password, "next": "/"},
        headers={"Origin": origin},
    ) as r:
        assert r.status == 303, await r.text()
    async with laptop.request(
        "POST", origin + "/security/sessions/end-others", headers={"Origin": origin}
    ) as r:
        assert r.status == 303, await r.text()


def _tenant_token(browser: Browser) -> str:
    cookies = browser.session.cookie_jar.filter_cookies(URL(browser.stack.tenant_origin))
    return cookies[SESSION_COOKIE].value


async def _status(browser: Browser, path: str = "/") -> int:
    async with browser.request("GET", browser.stack.tenant_origin + path) as r:
        await r.read()
        return r.status


async def test_ending_a_session_on_node_a_closes_a_websocket_held_through_node_b(
    cluster: Cluster,
) -> None:
    b = cluster.b
    assert b.relay.hub.tunnel_for(b.instance_id) is not None  # the home is on B
    assert cluster.a.hub.tunnel_for(b.instance_id) is None
    async with b.browser() as phone, b.browser() as laptop:
        assert (await phone.sign_in("/")).status == 200  # through node B
        assert b.relay.gate.cached(_tenant_token(phone), b.instance_id) is not None
        traffic = OpenTraffic(phone)
        try:
            await traffic.open()
            started = time.monotonic()
            await _end_other_sessions_on_a(cluster, laptop)
            message = await traffic.ended(FAN_OUT)
            took = time.monotonic() - started
        finally:
            await traffic.close()
        assert message.data == SESSION_ENDED_CODE
        assert took < FAN_OUT + 0.5  # the sign-in POST on A included
        # Node B's cache forgot it too: the very next request is refused.
        assert b.relay.gate.cached(_tenant_token(phone), b.instance_id) is None
        assert await _status(phone) == 401


async def test_an_unlinked_home_loses_its_tunnel_on_the_node_that_holds_it(
    cluster: Cluster,
) -> None:
    """Unlinking is applied on node B too: its tunnel closes, its open traffic is cut."""
    b = cluster.b
    async with b.browser() as phone:
        assert (await phone.sign_in("/")).status == 200
        traffic = OpenTraffic(phone)
        try:
            await traffic.open()
            await cluster.a.accounts.instances.unlink(b.instance_id)
            cluster.a.gate.end_instance(b.instance_id)  # what node A's page does after unlinking
            message = await traffic.ended(FAN_OUT)
        finally:
            await traffic.close()
        assert message.data == 1008
        async with asyncio.timeout(FAN_OUT):
            while b.instance_id in b.relay.hub.tunnels:
                await asyncio.sleep(0.01)


async def test_password_guessing_spread_over_both_nodes_is_throttled_as_one(
    cluster: Cluster,
) -> None:
    """Four free failures per account and network, then a growing delay (accounts/throttle.py):
    counted in the shared database, so alternating nodes buys nothing. Per-node counters
    would allow four free failures on *each* node, eight in all, before any 429."""
    origins = [cluster.a_origin, cluster.b.account_origin]
    statuses = []
    async with cluster.b.browser() as guesser:
        for attempt in range(8):
            origin = origins[attempt % 2]
            async with guesser.request(
                "POST",
                origin + "/signin",
                data={"email": cluster.b.email, "password": f"wrong guess {attempt}", "next": "/"},
                headers={"Origin": origin},
            ) as r:
                await r.read()
                statuses.append(r.status)
                if r.status == 429:
                    assert int(r.headers["Retry-After"]) >= 1
                    break
    assert statuses[:5] == [401] * 5, statuses
    assert statuses[-1] == 429, statuses
    assert len(statuses) <= 7, statuses  # a delay starts at the fifth failure, whichever node


async def test_forged_and_replayed_messages_are_refused_and_logged(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    b = cluster.b
    channel = cluster.node(b.relay).channel
    user = await b.relay.accounts.get_user_by_email(b.email)
    assert user is not None
    end_owner = Withdrawal.user(user.id)
    genuine = Sealer(CLUSTER_KEY, CHANNEL)
    async with b.browser() as phone:
        assert (await phone.sign_in("/")).status == 200
        traffic = OpenTraffic(phone)
        publisher = aioredis.Redis.from_url(cluster.redis.url)
        try:
            await traffic.open()
            with caplog.at_level(logging.WARNING, logger="homeport.relay.cluster.channel"):
                forged = [
                    # Someone who can reach Redis but has no cluster key.
                    Sealer(b"an attacker's guess at the key, 32+ bytes", CHANNEL).seal(
                        end_owner, node="node-evil", now=time.time()
                    ),
                    b"hp1:" + b"0" * 64 + b':{"kind":"user","user":1}',
                    b"not even our format",
                    # Genuine, but captured long ago.
                    genuine.seal(end_owner, node="node-old", now=time.time() - 120),
                ]
                for data in forged:
                    await publisher.publish(CHANNEL, data)
                # A genuine message for an unrelated session, then the same bytes again.
                fresh = genuine.seal(Withdrawal.sessions([2**40]), node="node-c", now=time.time())
                await publisher.publish(CHANNEL, fresh)
                await publisher.publish(CHANNEL, fresh)
                async with asyncio.timeout(5):
                    while channel.refused < len(forged) + 1:
                        await asyncio.sleep(0.01)
            # Nothing was cut, and the cache still holds the session.
            await asyncio.sleep(0.2)
            assert traffic.still_open()
            assert b.relay.gate.cached(_tenant_token(phone), b.instance_id) is not None
        finally:
            await publisher.aclose()
            await traffic.close()
    reasons = [r.reason for r in caplog.records if r.getMessage() == "cluster.message_refused"]  # type: ignore[attr-defined]
    # Each refused by both nodes (both are subscribed).
    assert sorted(reasons) == sorted(
        2 * ["bad signature", "bad signature", "unknown format", "too old", "replayed"]
    )
    assert CLUSTER_KEY.decode() not in caplog.text
    scrape = generate_latest(
        metrics_registry(
            RelayCollector(list, lambda: 0, lambda: 0, gauges=cluster_gauges(cluster.node(b.relay)))
        )
    ).decode()
    assert "homeport_cluster_channel_up 1.0" in scrape
    assert "homeport_cluster_messages_refused 5.0" in scrape


async def test_redis_down_fails_closed_and_recovers(cluster: Cluster) -> None:
    b = cluster.b
    node_b = cluster.node(b.relay)
    async with b.browser() as phone, b.browser() as laptop:
        assert (await phone.sign_in("/")).status == 200
        token = _tenant_token(phone)
        assert b.relay.gate.cached(token, b.instance_id) is not None  # cached while up

        cluster.redis.stop()
        async with asyncio.timeout(3):
            while node_b.channel.up:
                await asyncio.sleep(0.01)
        # Degraded: still serving, but every answer comes from the database.
        assert b.relay.gate.cached(token, b.instance_id) is None
        assert await _status(phone) == 200
        assert b.relay.gate.cached(token, b.instance_id) is None  # and none is kept
        # A revocation no node can announce (straight into the database) is seen at once...
        session = await b.relay.accounts.resolve_session(
            token, kind="tenant", instance_id=b.instance_id
        )
        assert session is not None
        assert await cluster.a.accounts.sessions.revoke(session.session_id, user_id=session.user_id)
        assert await _status(phone) == 401

        # ...and live traffic of a session ended on node A is cut by the 1 s degraded sweep.
        assert (await phone.sign_in("/")).status == 200
        traffic = OpenTraffic(phone)
        try:
            await traffic.open()
            await _end_other_sessions_on_a(cluster, laptop)
            assert (await traffic.ended(2 * FAN_OUT + 1.0)).data == SESSION_ENDED_CODE
        finally:
            await traffic.close()

        # Redis back: the nodes subscribe again, caches come back, the fan-out works again.
        cluster.redis.start()
        for relay in (cluster.a, b.relay):
            await cluster.node(relay).channel.wait_up(10)
        assert b.relay.housekeeping.degraded is False
        async with b.browser() as tablet:
            assert (await tablet.sign_in("/")).status == 200
            assert b.relay.gate.cached(_tenant_token(tablet), b.instance_id) is not None
            traffic = OpenTraffic(tablet)
            try:
                await traffic.open()
                await _end_other_sessions_on_a(cluster, laptop)
                assert (await traffic.ended(FAN_OUT)).data == SESSION_ENDED_CODE
            finally:
                await traffic.close()


async def test_a_hung_redis_is_noticed_within_a_second_or_so(cluster: Cluster) -> None:
    """No connection closes when Redis hangs: the missing pongs put the node in degraded mode."""
    node_b = cluster.node(cluster.b.relay)
    cluster.redis.pause()
    try:
        started = time.monotonic()
        async with asyncio.timeout(5):
            while node_b.channel.up:
                await asyncio.sleep(0.01)
        assert time.monotonic() - started < 2.0
        assert cluster.b.relay.housekeeping.degraded
    finally:
        cluster.redis.resume()
    await node_b.channel.wait_up(10)
