"""The shipped HAProxy configuration really routes by SNI (Debian's haproxy, real sockets).

Three plain TCP listeners stand in for relay nodes (HAProxy never ends TLS, so
they only need to count connections); a TLS client sends ClientHellos through
HAProxy. Every connection for one name must reach one node, and names must be
spread over the nodes. This is the test that caught ``balance hash
req.ssl_sni`` silently falling back to round robin on HAProxy 2.6.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from haproxy import Haproxy

from homeport.cluster_local.haproxy import HaproxyNode

pytestmark = pytest.mark.timeout(60)

ACCOUNT_HOST = "homeport.localhost"


@contextlib.asynccontextmanager
async def three_counting_nodes(tmp_path: Path) -> AsyncIterator[tuple[Haproxy, list[list[str]]]]:
    seen: list[list[str]] = [[], [], []]
    servers: list[asyncio.Server] = []

    def counting(index: int) -> object:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen[index].append("hit")
            await reader.read(1)  # hold it until the client goes
            writer.close()

        return handle

    async def healthy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nup\n")
        await writer.drain()
        writer.close()

    for index in range(3):
        servers.append(await asyncio.start_server(counting(index), "127.0.0.1", 0))  # type: ignore[arg-type]
    health = await asyncio.start_server(healthy, "127.0.0.1", 0)
    health_port = health.sockets[0].getsockname()[1]
    nodes = [
        HaproxyNode(f"node{i + 1}", "127.0.0.1", s.sockets[0].getsockname()[1], health_port)
        for i, s in enumerate(servers)
    ]
    haproxy = Haproxy(tmp_path / "haproxy", ACCOUNT_HOST, nodes)
    try:
        await haproxy.start()
        for node in nodes:
            await haproxy.wait_state(node.name, True)
        yield haproxy, seen
    finally:
        await haproxy.close()
        for server in [*servers, health]:
            server.close()


async def hello(port: int, name: str, alpn: str) -> None:
    """A ClientHello for ``name`` through HAProxy (the counting node never answers it)."""
    context = ssl.create_default_context()
    context.set_alpn_protocols([alpn])
    with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
        async with asyncio.timeout(0.5):
            _reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname=name
            )
            writer.close()


def node_of(seen: list[list[str]], before: list[int]) -> list[int]:
    return [i for i, hits in enumerate(seen) if len(hits) > before[i]]


async def test_one_name_always_reaches_one_node_and_names_spread(tmp_path: Path) -> None:
    async with three_counting_nodes(tmp_path) as (haproxy, seen):
        chosen: dict[str, set[int]] = collections.defaultdict(set)
        names = [f"{chr(97 + i) * 26}.home.localhost" for i in range(12)]
        for name in names:
            # A browser (http/1.1) and the add-on's tunnel (homeport-tunnel/1) alike.
            for alpn in ("http/1.1", "homeport-tunnel/1", "http/1.1"):
                before = [len(h) for h in seen]
                await hello(haproxy.port, name, alpn)
                async with asyncio.timeout(5):
                    while not node_of(seen, before):
                        await asyncio.sleep(0.01)
                chosen[name].update(node_of(seen, before))
        assert all(len(nodes) == 1 for nodes in chosen.values()), chosen
        assert len({next(iter(nodes)) for nodes in chosen.values()}) > 1, "no spread at all"
        # An app link's label starts with its home's first 8 characters: same node.
        for name in names:
            link = name[:8] + "q7" * 12 + name[26:]
            before = [len(h) for h in seen]
            await hello(haproxy.port, link, "http/1.1")
            async with asyncio.timeout(5):
                while not node_of(seen, before):
                    await asyncio.sleep(0.01)
            assert set(node_of(seen, before)) == chosen[name], (link, chosen[name])


def test_the_configuration_in_deploy_md_is_the_generated_one() -> None:
    """docs/deploy.md shows the generator's output, so the two cannot drift."""
    from homeport.cluster_local.haproxy import haproxy_config

    text = haproxy_config(
        bind="0.0.0.0:443",
        account_host="homeport.example.com",
        nodes=[HaproxyNode(f"node{i}", f"10.0.0.{10 + i}", 8443, 9100) for i in (1, 2, 3)],
    )
    deploy = (Path(__file__).parents[2] / "docs" / "deploy.md").read_text()
    assert "```haproxy\n" + text + "```" in deploy
