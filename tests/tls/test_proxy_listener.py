"""The PROXY v2 listener on both event loops, with real sockets and real TLS.

The client sends the header and its ClientHello in one segment (as HAProxy
does: it has the hello buffered when it connects), and its first request in
the same segment as its TLS Finished, so the test fails if the reader takes
one byte of the hello or if what arrives between the end of the handshake and
``connection_made`` is lost (``_Handover``). Both the aiohttp path
(``proxied_remote``: ``request.remote``) and a buffered protocol chosen by
SNI (the data plane's kind: ``client_address``) see the header's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import uvloop
from aiohttp import web
from proxy_v2 import LOCAL, v2_header

from homeport.tls.context import requested_server_name, server_context
from homeport.tls.devca import ensure_dev_ca
from homeport.tls.proxy_listener import client_address, proxied_remote
from homeport.tls.reads import ThreadBufferReads
from homeport.tls.served import GatedTLSSite

HOST = "homeport.localhost"
RAW_HOST = "raw.localhost"
LOOPS = pytest.mark.parametrize(
    "loop_factory", [uvloop.new_event_loop, asyncio.new_event_loop], ids=["uvloop", "asyncio"]
)


class SaysWhoCalls(ThreadBufferReads):
    """A buffered protocol like the data plane's: answers its client's address, closes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(f"{client_address(self.transport)}|{data.decode()}".encode())  # type: ignore[attr-defined]
        self.transport.close()


def route(ssl_object: object) -> Callable[[], asyncio.BaseProtocol] | None:
    return SaysWhoCalls if requested_server_name(ssl_object) == RAW_HOST else None  # type: ignore[arg-type]


def exchange(port: int, cafile: Path, header: bytes, name: str, payload: bytes) -> bytes:
    """Header + ClientHello in one send; Finished + ``payload`` in one send; the answer."""
    context = ssl.create_default_context(cafile=str(cafile))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        prefix = header
        for _ in range(20):
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            sock.sendall(prefix + outgoing.read())
            prefix = b""
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed during the handshake")
            incoming.write(data)
        tls.write(payload)
        sock.sendall(outgoing.read())
        answer = b""
        for _ in range(1000):
            try:
                chunk = tls.read(65536)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                if not data:
                    break
                incoming.write(data)
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            if not chunk:
                break
            answer += chunk
        return answer


@contextlib.asynccontextmanager
async def gated_site(
    app: web.Application, cert: Path, key: Path, trusted: str
) -> AsyncIterator[int]:
    """``app`` behind a ``GatedTLSSite`` that trusts PROXY headers from ``trusted``; its port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = GatedTLSSite(
        runner,
        "127.0.0.1",
        0,
        ssl_context=server_context(cert, key),
        route=route,
        proxy_from=(ipaddress.ip_network(trusted),),
    )
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def answers(cert: Path, key: Path, cafile: Path, header: bytes) -> tuple[bytes, bytes]:
    async def remote(request: web.Request) -> web.Response:
        return web.Response(text=f"remote={request.remote}")

    app = web.Application(middlewares=[proxied_remote])
    app.router.add_get("/", remote)
    async with gated_site(app, cert, key, "127.0.0.1/32") as port:
        request = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
        web_answer = await asyncio.to_thread(exchange, port, cafile, header, HOST, request)
        raw_answer = await asyncio.to_thread(exchange, port, cafile, header, RAW_HOST, b"hi")
        return web_answer, raw_answer


@LOOPS
def test_the_header_and_early_data_are_read_exactly(
    tmp_path: Path, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    ca = ensure_dev_ca(tmp_path / "data")
    cert, key = ca.issue_server_certificate([HOST, RAW_HOST], tmp_path / "tls")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        proxied = runner.run(answers(cert, key, ca.cert_path, v2_header(("198.51.100.9", 4000))))
        local = runner.run(answers(cert, key, ca.cert_path, v2_header(command=LOCAL)))
    assert proxied[0].endswith(b"remote=198.51.100.9"), proxied[0]
    assert proxied[1] == b"198.51.100.9|hi"
    # LOCAL (HAProxy's own connections): the socket peer stands.
    assert local[0].endswith(b"remote=127.0.0.1"), local[0]
    assert local[1] == b"127.0.0.1|hi"


def test_client_address_without_tls_or_transport_is_the_peer_or_empty() -> None:
    """Plain transports (no TLS session) and a closed request (no transport) never raise."""

    class Plain(asyncio.BaseTransport):
        def get_extra_info(self, name: str, default: object = None) -> object:
            return ("192.0.2.4", 1234) if name == "peername" else default

    import homeport.tls.proxy_listener as listener

    marker = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
    listener._proxied[marker] = "198.51.100.1"  # one proxied connection somewhere
    try:
        assert client_address(Plain()) == "192.0.2.4"
        assert client_address(None) == ""
    finally:
        del listener._proxied[marker]


async def _untrusted_connections(tmp_path: Path, count: int) -> None:
    """``count`` TCP connections from 127.0.0.1 to a listener that trusts only 10/8."""
    ca = ensure_dev_ca(tmp_path / "data")
    cert, key = ca.issue_server_certificate([HOST], tmp_path / "tls")
    async with gated_site(web.Application(), cert, key, "10.0.0.0/8") as port:
        for _ in range(count):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            with contextlib.suppress(ConnectionResetError):  # aborted: a reset
                assert await reader.read() == b""  # closed before a byte is read
            writer.close()


async def test_a_flood_of_refused_peers_is_logged_in_sums(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone who reaches the port causes a refusal: 40 of them are not 40 log lines."""
    import homeport.tls.proxy_listener as listener
    from homeport.logs import LogThrottle

    now = [0.0]
    throttle = LogThrottle(burst=3, interval=60, clock=lambda: now[0])
    monkeypatch.setattr(listener, "_refusals", throttle)
    with caplog.at_level(logging.WARNING, logger="homeport.tls.proxy_listener"):
        await _untrusted_connections(tmp_path, 40)
        lines = [r for r in caplog.records if r.message == "relay.proxy_untrusted_peer"]
        assert [r.suppressed for r in lines] == [0, 0, 0]  # type: ignore[attr-defined]
        now[0] = 61.0  # a minute later: the next refusal says how many were left out
        await _untrusted_connections(tmp_path / "again", 1)
    lines = [r for r in caplog.records if r.message == "relay.proxy_untrusted_peer"]
    assert [r.suppressed for r in lines] == [0, 0, 0, 37]  # type: ignore[attr-defined]


def test_the_log_throttle_counts_what_it_leaves_out() -> None:
    from homeport.logs import LogThrottle

    now = [100.0]
    throttle = LogThrottle(burst=2, interval=10, clock=lambda: now[0])
    assert [throttle.allow() for _ in range(5)] == [0, 0, None, None, None]
    now[0] = 109.9
    assert throttle.allow() is None
    now[0] = 110.0
    assert throttle.allow() == 4
    assert throttle.allow() == 0
    assert throttle.allow() is None
