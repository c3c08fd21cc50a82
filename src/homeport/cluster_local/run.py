"""``homeport cluster``: three relay nodes, HAProxy, PostgreSQL and Redis on loopback.

What a newcomer runs to see several nodes act as one service (docs/deploy.md
"Several relay nodes" describes the same layout for real machines):

* PostgreSQL (Debian's ``initdb``/``pg_ctl``; data in ``<data-dir>/postgres``,
  kept between runs) and ``redis-server`` (no persistence), on free loopback ports;
* the shared files every node must have: the relay's signing key, the secret-box
  key, the cluster key, and a development-CA certificate for the account host
  and ``*.<tenant-domain>`` (``<data-dir>/shared``);
* three ``homeport relay`` processes (``node1``..``node3``), each with its own
  data dir, ``--public-port`` set to HAProxy's port and a health listener;
* HAProxy with the configuration :mod:`homeport.cluster_local.haproxy` writes;
* the development account (its password in ``<data-dir>/dev-credentials.txt``)
  and one add-on serving the stand-in backend (or ``--ha-url``), linked to it
  through HAProxy like any home.

Ctrl+C stops everything it started. Stop a node by hand (``kill -9 <pid>``,
printed at start) to watch its homes come back through the others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from homeport.accounts.secretbox import KEY_FILE_NAME, SecretBox
from homeport.addon.client import AddonClient, AddonConfig, AddonStatus, State
from homeport.cluster_local.haproxy import HaproxyNode, haproxy_config
from homeport.dev import DEV_EMAIL, ha_answers, passphrase
from homeport.keys import load_or_create_private_key, read_secret_file, write_secret_file
from homeport.relay.cluster.node import load_cluster_key
from homeport.relay.config import RelayConfig
from homeport.signals import until_stop_signal
from homeport.standin import start_standin
from homeport.tls.devca import ensure_dev_ca

HAPROXY = "/usr/sbin/haproxy"
NODES = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def homeport_command() -> list[str]:
    return [sys.executable, "-m", "homeport.cli"]


def node_options(
    name: str,
    *,
    public_port: int,
    redis_url: str,
    health_port: int,
    cluster_key: Path,
    server_key: Path,
    tls_cert: Path,
    tls_key: Path,
) -> list[str]:
    """The ``homeport relay`` options that make a process one node of the cluster.

    What docs/deploy.md "Several relay nodes" asks of every node, besides its own
    ``--data-dir``, ``--listen`` and the shared ``--database-url``: HAProxy's port
    as the public port, the shared Redis, cluster key, signing key and
    certificate, its name, the health listener HAProxy checks, and PROXY protocol
    from HAProxy (loopback). The test suite's cluster (tests/support/cluster.py)
    starts its nodes with these very options.
    """
    return [
        "--public-port",
        str(public_port),
        "--redis-url",
        redis_url,
        "--cluster-key-file",
        str(cluster_key),
        "--node-name",
        name,
        "--metrics-listen",
        f"127.0.0.1:{health_port}",
        "--proxy-protocol-from",  # HAProxy sends send-proxy-v2 from here
        "127.0.0.1/32",
        "--tls-cert",
        str(tls_cert),
        "--tls-key",
        str(tls_key),
        "--server-key",
        str(server_key),
    ]


@dataclass
class Child:
    name: str
    proc: asyncio.subprocess.Process

    async def stop(self, timeout: float = 20.0) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def start_postgres(directory: Path) -> tuple[str, list[str]]:
    """A PostgreSQL server in ``directory`` on a free port: its URL and its pg_ctl command."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise SystemExit("PostgreSQL not found: apt-get install postgresql (scripts/system-deps)")
    bin_dir = Path(found[-1]).parent
    run_as: list[str] = []
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.geteuid() == 0:
        # initdb refuses root: Debian's postgres user runs it, in a directory of its
        # own (it cannot enter the root-owned data dir), thrown away at the end.
        directory = Path(tempfile.mkdtemp(prefix="homeport-cluster-pg-"))
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data = directory / "data"
    if not data.exists():
        subprocess.run(
            [*run_as, str(bin_dir / "initdb"), "-D", str(data), "-U", "homeport", "-A", "trust"],
            check=True,
            capture_output=True,
        )
    port = free_port()
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={directory}"
    pg_ctl = [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data)]
    subprocess.run(
        [*pg_ctl, "-o", options, "-l", str(directory / "server.log"), "-w", "start"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return f"postgresql+asyncpg://homeport@127.0.0.1:{port}/postgres", pg_ctl


async def start_redis(directory: Path) -> tuple[str, asyncio.subprocess.Process]:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        "redis-server",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await _until_listening(port)
    return f"redis://127.0.0.1:{port}/0", proc


async def _until_listening(port: int, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(OSError):
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            await asyncio.sleep(0.05)


async def _output_says(path: Path, text: bytes, proc: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(60):
        while text not in path.read_bytes():
            if proc.returncode is not None:
                raise SystemExit(f"{path.name}: exited with {proc.returncode}; see {path}")
            await asyncio.sleep(0.05)


async def _homeport(*args: str, stdin: str | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *homeport_command(),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    if proc.returncode != 0:
        raise RuntimeError(err.decode(errors="replace")[-500:])
    return out.decode()


@contextlib.asynccontextmanager
async def local_cluster(
    data_dir: Path, port: int, *, nodes_wanted: int = NODES
) -> AsyncIterator[dict[str, object]]:
    """Everything but the add-on; yields what the caller prints and links with."""
    shared = data_dir / "shared"
    shared.mkdir(parents=True, exist_ok=True, mode=0o700)
    started: list[Child] = []
    pg_ctl: list[str] | None = None
    try:
        database_url, pg_ctl = await start_postgres(data_dir / "postgres")
        redis_url, redis = await start_redis(data_dir / "redis")
        started.append(Child("redis", redis))
        key_file = shared / "cluster.key"
        if not key_file.exists():
            write_secret_file(key_file, secrets.token_urlsafe(48).encode())
        server_key = load_or_create_private_key(shared / "server-key.pem")
        SecretBox.load_or_create(shared / KEY_FILE_NAME)
        config = RelayConfig(data_dir=shared, listen_port=port, public_port=port)
        ca = ensure_dev_ca(shared)
        cert, key = ca.issue_server_certificate(
            [config.account_host, f"*.{config.tenant_domain}", "localhost"], shared / "tls"
        )
        nodes: list[HaproxyNode] = []
        for index in range(nodes_wanted):
            name = f"node{index + 1}"
            node_dir = data_dir / name
            node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copy(shared / KEY_FILE_NAME, node_dir / KEY_FILE_NAME)
            node = HaproxyNode(name, "127.0.0.1", free_port(), free_port())
            log = node_dir / "relay.log"
            with log.open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    *homeport_command(),
                    "--log-level",
                    "warning",
                    "relay",
                    "--data-dir",
                    str(node_dir),
                    "--listen",
                    f"127.0.0.1:{node.port}",
                    "--database-url",
                    database_url,
                    *node_options(
                        name,
                        public_port=port,
                        redis_url=redis_url,
                        health_port=node.health_port,
                        cluster_key=key_file,
                        server_key=shared / "server-key.pem",
                        tls_cert=cert,
                        tls_key=key,
                    ),
                    stdout=out,
                    stderr=out,
                )
            started.append(Child(name, proc))
            await _output_says(log, b"Relay listening", proc)
            nodes.append(node)
        haproxy_cfg = data_dir / "haproxy.cfg"
        haproxy_cfg.write_text(
            haproxy_config(
                bind=f"127.0.0.1:{port}",
                account_host=config.account_host,
                nodes=nodes,
                maxconn=4096,
            )
        )
        if shutil.which(HAPROXY) is None:
            raise SystemExit("HAProxy not found: apt-get install haproxy (scripts/system-deps)")
        haproxy_log = (data_dir / "haproxy.log").open("wb")
        haproxy = await asyncio.create_subprocess_exec(
            HAPROXY, "-db", "-f", str(haproxy_cfg), stdout=haproxy_log, stderr=haproxy_log
        )
        haproxy_log.close()
        started.append(Child("haproxy", haproxy))
        await _until_listening(port)
        admin = ["--data-dir", str(data_dir / "node1"), "--database-url", database_url]
        credentials = data_dir / "dev-credentials.txt"
        if credentials.exists():
            email, password = read_secret_file(credentials).decode().split("\n")[:2]
        else:
            email, password = DEV_EMAIL, passphrase()
            write_secret_file(credentials, f"{email}\n{password}\n".encode(), replace=True)
        with contextlib.suppress(RuntimeError):  # kept from an earlier run's database
            await _homeport("admin", "user", "create", email, *admin, stdin=password + "\n")
        yield {
            "config": config,
            "email": email,
            "password": password,
            "admin": admin,
            "server_key": server_key,
            "ca": shared / "tls" / "dev-ca.pem",
            "children": started,
            "haproxy_cfg": haproxy_cfg,
            "database_url": database_url,
            "redis_url": redis_url,
            "cluster_key": load_cluster_key(key_file),
        }
    finally:
        for child in reversed(started):
            await child.stop()
        if pg_ctl is not None:
            subprocess.run([*pg_ctl, "-m", "fast", "stop"], capture_output=True, timeout=60)


async def run_cluster(args: argparse.Namespace) -> None:
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    port = int(args.port)
    async with local_cluster(data_dir, port) as found:
        config = found["config"]
        assert isinstance(config, RelayConfig)
        ha_url = str(args.ha_url)
        standin: web.AppRunner | None = None
        if not await ha_answers(ha_url):
            standin, ha_url = await start_standin()
        linked = asyncio.Event()
        linking: set[asyncio.Task[str]] = set()
        admin = found["admin"]
        assert isinstance(admin, list)

        def on_status(status: AddonStatus) -> None:
            if status.state is State.UNLINKED and status.link_code:
                task = asyncio.ensure_future(
                    _homeport("admin", "link", status.link_code, str(found["email"]), *admin)
                )
                linking.add(task)
                task.add_done_callback(linking.discard)
            if status.state is State.CONNECTED:
                linked.set()

        addon_config = AddonConfig(
            relay_url=f"wss://{config.account_host}{config.port_suffix}/v1/tunnel",
            ha_url=ha_url,
            state_dir=data_dir / "addon",
            pinned_keys=(found["server_key"].public_key(),),  # type: ignore[attr-defined]
            relay_ca=Path(str(found["ca"])),
        )
        async with AddonClient(addon_config, on_status=on_status) as addon:
            runner = asyncio.create_task(addon.run_forever())
            async with asyncio.timeout(60):
                await linked.wait()
            children = found["children"]
            assert isinstance(children, list)
            pids = ", ".join(f"{c.name} pid {c.proc.pid}" for c in children if c.name[:4] == "node")
            print(
                "\nA Homeport cluster is running: 3 relay nodes behind HAProxy, "
                "PostgreSQL and Redis.\n"
                f"  Open:        {addon.status.public_url}/\n"
                f"  Account:     {config.account_origin}/\n"
                f"  Sign in as:  {found['email']}\n"
                f"  Password:    {found['password']}\n"
                f"  Trust CA:    {found['ca']}\n"
                f"  Nodes:       {pids}\n"
                f"  HAProxy:     {found['haproxy_cfg']}\n"
                "  Try: kill -9 one node's pid; the home is back through the others in seconds.\n"
                "Press Ctrl+C to stop.",
                flush=True,
            )
            await until_stop_signal()
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        if standin is not None:
            await standin.cleanup()
