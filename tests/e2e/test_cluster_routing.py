"""Three relay nodes behind a real HAProxy: routing by SNI, healing after ``kill -9``.

Real parts only: three ``homeport relay`` child processes (tests/support/cluster.py)
on one PostgreSQL database and one ``redis-server``, Debian's HAProxy with the
configuration the project ships (``homeport.cluster_local.haproxy``), the real
add-on client in this process dialling HAProxy, and a browser signing in through
HAProxy. Bounds here are generous (a loaded CI machine); the heal-time figures
come from ``bench/cluster.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from postgres import PostgresServer
from redis_server import RedisServer
from reflect_backend import start_reflecting_backend
from stack import Browser

from cluster import Cluster, ClusterHome, start_cluster
from homeport.accounts import Accounts, Database
from homeport.relay.app_links import app_link_url
from homeport.tls.devca import DevCA

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

#: A killed node's homes are reachable again through HAProxy within this (the
#: benchmark's target is 5 s; this bound is for a loaded machine).
HEAL_BOUND = 20.0


@pytest.fixture
async def cluster(
    tmp_path: Path, dev_ca: DevCA, postgres_template: PostgresServer, redis_server: RedisServer
) -> AsyncIterator[Cluster]:
    runner, backend_url, _seen = await start_reflecting_backend()
    try:
        async with start_cluster(
            tmp_path,
            dev_ca=dev_ca,
            postgres=postgres_template,
            redis=redis_server,
            backend_url=backend_url,
        ) as running:
            yield running
    finally:
        await runner.cleanup()


def browser(home: ClusterHome) -> Browser:
    return Browser(home)  # type: ignore[arg-type]


async def status(b: Browser, home: ClusterHome, path: str = "/manifest.json") -> int:
    async with b.request("GET", home.tenant_origin + path) as r:
        await r.read()
        return r.status


async def test_a_home_linked_through_one_node_is_browsed_through_haproxy(cluster: Cluster) -> None:
    home = await cluster.add_home()
    holder = await cluster.wait_on_tenant_name(home)
    assert holder in {n.name for n in cluster.nodes}
    # The add-on moved from the account host to its tenant name, which it keeps.
    assert home.addon._tunnel_host == cluster.public_config.tenant_host(home.instance_id)
    async with browser(home) as b:
        page = await b.sign_in()
        assert page.status == 200, await page.text()
        for _ in range(5):  # every request reaches the node holding the tunnel
            assert await status(b, home) == 200


async def test_app_links_reach_their_home_on_whichever_node_holds_it(cluster: Cluster) -> None:
    """An app link's host is its own name on the ring: it must land where the home is.

    Before the fix each label hashed to a node of its own, so about two app links
    in three answered "offline" on a three-node cluster (ten links: all reaching the
    holder by chance has odds of 1 in 59,049).
    """
    home = await cluster.add_home()
    holder = await cluster.wait_on_tenant_name(home)
    labels = await _app_links(cluster, home, 10)
    config = cluster.public_config
    async with browser(home) as b:
        for label in labels:
            url = app_link_url(config, label) + "/manifest.json"
            async with b.request("GET", url) as r:
                await r.read()
                assert r.status == 200, f"{label[:8]}...: {r.status}"
    # Nothing moved the home to serve them: it stays where its tenant name is.
    assert await cluster.holder(home.instance_id) == holder


async def test_an_app_link_request_is_held_while_its_home_moves_back(cluster: Cluster) -> None:
    """The node a home's names hash to comes back: the first request there (an app
    link's, from the companion app) waits while the tunnel moves, it is not "offline"."""
    home = await cluster.add_home()
    holder = await cluster.wait_on_tenant_name(home)
    (label,) = await _app_links(cluster, home, 1)
    url = app_link_url(cluster.public_config, label) + "/manifest.json"
    node = cluster.node(holder)
    await node.process.kill()
    await cluster.haproxy.wait_state(holder, False)
    elsewhere = await cluster.wait_on_tenant_name(home)
    assert elsewhere != holder
    await node.process.start(timeout=60)
    await cluster.haproxy.wait_state(holder, True)
    # The ring gives the home's names back to the node that returned; its tunnel is
    # still on the other one until this request asks for it.
    assert await cluster.holder(home.instance_id) == elsewhere
    async with browser(home) as b, b.request("GET", url) as r:
        await r.read()
        assert r.status == 200, r.status
    assert await cluster.wait_on_tenant_name(home) == holder


async def _app_links(cluster: Cluster, home: ClusterHome, count: int) -> list[str]:
    """``count`` new app links to ``home``, made in the cluster's database (the labels)."""
    database = Database(cluster.database_url)
    await database.connect()
    try:
        accounts = Accounts(database)
        owner = await accounts.get_user_by_email(home.email)
        assert owner is not None
        return [
            (await accounts.sharing.create_app_link(owner.id, home.instance_id, f"Tablet {i}"))[0]
            for i in range(count)
        ]
    finally:
        await database.close()


async def test_kill_9_of_the_node_holding_a_home_heals_through_the_others(
    cluster: Cluster,
) -> None:
    home = await cluster.add_home()
    holder = await cluster.wait_on_tenant_name(home)
    async with browser(home) as b:
        assert (await b.sign_in()).status == 200
        await cluster.node(holder).process.kill()
        killed = time.monotonic()
        async with asyncio.timeout(HEAL_BOUND):
            while True:
                try:
                    if await status(b, home) == 200:
                        break
                except OSError:
                    pass  # HAProxy had nowhere to send it yet
                await asyncio.sleep(0.1)
        healed = time.monotonic() - killed
        # Still signed in (the session is in PostgreSQL), on another node.
        assert await status(b, home, "/") == 200
        new_holder = await cluster.wait_on_tenant_name(home)
        assert new_holder != holder
        print(f"healed in {healed:.2f} s")


async def test_a_home_linked_while_a_node_is_down(cluster: Cluster) -> None:
    down = cluster.nodes[0]
    await down.process.kill()
    await cluster.haproxy.wait_state(down.name, False)
    home = await cluster.add_home()
    holder = await cluster.wait_on_tenant_name(home)
    assert holder != down.name
    async with browser(home) as b:
        assert (await b.sign_in()).status == 200
    # The node comes back and the ring may give the name back to it: a request there
    # finds the tunnel on the other node, asks it to move and waits; nothing fails.
    await down.process.start(timeout=60)
    await cluster.haproxy.wait_state(down.name, True)
    async with browser(home) as b:
        assert (await b.sign_in()).status == 200
        for _ in range(5):
            assert await status(b, home) == 200


async def test_a_rolling_restart_of_every_node_fails_no_request(cluster: Cluster) -> None:
    """SIGTERM, restart, next node: steady traffic to two homes through HAProxy never fails.

    Besides quick requests, each home always has a slow one (1.5 s) in flight, so a
    stopping node drains streams on its old tunnels while the add-ons' new tunnels are
    already up elsewhere.
    """
    homes = [await cluster.add_home(), await cluster.add_home()]
    for home in homes:
        await cluster.wait_on_tenant_name(home)
    failures: list[str] = []
    served = [0]
    stop = asyncio.Event()

    async def traffic(home: ClusterHome, path: str) -> None:
        async with browser(home) as b:
            assert (await b.sign_in()).status == 200
            while not stop.is_set():
                try:
                    code = await status(b, home, path)
                except Exception as exc:  # every failure counts, whatever its kind
                    failures.append(f"{type(exc).__name__}: {exc}")
                else:
                    if code == 200:
                        served[0] += 1
                    else:
                        failures.append(f"HTTP {code}")
                await asyncio.sleep(0.02)

    runners = [
        asyncio.create_task(traffic(h, path))
        for h in homes
        for path in ("/manifest.json", "/slow?seconds=1.5")
    ]
    try:
        await asyncio.sleep(1)
        for node in cluster.nodes:
            assert await node.process.stop(timeout=60) == 0
            await cluster.haproxy.wait_state(node.name, False)
            await node.process.start(timeout=60)
            await cluster.haproxy.wait_state(node.name, True)
            await asyncio.sleep(1)
    finally:
        stop.set()
        await asyncio.gather(*runners)
    assert served[0] > 50
    assert failures == []
    # The stopped nodes did not record their moved homes as disconnected.
    await asyncio.sleep(1)  # connect times are written in batches
    listing = json.loads(
        await cluster.nodes[0].process.admin("admin", "instance", "list", "--json")
    )
    assert {row["id"]: row["connected"] for row in listing} == {
        home.instance_id: True for home in homes
    }
