"""End to end: a relay behind the real HAProxy sees each browser's own address (PROXY v2).

A relay started with ``proxy_protocol_from`` = HAProxy's address (127.0.0.1)
sits behind Debian's HAProxy running the shipped configuration (which sends
``send-proxy-v2``); browsers connect to HAProxy from 127.0.0.2 and 127.0.0.3
(Linux routes all of 127/8 to loopback). The stand-in Home Assistant records
the headers it receives; the account site's sign-in throttle counts per network.

Negative tests: a connection to the node from outside the trusted network is
closed; a trusted peer without a valid header (plain TLS, v1 text, an unknown
version, an oversized length) is closed while others carry on; half a header
then silence is dropped at the header deadline; and a relay *without* the
option treats a PROXY header as the garbage it is for TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from haproxy import Haproxy
from header_backend import recording_backend
from ports import listening_socket, reserve_port
from proxy_v2 import v2_header
from stack import Stack, start_stack

from homeport.cluster_local.haproxy import HaproxyNode
from homeport.tls.proxy_header import SIGNATURE
from homeport.tls.proxy_listener import HEADER_TIMEOUT

pytestmark = pytest.mark.timeout(120)


@dataclass
class Proxied:
    stack: Stack
    haproxy: Haproxy
    node_port: int
    seen: list[list[tuple[str, str]]]


@contextlib.asynccontextmanager
async def proxied_relay(tmp_path: Path, **relay_options: object) -> AsyncIterator[Proxied]:
    """One relay node behind HAProxy; its add-on and browsers all come through HAProxy."""
    sock = listening_socket()
    node_port = sock.getsockname()[1]
    public_port, health_port = reserve_port(), reserve_port()
    haproxy = Haproxy(
        tmp_path / "haproxy",
        "homeport.localhost",
        [HaproxyNode("node1", "127.0.0.1", node_port, health_port)],
        port=public_port,
    )

    async def start_haproxy(_relay: object) -> None:
        await haproxy.start()
        await haproxy.wait_state("node1", True)

    try:
        async with (
            recording_backend() as (backend, seen),
            start_stack(
                tmp_path,
                ha_url=backend,
                sock=sock,
                before_addon=start_haproxy,
                public_port=public_port,
                metrics_listen=("127.0.0.1", health_port),
                proxy_protocol_from=(ipaddress.ip_network("127.0.0.1/32"),),
                **relay_options,
            ) as stack,
        ):
            yield Proxied(stack, haproxy, node_port, seen)
    finally:
        await haproxy.close()


@pytest_asyncio.fixture
async def proxied(tmp_path: Path) -> AsyncIterator[Proxied]:
    async with proxied_relay(tmp_path) as relay:
        yield relay


def forwarded_for(seen: list[list[tuple[str, str]]]) -> list[str]:
    return [v for block in seen for n, v in block if n.lower() == "x-forwarded-for"]


async def test_home_assistant_sees_each_browsers_own_address(proxied: Proxied) -> None:
    stack = proxied.stack
    for source in ("127.0.0.2", "127.0.0.3"):
        async with stack.browser(source_ip=source) as browser:
            assert (await browser.sign_in("/")).status == 200
            proxied.seen.clear()
            async with browser.request("GET", stack.tenant_origin + "/echo") as r:
                assert r.status == 200
            # Not HAProxy's 127.0.0.1: the address HAProxy's header named.
            assert forwarded_for(proxied.seen) == [source]


async def test_a_guesser_is_throttled_and_the_owner_elsewhere_is_not(proxied: Proxied) -> None:
    """The sign-in throttle counts per network: a guesser behind the same HAProxy must not
    throttle the owner (before this, every client was HAProxy's 127.0.0.1)."""
    stack = proxied.stack
    origin = stack.account_origin
    statuses = []
    async with stack.browser(source_ip="127.0.0.2") as guesser:
        for attempt in range(8):
            async with guesser.request(
                "POST",
                origin + "/signin",
                data={"email": stack.email, "password": f"wrong {attempt}", "next": "/"},
                headers={"Origin": origin},
            ) as r:
                await r.read()
                statuses.append(r.status)
                if r.status == 429:
                    break
    assert statuses[:5] == [401] * 5, statuses
    assert statuses[-1] == 429, statuses
    async with stack.browser(source_ip="127.0.0.3") as owner:
        await owner.sign_in_account_site()  # 303, not 429


async def test_per_address_slots_on_tenant_hosts_count_each_browser(tmp_path: Path) -> None:
    """``client-max-requests`` = 1: a browser holding a request is refused a second one,
    another browser behind the same HAProxy is not (before, both were 127.0.0.1)."""
    async with (
        proxied_relay(tmp_path, client_max_requests=1) as proxied,
        proxied.stack.browser(source_ip="127.0.0.2") as first,
        proxied.stack.browser(source_ip="127.0.0.3") as second,
    ):
        origin = proxied.stack.tenant_origin
        assert (await first.sign_in("/")).status == 200
        assert (await second.sign_in("/")).status == 200

        async def hold() -> int:
            async with first.request("GET", origin + "/slow?seconds=3") as r:
                await r.read()
                return r.status

        holding = asyncio.create_task(hold())
        try:
            async with asyncio.timeout(10):
                while True:  # until the slot is taken: the same browser is refused
                    async with first.request("GET", origin + "/echo") as r:
                        await r.read()
                    if r.status == 429:
                        break
                    await asyncio.sleep(0.05)
            async with second.request("GET", origin + "/echo") as r:
                assert r.status == 200  # its own slot
        finally:
            assert await holding == 200


async def closed_without_a_session(port: int, send: bytes, source: str = "127.0.0.1") -> bytes:
    """Connect from ``source``, send ``send``; what the relay answers before it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(send)
        async with asyncio.timeout(10):
            try:
                return await reader.read(65536)  # b"" (closed) or a TLS alert at most
            except ConnectionResetError:
                return b""  # aborted: closed with a reset
    finally:
        writer.close()


async def tls_through(
    port: int, ca: Path, *, header: bytes = b"", source: str = "127.0.0.1"
) -> None:
    """A TLS handshake to the account host on ``port``, after ``header``; raises if refused."""
    context = ssl.create_default_context(cafile=str(ca))
    sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
    sock.sendall(header)
    sock.setblocking(False)
    async with asyncio.timeout(10):
        _reader, writer = await asyncio.open_connection(
            sock=sock, ssl=context, server_hostname="homeport.localhost"
        )
    writer.close()


async def test_the_node_refuses_everyone_but_haproxy(proxied: Proxied) -> None:
    stack, port = proxied.stack, proxied.node_port
    # Positive control: HAProxy's address with a valid header gets TLS straight behind it.
    await tls_through(port, stack.ca_path, header=v2_header(("198.51.100.9", 4000)))
    # Past HAProxy from another address: closed before a byte is read, header or not.
    for send in (v2_header(("198.51.100.9", 4000)), b"\x16\x03\x01"):
        assert await closed_without_a_session(port, send, source="127.0.0.2") == b""
    with pytest.raises((ssl.SSLError, OSError)):
        await tls_through(port, stack.ca_path, source="127.0.0.2")


@pytest.mark.parametrize(
    "send",
    [
        b"PROXY TCP4 198.51.100.9 127.0.0.1 4000 443\r\n",  # v1 text
        SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),  # version 1 in binary
        SIGNATURE + b"\x21\x11\xff\xff" + bytes(64),  # announces 64 KiB
        SIGNATURE + b"\x21\x11\x00\x08" + bytes(8),  # too short for IPv4
        b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03" + bytes(5),  # TLS with no header
    ],
    ids=["v1", "version1", "oversized", "short-body", "no-header"],
)
async def test_a_bad_header_closes_that_connection_only(proxied: Proxied, send: bytes) -> None:
    stack = proxied.stack
    async with stack.browser(source_ip="127.0.0.2") as browser:
        assert (await browser.sign_in("/")).status == 200
        assert await closed_without_a_session(proxied.node_port, send) == b""
        async with browser.request("GET", stack.tenant_origin + "/echo") as r:
            assert r.status == 200  # others carry on
    assert stack.addon.status.state.name == "CONNECTED"


async def test_half_a_header_then_silence_is_dropped_at_the_deadline(proxied: Proxied) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxied.node_port)
    try:
        writer.write(v2_header()[:10])
        started = time.monotonic()
        async with asyncio.timeout(HEADER_TIMEOUT + 5):
            assert await reader.read(1) == b""
        waited = time.monotonic() - started
        assert HEADER_TIMEOUT - 0.5 <= waited <= HEADER_TIMEOUT + 3, waited
    finally:
        writer.close()


async def test_without_the_option_a_proxy_header_is_refused_like_garbage(tmp_path: Path) -> None:
    async with start_stack(tmp_path) as stack:
        port = stack.config.listen_port
        await tls_through(port, stack.ca_path)  # positive control: plain TLS works
        with pytest.raises((ssl.SSLError, OSError)):
            await tls_through(port, stack.ca_path, header=v2_header(("198.51.100.9", 4000)))
