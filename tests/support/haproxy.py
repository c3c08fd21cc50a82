"""HAProxy on loopback for the cluster tests, with the configuration the project ships.

Starts Debian's ``/usr/sbin/haproxy`` in the foreground with the file
:func:`homeport.cluster_local.haproxy.haproxy_config` writes (the same one
``homeport cluster`` and ``docs/deploy.md`` use), and reads the servers' states
over its stats socket so a test can wait for a node to be marked down or up.
``scripts/system-deps`` installs the package.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ports import reserve_port

from homeport.cluster_local.haproxy import HaproxyNode, haproxy_config

BINARY = "/usr/sbin/haproxy"


class HaproxyNotFoundError(RuntimeError):
    """Debian's ``haproxy`` is not installed."""


@dataclass
class Haproxy:
    directory: Path
    account_host: str
    nodes: Sequence[HaproxyNode]
    port: int = field(default_factory=reserve_port)
    proc: asyncio.subprocess.Process | None = None

    @property
    def config_path(self) -> Path:
        return self.directory / "haproxy.cfg"

    @property
    def stats_socket(self) -> Path:
        return self.directory / "stats.sock"

    async def start(self, timeout: float = 10.0) -> None:
        if shutil.which(BINARY) is None:
            raise HaproxyNotFoundError("haproxy not found: run scripts/system-deps as root")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            haproxy_config(
                bind=f"127.0.0.1:{self.port}",
                account_host=self.account_host,
                nodes=self.nodes,
                stats_socket=self.stats_socket,
                maxconn=4096,  # within a test machine's file limit
            )
        )
        log = (self.directory / "haproxy.log").open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            BINARY, "-db", "-f", str(self.config_path), stdout=log, stderr=log
        )
        log.close()
        async with asyncio.timeout(timeout):
            while True:
                assert self.proc.returncode is None, (self.directory / "haproxy.log").read_text()
                with contextlib.suppress(OSError):
                    _r, w = await asyncio.open_connection("127.0.0.1", self.port)
                    w.close()
                    if self.stats_socket.exists():
                        return
                await asyncio.sleep(0.02)

    async def command(self, line: str) -> str:
        """One runtime-API command over the stats socket; its answer."""
        reader, writer = await asyncio.open_unix_connection(str(self.stats_socket))
        writer.write(line.encode() + b"\n")
        await writer.drain()
        answer = await reader.read()
        writer.close()
        return answer.decode()

    async def states(self, backend: str = "homes") -> dict[str, bool]:
        """Each server of ``backend``: whether HAProxy sends it traffic (UP)."""
        text = await self.command(f"show servers state {backend}")
        states: dict[str, bool] = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) > 6 and parts[1] == backend:
                states[parts[3]] = parts[5] == "2"  # srv_op_state 2: running
        return states

    async def wait_state(self, name: str, up: bool, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while (await self.states()).get(name) is not up:
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10)
