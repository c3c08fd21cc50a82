"""Bad input at the edge: a clear refusal, nothing forwarded, and everyone else carries on.

Raw TLS sockets send what no client library will (smuggling shapes, oversized
heads, foreign targets and origins); a hand-driven add-on sends garbage down
its own tunnel.  Each case asserts the answer (status, and that the relay
closed the connection where the rest of the bytes cannot be trusted), that the
backend witness saw nothing, and that a signed-in browser is still served on
the same relay right after.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from observed import Witness, start_observed_standin
from rawhttp import RawResponse, connect, exchange, read_head
from stack import Browser, Stack, start_stack
from tenants import RawTunnel, linked_key, raw_tunnel

from homeport.logs import JsonFormatter
from homeport.protocol.connection import Role, TunnelConnection
from homeport.protocol.errors import ErrorCode
from homeport.protocol.events import GoAwayReceived
from homeport.protocol.frames import FrameType, encode_frame
from homeport.relay.app import IDLE_TIMEOUT
from homeport.relay.tenant import SESSION_COOKIE

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Edge:
    stack: Stack
    witness: Witness
    browser: Browser
    token: str

    @property
    def authority(self) -> str:
        return self.stack.tenant_origin.removeprefix("https://")

    @property
    def sni(self) -> str:
        return self.authority.rsplit(":", 1)[0]

    @property
    def head(self) -> str:
        """Host and a valid session cookie: every case below is otherwise allowed in."""
        return f"Host: {self.authority}\r\nCookie: {SESSION_COOKIE}={self.token}\r\n"

    async def send(self, data: bytes) -> RawResponse:
        return await exchange(self.stack.config.listen_port, self.sni, self.stack.ca_path, data)

    async def assert_still_serving(self) -> None:
        """A signed-in browser gets a real answer from the backend, through the same relay."""
        before = len(self.witness.requests)
        async with asyncio.timeout(5):
            async with self.browser.request("GET", self.stack.tenant_origin + "/echo?ok") as r:
                assert r.status == 200
                assert (await r.json())["path_qs"] == "/echo?ok"
        assert self.witness.targets()[before:] == ["/echo?ok"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def edge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Edge]:
    runner, url, witness = await start_observed_standin()
    try:
        async with (
            start_stack(tmp_path_factory.mktemp("edge"), ha_url=url) as stack,
            stack.browser() as browser,
        ):
            await browser.sign_in("/")
            jar = {c.key: c.value for c in browser.session.cookie_jar}
            yield Edge(stack, witness, browser, jar[SESSION_COOKIE])
    finally:
        await runner.cleanup()


@pytest.fixture
def json_logs(caplog: pytest.LogCaptureFixture) -> Callable[[], str]:
    """Everything logged during the test, formatted as the relay formats it in production."""
    caplog.set_level(logging.DEBUG)
    formatter = JsonFormatter()
    return lambda: "\n".join(formatter.format(record) for record in caplog.records)


# ----------------------------------------------------------- the strict parser

BIG = "a" * 20_000


def _many_headers(edge: Edge) -> str:
    return "".join(f"X-Filler-{i}: v\r\n" for i in range(300))


# name -> (request builder, acceptable statuses).  Every one must also close the connection:
# after a framing error nothing further on that connection can be trusted.
MALFORMED: dict[str, tuple[Callable[[Edge], str], set[int]]] = {
    "one-huge-header": (
        lambda e: f"GET /echo HTTP/1.1\r\n{e.head}X-Big: {BIG}\r\n\r\n",
        {431, 400},
    ),
    "too-many-headers": (
        lambda e: f"GET /echo HTTP/1.1\r\n{e.head}{_many_headers(e)}\r\n",
        {431, 400},
    ),
    "huge-target": (lambda e: f"GET /echo?{BIG} HTTP/1.1\r\n{e.head}\r\n", {414, 400}),
    "content-length-and-chunked": (
        lambda e: (
            f"POST /echo HTTP/1.1\r\n{e.head}Content-Length: 5\r\n"
            "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
        {400},
    ),
    "differing-content-lengths": (
        lambda e: (
            f"POST /echo HTTP/1.1\r\n{e.head}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
        ),
        {400},
    ),
    "content-length-list": (
        lambda e: f"POST /echo HTTP/1.1\r\n{e.head}Content-Length: 5, 5\r\n\r\nhello",
        {400},
    ),
    "signed-content-length": (
        lambda e: f"POST /echo HTTP/1.1\r\n{e.head}Content-Length: +5\r\n\r\nhello",
        {400},
    ),
    "invalid-chunk-size": (
        lambda e: (
            f"POST /echo HTTP/1.1\r\n{e.head}Transfer-Encoding: chunked\r\n\r\n"
            "zz\r\nhello\r\n0\r\n\r\n"
        ),
        {400},
    ),
    "space-before-colon": (
        lambda e: f"POST /echo HTTP/1.1\r\n{e.head}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        {400},
    ),
    "obs-fold": (lambda e: f"GET /echo HTTP/1.1\r\n{e.head}X-Folded: a\r\n b\r\n\r\n", {400}),
    "bare-lf-in-header": (lambda e: f"GET /echo HTTP/1.1\r\n{e.head}X-A: b\n\r\n", {400}),
    "bare-lf-everywhere": (
        lambda e: f"GET /echo HTTP/1.1\n{e.head.replace(chr(13), '')}\n",
        {400},
    ),
    "nul-in-header": (lambda e: f"GET /echo HTTP/1.1\r\n{e.head}X-A: b\x00c\r\n\r\n", {400}),
    "duplicate-host": (
        lambda e: f"GET /echo HTTP/1.1\r\n{e.head}Host: evil.example\r\n\r\n",
        {400},
    ),
    "duplicate-identical-host": (
        lambda e: f"GET /echo HTTP/1.1\r\n{e.head}Host: {e.authority}\r\n\r\n",
        {400},
    ),
    "missing-host": (
        lambda e: f"GET /echo HTTP/1.1\r\nCookie: {SESSION_COOKIE}={e.token}\r\n\r\n",
        {400},
    ),
    "bad-http-version": (lambda e: f"GET /echo HTTP/1.2\r\n{e.head}\r\n", {400}),
    "unknown-transfer-coding": (
        lambda e: f"POST /echo HTTP/1.1\r\n{e.head}Transfer-Encoding: gzip\r\n\r\n",
        {400, 501},
    ),
    # Accepted by aiohttp's parser; refused by the relay (app.py _refuse_at_edge).
    "coding-before-chunked": (
        lambda e: (
            f"POST /echo HTTP/1.1\r\n{e.head}Transfer-Encoding: gzip, chunked\r\n\r\n"
            "5\r\nhello\r\n0\r\n\r\n"
        ),
        {501},
    ),
    "connect-authority-form": (
        lambda e: f"CONNECT evil.example:443 HTTP/1.1\r\n{e.head}\r\n",
        {405},
    ),
    "connect-origin-form": (lambda e: f"CONNECT /echo HTTP/1.1\r\n{e.head}\r\n", {405}),
    "trace": (lambda e: f"TRACE /echo HTTP/1.1\r\n{e.head}\r\n", {405}),
    # Scanner-style oversize and smuggling probes (issue #4).
    "ten-thousand-headers": (
        lambda e: f"GET /echo HTTP/1.1\r\n{e.head}" + "X-A: b\r\n" * 10_000 + "\r\n",
        {431, 400},
    ),
    "request-line-too-long": (lambda e: f"GET /{BIG} HTTP/1.1\r\n{e.head}\r\n", {414, 400}),
    "duplicate-identical-content-length": (
        lambda e: (
            f"POST /echo HTTP/1.1\r\n{e.head}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
        ),
        {400},
    ),
    "content-length-overflow": (
        lambda e: f"POST /echo HTTP/1.1\r\n{e.head}Content-Length: {'9' * 30}\r\n\r\nhello",
        {400},
    ),
    "space-in-target": (lambda e: f"GET /echo x HTTP/1.1\r\n{e.head}\r\n", {400}),
    "chunk-size-overflow": (
        lambda e: (
            f"POST /echo HTTP/1.1\r\n{e.head}Transfer-Encoding: chunked\r\n\r\n"
            f"{'f' * 40}\r\nhello\r\n0\r\n\r\n"
        ),
        {400},
    ),
    "chunked-with-bare-lf": (
        lambda e: (
            f"POST /echo HTTP/1.1\r\n{e.head}Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n"
        ),
        {400},
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_request_is_refused_and_closed(
    edge: Edge, case: str, json_logs: Callable[[], str]
) -> None:
    build, statuses = MALFORMED[case]
    before = len(edge.witness.requests)
    answer = await edge.send(build(edge).encode("latin-1"))
    assert answer.status in statuses, (answer.status, answer.body[:200])
    assert answer.closed, "the relay must close a connection whose framing it refused"
    assert answer.body, "a refusal says why"
    assert edge.witness.targets()[before:] == [], "nothing may reach Home Assistant"
    await edge.assert_still_serving()
    # Refusals are logged as metadata only: the session token in the bad head never shows.
    assert edge.token not in json_logs()


async def test_chunk_extensions_are_dropped_not_forwarded(edge: Edge) -> None:
    """A 1 MiB chunk extension is parsed past, not buffered, and never reaches the backend.

    RFC 9112 §7.1.1 lets a recipient ignore extensions; the tunnel carries only the
    decoded body, so there is nothing to smuggle in one.
    """
    extension = "a" * (1024 * 1024)
    request = (
        f"POST /echo HTTP/1.1\r\n{edge.head}Transfer-Encoding: chunked\r\n\r\n"
        f"5;ext={extension}\r\nhello\r\n0\r\n\r\n"
    )
    before = len(edge.witness.requests)
    answer = await edge.send(request.encode())
    assert answer.status == 200
    seen = json.loads(answer.body)
    assert seen["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert edge.witness.targets()[before:] == ["/echo"]
    assert "ext" not in json.dumps(seen["headers"])


async def test_pipelined_smuggling_attempt_is_cut_at_the_bad_request(edge: Edge) -> None:
    """A good request followed, in the same packet, by one with CL and TE: at most the first
    is served, the connection ends with a 400, and nothing hidden in the second request's
    body reaches the backend as a request of its own."""
    smuggled = "GET /echo?smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    data = (
        f"GET /echo?first HTTP/1.1\r\n{edge.head}\r\n"
        f"POST /echo?second HTTP/1.1\r\n{edge.head}Content-Length: 4\r\n"
        f"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
    )
    before = len(edge.witness.requests)
    reader, writer = await connect(edge.stack.config.listen_port, edge.sni, edge.stack.ca_path)
    statuses = []
    try:
        writer.write(data.encode())
        await writer.drain()
        async with asyncio.timeout(15):
            while True:  # every answer until the relay closes the connection
                try:
                    status, _, headers = await read_head(reader)
                except asyncio.IncompleteReadError:
                    break
                statuses.append(status)
                await reader.readexactly(int(dict(headers).get("content-length", "0")))
    finally:
        writer.close()
    # aiohttp parses what arrived together: the good request is served (200) or refused
    # with the bad one (400); either way the bad one ends the connection with a 400.
    assert statuses in ([200, 400], [400]), statuses
    await asyncio.sleep(0.2)
    assert edge.witness.targets()[before:] in ([], ["/echo?first"])
    await edge.assert_still_serving()


# ------------------------------------------------- targets that are not ours

FOREIGN_TARGETS = {
    "absolute-form-elsewhere": "GET http://evil.example/ HTTP/1.1",
    "absolute-form-own-host": "GET https://{authority}/echo HTTP/1.1",
    "scheme-relative": "GET //evil.example/echo HTTP/1.1",
    "asterisk-form": "OPTIONS * HTTP/1.1",
}


@pytest.mark.parametrize("case", list(FOREIGN_TARGETS))
async def test_foreign_target_is_never_forwarded(edge: Edge, case: str) -> None:
    line = FOREIGN_TARGETS[case].format(authority=edge.authority)
    before = len(edge.witness.requests)
    answer = await edge.send(f"{line}\r\n{edge.head}\r\n".encode())
    assert 400 <= answer.status < 500, answer.status
    # Let any stray forward land before looking: the backend must have seen nothing.
    await asyncio.sleep(0.2)
    assert edge.witness.targets()[before:] == []
    await edge.assert_still_serving()


# ------------------------------------------------------------------ WebSocket

WS_UPGRADE = (
    "GET /ws/echo HTTP/1.1\r\n{head}Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    "Origin: {origin}\r\n\r\n"
)


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "null", "https://homeport.localhost", "http://{authority}"],
)
async def test_websocket_with_foreign_origin_is_refused(edge: Edge, origin: str) -> None:
    before = len(edge.witness.requests)
    request = WS_UPGRADE.format(head=edge.head, origin=origin.format(authority=edge.authority))
    answer = await edge.send(request.encode())
    assert answer.status == 403
    assert b"Cross-origin WebSocket refused" in answer.body
    await asyncio.sleep(0.2)
    assert edge.witness.targets()[before:] == []
    # The same browser, from the right origin, still gets its WebSocket.
    ws_url = edge.stack.tenant_origin.replace("https://", "wss://") + "/ws/echo"
    async with asyncio.timeout(5):
        async with edge.browser.session.ws_connect(ws_url, origin=edge.stack.tenant_origin) as ws:
            await ws.send_str("still here")
            assert await ws.receive_str() == "still here"
    await edge.assert_still_serving()


# --------------------------------------------------------------- slow peers


async def test_idle_and_trickling_connections_have_a_deadline(edge: Edge) -> None:
    """A head that never finishes holds a socket only until the idle deadline, not an hour.

    Waiting out the real deadline (75 s) would dominate the suite, so this checks the
    deadline every live connection carries, and that half-sent heads stop nobody else.
    """
    assert IDLE_TIMEOUT <= 120
    port, ca = edge.stack.config.listen_port, edge.stack.ca_path
    trickling = []
    for _ in range(20):
        reader, writer = await connect(port, edge.sni, ca)
        writer.write(f"GET /echo HTTP/1.1\r\n{edge.head}X-Slow: ".encode())
        await writer.drain()
        trickling.append((reader, writer))
    try:
        # Tenant hosts are served by the data plane (homeport.relay.proxy), one
        # TenantConnection per browser connection, each with its idle deadline armed.
        connections = edge.stack.relay.tenants.connections
        assert len(connections) >= 20
        assert all(c.idle_deadline_armed for c in connections)
        assert all(c.idle_timeout == IDLE_TIMEOUT for c in connections)
        before = len(edge.witness.requests)
        await edge.assert_still_serving()
        for _reader, writer in trickling:
            writer.write(b"x")
            await writer.drain()
        assert edge.witness.targets()[before:] == ["/echo?ok"], "half heads are not forwarded"
    finally:
        for _reader, writer in trickling:
            writer.close()


async def test_a_kept_alive_connection_is_closed_once_idle_after_its_last_response(
    edge: Edge,
) -> None:
    """The idle deadline counts from the end of the last response, however many came before.

    The deadline moves with each request while its timer stays (one timer per
    connection, not one per request): the connection must neither be closed
    while requests keep coming within the deadline, nor outlive it once idle.
    """
    port, ca = edge.stack.config.listen_port, edge.stack.ca_path
    before = set(edge.stack.relay.tenants.connections)
    reader, writer = await connect(port, edge.sni, ca)
    request = f"GET /echo?idle HTTP/1.1\r\n{edge.head}\r\n".encode()
    try:
        writer.write(request)
        await writer.drain()
        status, _, headers = await read_head(reader)
        assert status == 200
        await reader.readexactly(int(dict(headers)["content-length"]))
        (connection,) = set(edge.stack.relay.tenants.connections) - before
        connection._idle_timeout = 0.6  # the real one is 75 s
        for _ in range(4):  # 1.6 s of requests 0.4 s apart: past the first deadline
            await asyncio.sleep(0.4)
            writer.write(request)
            await writer.drain()
            status, _, headers = await read_head(reader)
            assert status == 200
            await reader.readexactly(int(dict(headers)["content-length"]))
            assert connection.idle_deadline_armed
        started = asyncio.get_running_loop().time()
        async with asyncio.timeout(5):
            assert await reader.read(1) == b""  # closed by the relay
        waited = asyncio.get_running_loop().time() - started
        assert 0.4 <= waited <= 2.0, waited
        for _ in range(50):
            if connection.lost:
                break
            await asyncio.sleep(0.02)
        assert connection.lost
    finally:
        writer.close()


async def _slow_exchange(
    edge: Edge, head_timeout: float, delays: list[float]
) -> tuple[list[int], float]:
    """One keep-alive connection: a first quick request, then ``/slow`` ones with
    the connection's response-head deadline set to ``head_timeout``; the statuses
    of the slow ones and how long the last one took."""
    port, ca = edge.stack.config.listen_port, edge.stack.ca_path
    before = set(edge.stack.relay.tenants.connections)
    reader, writer = await connect(port, edge.sni, ca)
    statuses: list[int] = []
    took = 0.0
    try:
        writer.write(f"GET /echo?first HTTP/1.1\r\n{edge.head}\r\n".encode())
        status, _, headers = await read_head(reader)
        assert status == 200
        await reader.readexactly(int(dict(headers)["content-length"]))
        (connection,) = set(edge.stack.relay.tenants.connections) - before
        connection.head_timeout = head_timeout  # the real one is 300 s
        for delay in delays:
            started = asyncio.get_running_loop().time()
            writer.write(f"GET /slow?seconds={delay} HTTP/1.1\r\n{edge.head}\r\n".encode())
            async with asyncio.timeout(10):
                status, _, headers = await read_head(reader)
                await reader.readexactly(int(dict(headers)["content-length"]))
            took = asyncio.get_running_loop().time() - started
            statuses.append(status)
    finally:
        writer.close()
    return statuses, took


async def test_a_home_that_does_not_start_its_answer_in_time_gets_a_504(edge: Edge) -> None:
    """The response-head deadline is the connection's one timer, set per request."""
    statuses, took = await _slow_exchange(edge, 0.5, [3.0])
    assert statuses == [504]
    assert 0.4 <= took <= 2.5, took
    await edge.assert_still_serving()


async def test_the_response_head_deadline_counts_from_each_request(edge: Edge) -> None:
    """Answers within the deadline, one after another for longer than the deadline: a
    deadline left over from an earlier request must never cut a later one."""
    statuses, _ = await _slow_exchange(edge, 0.8, [0.3, 0.3, 0.3, 0.3])
    assert statuses == [200, 200, 200, 200]


async def _two_requests(edge: Edge, first: str, second: str) -> tuple[int, int]:
    """Two requests on one keep-alive connection: their statuses."""
    port, ca = edge.stack.config.listen_port, edge.stack.ca_path
    reader, writer = await connect(port, edge.sni, ca)
    statuses = []
    try:
        for head in (first, second):
            writer.write(f"GET /echo?twice HTTP/1.1\r\n{head}\r\n".encode())
            async with asyncio.timeout(10):
                status, _, headers = await read_head(reader)
                await reader.readexactly(int(dict(headers)["content-length"]))
            statuses.append(status)
    finally:
        writer.close()
    return statuses[0], statuses[1]


async def test_a_changed_cookie_on_the_same_connection_is_checked_again(edge: Edge) -> None:
    """The connection keeps its last session token (no hash per request), never past a
    Cookie header that changed: another token, or none, is judged on its own."""
    host = f"Host: {edge.authority}\r\n"
    forged = f"{host}Cookie: {SESSION_COOKIE}={'x' * 43}\r\n"
    assert await _two_requests(edge, edge.head, forged) == (200, 401)
    assert await _two_requests(edge, edge.head, host) == (200, 401)
    assert await _two_requests(edge, forged, edge.head) == (401, 200)


async def test_a_changed_host_on_the_same_connection_is_checked_again(edge: Edge) -> None:
    """The connection keeps its last Host's label, never past a Host header that changed."""
    other = edge.authority.replace(edge.sni.split(".", 1)[0], "a" * 26, 1)
    cookie = f"Cookie: {SESSION_COOKIE}={edge.token}\r\n"
    assert await _two_requests(edge, edge.head, f"Host: {other}\r\n{cookie}") == (200, 421)


# ---------------------------------------------------- a misbehaving add-on


def _settings() -> bytes:
    return TunnelConnection(Role.ADDON).data_to_send()


GARBAGE: dict[str, Callable[[], bytes]] = {
    # Not even a frame header that makes sense: a 4 GiB length.
    "noise": lambda: b"\xff" * 64,
    # SETTINGS first, as required, then a frame type nobody defined.
    "unknown-frame-type": lambda: _settings() + struct.pack(">IBBI", 5, 0xEE, 0, 0) + b"hello",
    # Well-formed frame for a stream the relay never opened.
    "idle-stream": lambda: _settings() + encode_frame(FrameType.DATA, 7, b"surprise"),
    # A frame larger than the negotiated maximum, announced before its payload.
    "oversized-frame": lambda: _settings() + struct.pack(">IBBI", 10 * 1024 * 1024, 3, 0, 1),
}


@pytest.mark.parametrize("case", list(GARBAGE))
async def test_garbage_on_a_tunnel_closes_only_that_tunnel(edge: Edge, case: str) -> None:
    stack = edge.stack
    key, instance_id = await linked_key(stack, f"broken-{case}@example.com")
    async with raw_tunnel(stack, key) as tunnel:
        assert tunnel.welcome.instance_id == instance_id
        async with asyncio.timeout(5):
            while (session := stack.relay.hub.tunnel_for(instance_id)) is None:
                await asyncio.sleep(0.02)
        await tunnel.ws.send_bytes(GARBAGE[case]())
        # The relay explains itself in a GOAWAY, then closes the WebSocket.
        decoder = TunnelConnection(Role.ADDON)
        goaways: list[GoAwayReceived] = []
        async with asyncio.timeout(5):
            async for msg in tunnel.ws:
                if msg.type is aiohttp.WSMsgType.BINARY:
                    events = decoder.receive_data(msg.data)
                    goaways += [e for e in events if isinstance(e, GoAwayReceived)]
        assert tunnel.ws.closed
        assert goaways, "the relay must say why it closes the tunnel"
        assert goaways[-1].code in (ErrorCode.PROTOCOL, ErrorCode.FRAME_SIZE), goaways[-1]
        assert goaways[-1].reason

    async with asyncio.timeout(5):
        while instance_id in stack.relay.hub.tunnels:
            await asyncio.sleep(0.02)
    assert session.closed.is_set()
    assert session.close_reason.startswith("protocol error: "), session.close_reason
    # The well-behaved home on the same relay never noticed.
    assert stack.relay.hub.tunnel_for(stack.instance_id) is not None
    await edge.assert_still_serving()


async def _misbehave(edge: Edge, email: str, send: Callable[[RawTunnel], Awaitable[None]]) -> str:
    """Run a linked raw tunnel, let ``send`` misbehave on it; returns the relay's close reason."""
    stack = edge.stack
    key, instance_id = await linked_key(stack, email)
    async with raw_tunnel(stack, key) as tunnel:
        async with asyncio.timeout(5):
            while (session := stack.relay.hub.tunnel_for(instance_id)) is None:
                await asyncio.sleep(0.02)
        await send(tunnel)
        async with asyncio.timeout(5):
            async for _msg in tunnel.ws:
                pass
        assert tunnel.ws.closed
    async with asyncio.timeout(5):
        while instance_id in stack.relay.hub.tunnels:
            await asyncio.sleep(0.02)
    assert session.closed.is_set()
    assert stack.relay.hub.tunnel_for(stack.instance_id) is not None
    await edge.assert_still_serving()
    return session.close_reason


async def test_text_on_a_tunnel_closes_only_that_tunnel(edge: Edge) -> None:
    async def chat(tunnel: RawTunnel) -> None:
        await tunnel.ws.send_str("hello, is this thing on?")

    reason = await _misbehave(edge, "chatty@example.com", chat)
    assert reason == "unexpected text message on the tunnel"


async def test_oversized_tunnel_message_closes_only_that_tunnel(edge: Edge) -> None:
    """A WebSocket message over the tunnel's limit (1 MiB) is never buffered whole."""

    async def bulk(tunnel: RawTunnel) -> None:
        await tunnel.ws.send_bytes(b"\x00" * (4 * 1024 * 1024))

    reason = await _misbehave(edge, "bulky@example.com", bulk)
    assert reason.startswith("transport error: "), reason
    assert "1048576" in reason or "too big" in reason.lower(), reason


async def test_relay_answers_every_host_after_all_that(edge: Edge, tmp_path: Path) -> None:
    """Last in the module: the account site and the tunnel of the real add-on are unharmed."""
    stack = edge.stack
    async with edge.browser.request("GET", stack.account_origin + "/") as r:
        assert r.status < 500
    assert stack.relay.hub.tunnel_for(stack.instance_id) is not None
    assert stack.addon.status.connects == 1, "the well-behaved add-on never had to reconnect"
    await edge.assert_still_serving()
