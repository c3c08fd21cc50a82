"""Three relay nodes as child processes behind a real HAProxy, on PostgreSQL and Redis.

The way the cluster is deployed (docs/deploy.md "Several relay nodes"): every node
is ``homeport relay`` with its own data dir and the same shared files (the relay's
signing key, the secret-box key, the cluster key, the TLS certificate and key),
``--database-url`` on one PostgreSQL database, ``--redis-url`` on one Redis,
``--public-port`` set to HAProxy's port, and ``--metrics-listen`` for HAProxy's
health check (``GET /healthz``): the options come from the builder ``homeport
cluster`` uses (:func:`homeport.cluster_local.run.node_options`). HAProxy runs the
configuration the project ships (:mod:`homeport.cluster_local.haproxy`). Add-ons
(in this process, the real client) dial HAProxy like any other relay address.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from haproxy import Haproxy
from ports import reserve_port
from postgres import TEMPLATE, PostgresServer
from redis_server import RedisServer
from relay_process import EMAIL, RelayProcess
from stack import PASSWORD

from homeport.accounts.secretbox import KEY_FILE_NAME, SecretBox
from homeport.addon.client import AddonClient, AddonConfig, AddonStatus, State
from homeport.cluster_local.haproxy import HaproxyNode
from homeport.cluster_local.run import node_options
from homeport.keys import load_or_create_private_key
from homeport.relay.cluster.presence import RecordSealer, key_for
from homeport.relay.cluster.sealed import RefusedMessage
from homeport.relay.config import RelayConfig
from homeport.tls.devca import DevCA

ACCOUNT_HOST = "homeport.localhost"
TENANT_DOMAIN = "home.localhost"
CLUSTER_KEY = b"test cluster key: 0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass
class Node:
    name: str
    process: RelayProcess
    health_port: int

    @property
    def running(self) -> bool:
        return self.process.running


@dataclass
class ClusterHome:
    """One linked home: its add-on (in this process) and what a Browser needs."""

    cluster: Cluster
    addon: AddonClient
    task: asyncio.Task[None]
    statuses: list[tuple[float, AddonStatus]] = field(default_factory=list)
    email: str = EMAIL
    password: str = PASSWORD

    @property
    def config(self) -> RelayConfig:
        return self.cluster.public_config

    @property
    def ca_path(self) -> Path:
        return self.cluster.ca_path

    @property
    def instance_id(self) -> str:
        assert self.addon.status.instance_id is not None
        return self.addon.status.instance_id

    @property
    def tenant_origin(self) -> str:
        return self.config.tenant_origin(self.instance_id)

    @property
    def account_origin(self) -> str:
        return self.config.account_origin

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.addon.__aexit__(None, None, None)


@dataclass
class Cluster:
    root: Path
    nodes: list[Node]
    haproxy: Haproxy
    redis: RedisServer
    database_url: str
    ca_path: Path
    server_public_key: object
    homes: list[ClusterHome] = field(default_factory=list)

    @property
    def public_config(self) -> RelayConfig:
        """The relay's public names as seen through HAProxy."""
        return RelayConfig(
            data_dir=self.root, listen_port=self.haproxy.port, public_port=self.haproxy.port
        )

    @property
    def relay_url(self) -> str:
        return f"wss://{ACCOUNT_HOST}:{self.haproxy.port}/v1/tunnel"

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    async def holder(self, instance_id: str) -> str | None:
        """The node whose presence record holds ``instance_id`` (by name), or None."""
        client = aioredis.Redis.from_url(self.redis.url)
        try:
            data = await client.get(key_for(instance_id))
        finally:
            await client.aclose()
        if data is None:
            return None
        try:
            record = RecordSealer(CLUSTER_KEY).open(instance_id, data, now=time.time())
        except RefusedMessage:
            return None
        return record.node.rsplit("-", 1)[0]

    async def add_home(
        self, *, ping_interval: float = 2.0, ping_timeout: float = 3.0
    ) -> ClusterHome:
        """A fresh add-on, linked through HAProxy (``homeport admin link`` on a running node)."""
        index = len(self.homes)
        state_dir = self.root / f"addon-{index}"
        statuses: list[tuple[float, AddonStatus]] = []
        config = AddonConfig(
            relay_url=self.relay_url,
            ha_url=self.backend_url,
            state_dir=state_dir,
            pinned_keys=(self.server_public_key,),  # type: ignore[arg-type]
            relay_ca=self.ca_path,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            backoff_base=0.5,
        )
        addon = AddonClient(
            config, on_status=lambda s: statuses.append((time.monotonic(), AddonStatus(**vars(s))))
        )
        await addon.__aenter__()
        task = asyncio.create_task(addon.run_forever())
        home = ClusterHome(self, addon, task, statuses)
        self.homes.append(home)
        async with asyncio.timeout(30):
            while addon.status.link_code is None:
                assert not task.done(), "add-on stopped"
                await asyncio.sleep(0.02)
        admin = next(n for n in self.nodes if n.running).process
        await admin.admin("admin", "link", addon.status.link_code, EMAIL)
        await self.wait_on_tenant_name(home)
        return home

    async def tunnels(self) -> dict[str, int]:
        """Tunnels registered on each running node (its ``homeport_tunnels_connected``)."""
        counts: dict[str, int] = {}
        async with aiohttp.ClientSession() as session:
            for node in self.nodes:
                if not node.running:
                    continue
                url = f"http://127.0.0.1:{node.health_port}/metrics"
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(url) as r:
                        for line in (await r.text()).splitlines():
                            if line.startswith("homeport_tunnels_connected "):
                                counts[node.name] = int(float(line.split()[1]))
        return counts

    async def wait_on_tenant_name(self, home: ClusterHome, timeout: float = 30) -> str:
        """Until the home's tunnel is on its tenant name, recorded, and the only one of
        every home (a tunnel left on the account host retired); its node's name."""
        async with asyncio.timeout(timeout):
            while True:
                status = home.addon.status
                if (
                    status.state is State.CONNECTED
                    and status.instance_id is not None
                    and home.addon._tunnel_host is not None
                ):
                    holder = await self.holder(status.instance_id)
                    counts = await self.tunnels()
                    settled = sum(counts.values()) == len(self.homes)
                    if holder is not None and counts.get(holder, 0) >= 1 and settled:
                        return holder
                await asyncio.sleep(0.05)

    backend_url: str = ""


@contextlib.asynccontextmanager
async def start_cluster(
    root: Path,
    *,
    dev_ca: DevCA,
    postgres: PostgresServer,
    redis: RedisServer,
    backend_url: str,
    count: int = 3,
) -> AsyncIterator[Cluster]:
    """``count`` relay nodes, HAProxy in front; everything stopped on the way out."""
    database = await postgres.create_database(template=TEMPLATE)
    database_url = postgres.database_url(database)
    shared = root / "shared"
    shared.mkdir(parents=True, exist_ok=True, mode=0o700)
    (shared / "cluster.key").write_bytes(CLUSTER_KEY)
    server_key = load_or_create_private_key(shared / "server-key.pem")
    SecretBox.load_or_create(shared / KEY_FILE_NAME)
    cert, key = dev_ca.issue_server_certificate(
        [ACCOUNT_HOST, f"*.{TENANT_DOMAIN}", "localhost"], shared / "tls"
    )
    nodes: list[Node] = []
    public_port = reserve_port()
    for index in range(count):
        name = f"node{index + 1}"
        health_port = reserve_port()
        process = RelayProcess(
            root / name,
            database_url=database_url,
            ca=dev_ca,
            log_level="info",
            # The shipped builder (`homeport cluster` uses it too), so the two cannot drift.
            # PROXY protocol from 127.0.0.1 (HAProxy): test browsers come from 127.0.0.2+.
            extra_args=node_options(
                name,
                public_port=public_port,
                redis_url=redis.url,
                health_port=health_port,
                cluster_key=shared / "cluster.key",
                server_key=shared / "server-key.pem",
                tls_cert=cert,
                tls_key=key,
            ),
        )
        shutil.copy(shared / KEY_FILE_NAME, process.data_dir / KEY_FILE_NAME)
        nodes.append(Node(name, process, health_port))
    haproxy = Haproxy(
        root / "haproxy",
        ACCOUNT_HOST,
        [HaproxyNode(n.name, "127.0.0.1", n.process.port, n.health_port) for n in nodes],
        port=public_port,
    )
    cluster = Cluster(
        root,
        nodes,
        haproxy,
        redis,
        database_url,
        nodes[0].process.ca_path,
        server_key.public_key(),
        backend_url=backend_url,
    )
    try:
        await asyncio.gather(*(n.process.start(timeout=60) for n in nodes))
        await nodes[0].process.admin("admin", "user", "create", EMAIL, stdin=PASSWORD + "\n")
        await haproxy.start()
        for node in nodes:
            await haproxy.wait_state(node.name, True)
        yield cluster
    finally:
        for home in cluster.homes:
            await home.close()
        await haproxy.close()
        for node in nodes:
            await node.process.close()
        await postgres.drop_database(database)
