"""Gaps of a multi-node relay closed: link codes, ``homeport admin``, one-time secrets.

Real parts only, as in ``test_cluster_revocation.py`` (whose two-node fixture this
module reuses): node A and node B on one PostgreSQL and one Redis; the stack's
add-on holds its tunnel on node B.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from postgres import PostgresServer
from redis_server import RedisServer
from stack import Browser, make_addon
from test_cluster_revocation import FAN_OUT, Cluster, _status, two_nodes
from traffic import OpenTraffic
from yarl import URL

from homeport.addon.client import AddonClient, AddonStatus, State
from homeport.relay.live import SESSION_ENDED_CODE
from homeport.tls.devca import DevCA

pytestmark = pytest.mark.timeout(180)

#: How long node B's hub waits between database polls for a link: far longer than
#: the tests allow, so only the cluster's "linked" notice can be what wakes it.
SLOW_POLL = 60.0
HOMEPORT = [sys.executable, "-m", "homeport.cli"]


@pytest.fixture
async def cluster(
    tmp_path: Path, dev_ca: DevCA, postgres_template: PostgresServer, redis_server: RedisServer
) -> AsyncIterator[Cluster]:
    async with two_nodes(tmp_path, dev_ca, postgres_template, redis_server) as running:
        yield running


@contextlib.asynccontextmanager
async def addon_waiting_on_b(cluster: Cluster, state_dir: Path) -> AsyncIterator[AddonClient]:
    """A second add-on, not linked yet, holding its link code on node B."""
    b = cluster.b
    hub = b.relay.hub
    hub.config = dataclasses.replace(hub.config, link_poll_seconds=SLOW_POLL)
    statuses: list[AddonStatus] = []
    addon = make_addon(b.config, b.relay, b.backend_url, state_dir, statuses)
    async with addon:
        task = asyncio.create_task(addon.run_forever())
        try:
            async with asyncio.timeout(20):
                while addon.status.link_code is None or not hub._link_waiters:
                    await asyncio.sleep(0.01)
            yield addon
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _connected_on_b(cluster: Cluster, addon: AddonClient, within: float) -> float:
    """Seconds until the add-on's tunnel is up on node B; AssertionError after ``within``."""
    began = time.monotonic()
    try:
        async with asyncio.timeout(within):
            while not (
                addon.status.state is State.CONNECTED
                and addon.status.instance_id is not None
                and cluster.b.relay.hub.tunnel_for(addon.status.instance_id) is not None
            ):
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"the add-on was not connected within {within} s") from None
    return time.monotonic() - began


async def test_a_code_redeemed_on_node_a_wakes_the_addon_waiting_on_node_b(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Without the notice node B would find the link only at its next poll (a minute here)."""
    origin = cluster.a_origin
    async with addon_waiting_on_b(cluster, tmp_path / "second-addon") as addon:
        code = addon.status.link_code
        assert code is not None
        async with cluster.b.browser() as person:
            async with person.request(
                "POST",
                origin + "/signin",
                data={"email": cluster.b.email, "password": cluster.b.password, "next": "/"},
                headers={"Origin": origin},
            ) as r:
                assert r.status == 303, await r.text()
            started = time.monotonic()
            async with person.request(
                "POST",
                origin + "/link",
                data={"code": code, "name": "Cabin"},
                headers={"Origin": origin},
            ) as r:
                assert r.status == 303, await r.text()
            await _connected_on_b(cluster, addon, 5)
            took = time.monotonic() - started
        print(f"linked on A, tunnel up on B {took:.2f} s later")
        assert addon.status.instance_id not in cluster.a.hub.tunnels


async def test_a_forged_linked_notice_wakes_nobody_into_a_tunnel(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A genuine notice for a key that is not linked costs one lookup; the add-on keeps
    waiting with its code (the database decides, never the message)."""
    from homeport.relay.cluster.messages import LinkedNotice

    async with addon_waiting_on_b(cluster, tmp_path / "second-addon") as addon:
        code = addon.status.link_code
        (key_text,) = cluster.b.relay.hub._link_waiters
        node_a = cluster.node(cluster.a)
        node_a.channel.publish(LinkedNotice.of_key(key_text))
        await asyncio.sleep(1.0)
        assert addon.status.state is not State.CONNECTED
        assert addon.status.link_code == code
        assert cluster.b.relay.hub._link_waiters


# --------------------------------------------------------------- homeport admin


async def _admin(cluster: Cluster, *args: str, redis_url: str | None = None) -> tuple[int, str]:
    """``homeport admin …`` as a real process with the cluster's settings; (status, output)."""
    config = cluster.b.config
    assert config.database_url is not None
    assert config.cluster_key_file is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEPORT_")}
    process = await asyncio.create_subprocess_exec(
        *HOMEPORT,
        "admin",
        *args,
        "--data-dir",
        str(config.data_dir),
        "--database-url",
        config.database_url,
        "--redis-url",
        redis_url or cluster.redis.url,
        "--cluster-key-file",
        str(config.cluster_key_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    async with asyncio.timeout(60):
        output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_an_account_disabled_by_admin_loses_its_live_websocket_within_a_second(
    cluster: Cluster,
) -> None:
    """The node's sweep is set to an hour: only the admin command's message can cut it."""
    b = cluster.b
    async with b.browser() as phone:
        assert (await phone.sign_in("/")).status == 200
        traffic = OpenTraffic(phone)
        try:
            await traffic.open()
            status, output = await _admin(cluster, "user", "disable", b.email)
            assert status == 0, output
            assert "Told the relay nodes" in output
            assert (await traffic.ended(FAN_OUT)).data == SESSION_ENDED_CODE
        finally:
            await traffic.close()
        assert await _status(phone) == 401  # the node's cache forgot it too


async def test_a_home_unlinked_by_admin_loses_its_tunnel_at_once(cluster: Cluster) -> None:
    b = cluster.b
    async with b.browser() as phone:
        assert (await phone.sign_in("/")).status == 200
        traffic = OpenTraffic(phone)
        try:
            await traffic.open()
            status, output = await _admin(cluster, "instance", "unlink", b.instance_id)
            assert status == 0, output
            assert (await traffic.ended(FAN_OUT)).data == 1008
        finally:
            await traffic.close()
    async with asyncio.timeout(FAN_OUT):
        while b.instance_id in b.relay.hub.tunnels:
            await asyncio.sleep(0.01)


async def test_an_admin_link_wakes_the_addon_waiting_on_a_node(
    cluster: Cluster, tmp_path: Path
) -> None:
    async with addon_waiting_on_b(cluster, tmp_path / "second-addon") as addon:
        code = addon.status.link_code
        assert code is not None
        status, output = await _admin(cluster, "link", code, cluster.b.email)
        assert status == 0, output
        await _connected_on_b(cluster, addon, 2)


async def test_admin_with_redis_down_still_acts_and_says_the_nodes_learn_it_later(
    cluster: Cluster,
) -> None:
    cluster.redis.stop()
    status, output = await _admin(cluster, "user", "disable", cluster.b.email)
    assert status == 0, output
    assert "Disabled" in output
    assert "not told at once" in output
    assert "within 5 s" in output
    user = await cluster.b.relay.accounts.get_user_by_email(cluster.b.email)
    assert user is not None
    assert user.disabled


# ------------------------------------------------------- one-time secrets (.once)


async def _signed_in_on_a(cluster: Cluster, browser: Browser) -> None:
    origin = cluster.a_origin
    async with browser.request(
        "POST",
        origin + "/signin",
        data={"email": cluster.b.email, "password": cluster.b.password, "next": "/"},
        headers={"Origin": origin},
    ) as r:
        assert r.status == 303, await r.text()


async def _new_app_link_on_a(cluster: Cluster, browser: Browser) -> aiohttp.ClientResponse:
    origin = cluster.a_origin
    async with browser.request(
        "POST",
        f"{origin}/instances/{cluster.b.instance_id}/app-links",
        data={"name": "Kitchen tablet"},
        headers={"Origin": origin},
    ) as r:
        await r.read()
        return r


async def test_a_link_made_on_node_a_is_shown_once_by_node_b(cluster: Cluster) -> None:
    """The account host is balanced over every node: the GET after the POST may be B's."""
    async with cluster.b.browser() as owner:
        await _signed_in_on_a(cluster, owner)
        made = await _new_app_link_on_a(cluster, owner)
        assert made.status == 303
        location = URL(made.headers["Location"])
        assert "shown" in location.query
        on_b = cluster.b.account_origin + str(location)
        async with owner.request("GET", on_b) as r:
            page = await r.text()
            assert r.status == 200
        assert 'id="new-link"' in page
        assert "Kitchen tablet" in page
        async with owner.request("GET", on_b) as r:  # once only, whichever node
            again = await r.text()
        assert 'id="new-link"' not in again
        assert "shown once already" in again


async def test_with_redis_down_the_new_link_is_shown_in_the_forms_answer(
    cluster: Cluster,
) -> None:
    """Made, so never lost unseen: no redirect to a page that could not find it."""
    async with cluster.b.browser() as owner:
        await _signed_in_on_a(cluster, owner)
        cluster.redis.stop()
        made = await _new_app_link_on_a(cluster, owner)
        assert made.status == 200
        page = await made.text()
        assert 'id="new-link"' in page
        assert made.headers["Cache-Control"] == "no-store"


async def test_with_redis_gone_before_the_page_it_says_reload_and_shows_nothing(
    cluster: Cluster,
) -> None:
    async with cluster.b.browser() as owner:
        await _signed_in_on_a(cluster, owner)
        made = await _new_app_link_on_a(cluster, owner)
        assert made.status == 303
        cluster.redis.stop()
        async with owner.request("GET", cluster.b.account_origin + made.headers["Location"]) as r:
            page = await r.text()
            assert r.status == 503
            assert r.headers["Retry-After"] == "5"
        assert 'id="new-link"' not in page
        assert "Reload this page in a few seconds" in page


async def test_an_account_deleted_by_admin_loses_its_home_on_every_node_at_once(
    cluster: Cluster,
) -> None:
    b = cluster.b
    async with b.browser() as phone:
        assert (await phone.sign_in("/")).status == 200
        traffic = OpenTraffic(phone)
        try:
            await traffic.open()
            status, output = await _admin(cluster, "user", "delete", b.email, "--yes")
            assert status == 0, output
            assert (await traffic.ended(FAN_OUT)).data in (1008, SESSION_ENDED_CODE)
        finally:
            await traffic.close()
    async with asyncio.timeout(FAN_OUT):
        while b.instance_id in b.relay.hub.tunnels:
            await asyncio.sleep(0.01)
