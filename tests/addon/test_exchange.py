"""The add-on's callback exchanges, through a real tunnel to a scripted Home Assistant.

Two real :class:`TunnelSession` objects (``session_pair``), the add-on side
served by :class:`HomeAssistantForwarder` (``on_open``: no task per stream),
and a Home Assistant stand-in scripted byte by byte (``scripted_ha``) so that
it can misbehave on purpose: a head with CR/LF, a body cut short, garbage, a
dead kept-alive connection, an upgrade with the wrong accept key.  Each time
the relay side sees the stream reset (its 502 page) and the tunnel carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import uvloop
from scripted_ha import Conn, ScriptedHA, keep_alive, response, scripted_ha
from session_pair import SessionPair, session_pair
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State
from websockets.utils import accept_key

from homeport.addon.forward import HomeAssistantForwarder
from homeport.addon.gate import RemoteAccessGate
from homeport.addon.upstream import Origin, UpstreamPool
from homeport.protocol import ErrorCode, RequestHead
from homeport.tunnel.stream import Stream, StreamClosed, WsClose, WsMessage

pytestmark = pytest.mark.timeout(60)


#: The stand-in's own WebSocket logs nothing (it is not under test for privacy).
_QUIET = logging.getLogger("tests.scripted_ha.websocket")
_QUIET.setLevel(logging.WARNING)


@contextlib.asynccontextmanager
async def served(
    ha: ScriptedHA, *, gate: RemoteAccessGate | None = None, trusted: bool = True
) -> AsyncIterator[tuple[SessionPair, UpstreamPool]]:
    pool = UpstreamPool(Origin.parse(ha.url))
    forwarder = HomeAssistantForwarder(pool, gate=gate, send_forwarded=lambda: trusted)
    try:
        async with session_pair(on_open=forwarder.open) as pair:
            yield pair, pool
    finally:
        await pool.close()


def open_request(
    pair: SessionPair,
    method: str = "GET",
    target: str = "/x",
    headers: list[tuple[str, str]] | None = None,
    *,
    body: bool = False,
    websocket: bool = False,
) -> Stream:
    head = RequestHead(method, target, headers or [("x-forwarded-for", "203.0.113.7")])
    return pair.relay.open_stream(head, websocket=websocket, end_stream=not body and not websocket)


async def read_all(stream: Stream) -> bytes:
    return b"".join([chunk async for chunk in stream.iter_body()])


async def get(pair: SessionPair, target: str = "/x") -> tuple[int, bytes]:
    with open_request(pair, target=target) as stream:
        async with asyncio.timeout(10):
            head = await stream.response_head()
            return head.status, await read_all(stream)


async def refused(stream: Stream) -> ErrorCode:
    """The code the relay side sees when the add-on resets the stream."""
    with stream, pytest.raises(StreamClosed) as closed:
        await asyncio.wait_for(_whole_answer(stream), 10)
    return closed.value.code


async def _whole_answer(stream: Stream) -> bytes:
    await stream.response_head()
    return await read_all(stream)


async def _read_until_closed(stream: Stream, received: bytearray) -> None:
    while chunk := await stream.read():
        received += chunk


async def wait_until(condition: object) -> None:
    async with asyncio.timeout(5):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)


# ------------------------------------------------------------------- HTTP


async def test_requests_share_one_kept_alive_connection_and_are_written_canonically() -> None:
    async with scripted_ha(keep_alive) as ha, served(ha, trusted=False) as (pair, pool):
        for _ in range(3):
            assert await get(pair, "/api/states?x=1") == (200, b"ok")
        assert ha.connections == 1
        assert pool.idle == 1
        first = ha.seen[0]
        assert first.line == b"GET /api/states?x=1 HTTP/1.1"
        assert first.header("host") == ha.url.removeprefix("http://")
        assert first.header("x-forwarded-for") is None  # Home Assistant does not trust us yet
        await wait_until(lambda: pair.relay.connection.open_streams == 0)
        assert pair.addon.connection.open_streams == 0


async def test_response_fields_and_priority_come_back() -> None:
    async def camera(conn: Conn) -> None:
        await conn.request()
        await conn.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=f\r\n"
            b"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
            b"Location: " + ha.url.encode() + b"//evil.example/\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"
        )
        await keep_alive(conn)

    async with scripted_ha(camera) as ha, served(ha) as (pair, _):
        with open_request(pair) as stream:
            async with asyncio.timeout(10):
                head = await stream.response_head()
                assert await read_all(stream) == b"abcd"
        assert head.headers == [
            ("content-type", "multipart/x-mixed-replace; boundary=f"),
            ("location", "/evil.example/"),
        ]


async def test_request_bodies_keep_their_length_or_go_chunked() -> None:
    async def echo_body(conn: Conn) -> None:
        while (request := await conn.request()) is not None:
            await conn.send(response(200, request.body))

    async with scripted_ha(echo_body) as ha, served(ha) as (pair, _):
        with open_request(pair, "POST", headers=[("content-length", "10")], body=True) as stream:
            await stream.write(b"hello")
            await stream.write(b"world", end=True)
            async with asyncio.timeout(10):
                assert (await stream.response_head()).status == 200
                assert await read_all(stream) == b"helloworld"
        with open_request(pair, "POST", body=True) as stream:
            await stream.write(b"a" * 70_000)
            await stream.write(b"b", end=True)
            async with asyncio.timeout(10):
                assert await read_all(stream) == b"a" * 70_000 + b"b"
        with open_request(pair, "POST", headers=[("content-length", "0")], body=False) as stream:
            async with asyncio.timeout(10):
                assert (await stream.response_head()).status == 200
        fixed, chunked, empty = ha.seen
        assert (fixed.header("content-length"), fixed.header("transfer-encoding")) == ("10", None)
        assert (chunked.header("content-length"), chunked.header("transfer-encoding")) == (
            None,
            "chunked",
        )
        assert empty.header("content-length") == "0"
        assert ha.connections == 1


@pytest.mark.parametrize("split", [False, True])
async def test_a_body_longer_than_its_length_never_becomes_a_request(split: bool) -> None:
    """Smuggling: the surplus would be read as the next request on a kept-alive connection."""
    smuggled = b"GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n"
    async with scripted_ha(keep_alive) as ha, served(ha) as (pair, _):
        stream = open_request(pair, "POST", "/upload", [("content-length", "5")], body=True)
        if split:
            await stream.write(b"hel")
            await wait_until(lambda: ha.connections == 1)
            await stream.write(b"lo" + smuggled, end=True)
        else:
            await stream.write(b"hello" + smuggled, end=True)
        assert await refused(stream) is ErrorCode.BAD_REQUEST
        assert await get(pair) == (200, b"ok")
        assert b"/smuggled" not in ha.paths
        assert [r.line for r in ha.seen if b"/upload" in r.line] == (
            [b"POST /upload HTTP/1.1"] if split else []
        )


async def test_a_body_shorter_than_its_length_is_reset() -> None:
    async with scripted_ha(keep_alive) as ha, served(ha) as (pair, _):
        stream = open_request(pair, "POST", "/upload", [("content-length", "50")], body=True)
        await stream.write(b"short", end=True)
        assert await refused(stream) is ErrorCode.BAD_REQUEST
        assert await get(pair) == (200, b"ok")


async def test_connect_never_reaches_home_assistant() -> None:
    async with scripted_ha(keep_alive) as ha, served(ha) as (pair, _):
        assert await refused(open_request(pair, "CONNECT", "/x")) is ErrorCode.BAD_REQUEST
        assert ha.connections == 0
        assert await get(pair) == (200, b"ok")


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nX-Bad: a\rb\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Bad: a\nSet-Cookie: injected=1\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Nul: a\x00b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 0\r\n\r\n",
    ],
)
async def test_a_response_head_with_control_characters_is_refused(head: bytes) -> None:
    async def bad_then_good(conn: Conn) -> None:
        await conn.request()
        await conn.send(head if len(ha.seen) == 1 else response(200, b"ok"))
        await keep_alive(conn)

    async with scripted_ha(bad_then_good) as ha, served(ha) as (pair, _):
        assert await refused(open_request(pair)) is ErrorCode.UPSTREAM_UNAVAILABLE
        assert await get(pair) == (200, b"ok")
        assert ha.connections == 2  # the one that misbehaved was dropped


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n28\r\n" + b"x" * 40 + b"\r\n",
    ],
)
async def test_a_response_cut_mid_body_resets_the_stream(answer: bytes) -> None:
    async def cut(conn: Conn) -> None:
        if len(ha.seen) == 0:
            await conn.request()
            await conn.send(answer)
            return  # and hang up
        await keep_alive(conn)

    async with scripted_ha(cut) as ha, served(ha) as (pair, _):
        stream = open_request(pair)
        with stream:
            async with asyncio.timeout(10):
                assert (await stream.response_head()).status == 200
                received = bytearray()
                with pytest.raises(StreamClosed) as closed:
                    await _read_until_closed(stream, received)
        assert closed.value.code is ErrorCode.UPSTREAM_UNAVAILABLE
        assert received == b"x" * 40  # what came, never passed off as complete
        assert await get(pair) == (200, b"ok")


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 999 Whatever\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"x" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * 300 + b"Content-Length: 0\r\n\r\n",
        # Each field fits, the head does not (more than one tunnel frame).
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-%d: " % i + b"x" * 30_000 + b"\r\n" for i in range(3))
        + b"Content-Length: 0\r\n\r\n",
    ],
)
async def test_a_malformed_response_resets_the_stream_not_the_addon(answer: bytes) -> None:
    async def malformed_once(conn: Conn) -> None:
        await conn.request()
        await conn.send(answer if len(ha.seen) == 1 else response(200, b"ok"))
        await keep_alive(conn)

    async with scripted_ha(malformed_once) as ha, served(ha) as (pair, _):
        assert await refused(open_request(pair)) is ErrorCode.UPSTREAM_UNAVAILABLE
        assert await get(pair) == (200, b"ok")
        assert not pair.addon.ended


async def test_home_assistant_unreachable_resets_the_stream() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    pool = UpstreamPool(Origin.parse(f"http://127.0.0.1:{port}"))
    try:
        async with session_pair(on_open=HomeAssistantForwarder(pool).open) as pair:
            assert await refused(open_request(pair)) is ErrorCode.UPSTREAM_UNAVAILABLE
            websocket = open_request(pair, websocket=True)
            assert await refused(websocket) is ErrorCode.UPSTREAM_UNAVAILABLE
    finally:
        await pool.close()


async def test_a_dead_kept_alive_connection_is_retried_once_for_a_safe_request() -> None:
    async def dies_after_first(conn: Conn) -> None:
        await conn.request()
        await conn.send(response(200, b"ok"))
        if await conn.request() is not None and ha.connections == 1:
            return  # closed under the second request, without a word
        await keep_alive(conn)

    async with scripted_ha(dies_after_first) as ha, served(ha) as (pair, _):
        assert await get(pair) == (200, b"ok")
        assert await get(pair) == (200, b"ok")
        assert ha.connections == 2


async def test_a_request_waiting_for_its_body_moves_off_a_connection_that_died() -> None:
    """Its head waits for the body's first bytes, so Home Assistant never saw it: it goes
    again on a fresh connection, whatever its method."""
    hang_up = asyncio.Event()

    async def first_dies_idle(conn: Conn) -> None:
        if ha.connections == 1:
            await conn.request()
            await conn.send(response(200, b"ok"))
            await hang_up.wait()
            return
        await keep_alive(conn, response(201, b"made"))

    async with scripted_ha(first_dies_idle) as ha, served(ha) as (pair, pool):
        assert await get(pair) == (200, b"ok")
        stream = open_request(pair, "POST", headers=[("content-length", "2")], body=True)
        await wait_until(lambda: pool.idle == 0)  # the POST holds the kept-alive connection
        hang_up.set()
        await asyncio.sleep(0.1)
        await stream.write(b"go", end=True)
        with stream:
            async with asyncio.timeout(10):
                assert (await stream.response_head()).status == 201
        assert [r.line for r in ha.seen].count(b"POST /x HTTP/1.1") == 1
        assert ha.connections == 2


async def test_an_unsafe_request_is_never_sent_twice() -> None:
    async def dies_after_first(conn: Conn) -> None:
        await conn.request()
        await conn.send(response(200, b"ok"))
        await conn.request()  # the POST: Home Assistant may have acted on it

    async with scripted_ha(dies_after_first) as ha, served(ha) as (pair, _):
        assert await get(pair) == (200, b"ok")
        stream = open_request(pair, "POST", headers=[("content-length", "2")], body=True)
        await stream.write(b"go", end=True)
        assert await refused(stream) is ErrorCode.UPSTREAM_UNAVAILABLE
        assert [r.line for r in ha.seen].count(b"POST /x HTTP/1.1") == 1


async def test_a_head_request_ends_at_its_head() -> None:
    async def head_answer(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")

    async with scripted_ha(head_answer) as ha, served(ha) as (pair, _):
        with open_request(pair, "HEAD") as stream:
            async with asyncio.timeout(10):
                head = await stream.response_head()
                assert await read_all(stream) == b""
        assert ("content-length", "100") in head.headers
        with open_request(pair, "HEAD") as stream:
            async with asyncio.timeout(10):
                await stream.response_head()
        assert ha.connections == 2  # never reused: llhttp would wait for those 100 bytes


async def test_an_early_answer_stops_the_upload_and_drops_the_connection() -> None:
    async def refuses_early(conn: Conn) -> None:
        await conn.reader.readuntil(b"\r\n\r\n")
        await conn.send(response(413, b"too big"))
        while await conn.reader.read(65536):
            pass

    async with scripted_ha(refuses_early) as ha, served(ha) as (pair, pool):
        stream = open_request(pair, "POST", headers=[("content-length", "1000000")], body=True)
        with stream:
            await stream.write(b"x" * 1000)
            async with asyncio.timeout(10):
                assert (await stream.response_head()).status == 413
                assert await read_all(stream) == b"too big"
        await wait_until(lambda: pool.total == 0)  # the request was never sent in full
        await wait_until(lambda: pair.addon.connection.open_streams == 0)


async def test_the_switch_answers_503_before_any_head_and_drops_the_connection(
    tmp_path: Path,
) -> None:
    asked = asyncio.Event()

    async def never_answers(conn: Conn) -> None:
        await conn.request()
        asked.set()
        await conn.reader.read()  # until the add-on lets go

    gate = RemoteAccessGate(tmp_path)
    async with scripted_ha(never_answers) as ha, served(ha, gate=gate) as (pair, pool):
        with open_request(pair, target="/api/states/light.x?secret=1") as stream:
            await asyncio.wait_for(asked.wait(), 10)
            assert gate.open_streams == 1
            gate.set_enabled(False)
            async with asyncio.timeout(10):
                head = await stream.response_head()
                page = await read_all(stream)
        assert head.status == 503
        assert b"switched off" in page
        assert gate.open_streams == 0
        await wait_until(lambda: pool.total == 0)
        await wait_until(lambda: not ha.open_connections)
        with open_request(pair) as stream:
            async with asyncio.timeout(10):
                assert (await stream.response_head()).status == 503
        assert ha.connections == 1
        entries = gate.access_log.recent()
        assert [(e.status, e.route, e.remote) for e in entries] == [
            (503, "/x", "203.0.113.7"),
            (503, "/api/…", "203.0.113.7"),
        ]


# -------------------------------------------------------------- WebSocket


def websocket_home(
    *,
    accept: str | None = None,
    protocol: str | None = None,
    extra: bytes = b"",
    after: str = "echo",
) -> object:
    """A scripted Home Assistant WebSocket endpoint (``after``: echo, close, or ping)."""

    async def script(conn: Conn) -> None:
        request = await conn.request()
        assert request is not None
        key = request.header("sec-websocket-key")
        assert key is not None
        lines = [
            b"HTTP/1.1 101 Switching Protocols",
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Accept: " + (accept or accept_key(key)).encode(),
        ]
        if protocol is not None:
            lines.append(b"Sec-WebSocket-Protocol: " + protocol.encode())
        await conn.send(b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n")
        ws = Protocol(Side.SERVER, state=State.OPEN, max_size=2**24, logger=_QUIET)
        if after == "close":
            ws.send_close(4000, "bye")
        elif after == "ping":
            ws.send_ping(b"are you there")
        await conn.send(b"".join(ws.data_to_send()))
        while data := await conn.reader.read(65536):
            ws.receive_data(data)
            for frame in ws.events_received():
                assert isinstance(frame, Frame)
                conn.seen_frames.append(frame)  # type: ignore[attr-defined]
                if frame.opcode is Opcode.TEXT and after == "echo":
                    ws.send_text(frame.data)
                elif frame.opcode is Opcode.BINARY and after == "echo":
                    ws.send_binary(frame.data)
            out = ws.data_to_send()
            await conn.send(b"".join(out))
            if b"" in out or ws.state is State.CLOSED:
                return

    return script


@contextlib.asynccontextmanager
async def websocket_ha(**kwargs: object) -> AsyncIterator[tuple[ScriptedHA, list[Frame]]]:
    frames: list[Frame] = []
    inner = websocket_home(**kwargs)  # type: ignore[arg-type]

    async def script(conn: Conn) -> None:
        conn.seen_frames = frames  # type: ignore[attr-defined]
        await inner(conn)  # type: ignore[operator]

    async with scripted_ha(script) as ha:
        yield ha, frames


def ws_request(pair: SessionPair, protocols: str = "") -> Stream:
    headers = [("x-forwarded-for", "203.0.113.7"), ("origin", "https://home.example")]
    if protocols:
        headers.append(("sec-websocket-protocol", protocols))
    return open_request(pair, "GET", "/api/websocket", headers, websocket=True)


async def test_websocket_messages_both_ways_then_the_close() -> None:
    async with websocket_ha(protocol="b") as (ha, frames), served(ha) as (pair, _):
        with ws_request(pair, "a, b") as stream:
            async with asyncio.timeout(10):
                head = await stream.response_head()
                assert head.status == 101
                assert head.headers == [("sec-websocket-protocol", "b")]
                await stream.send_ws(b"hello", text=True)
                assert await stream.receive_ws() == WsMessage(b"hello", True)
                big = bytes(range(256)) * 4096
                await stream.send_ws(big, text=False)
                assert await stream.receive_ws() == WsMessage(big, False)
                stream.close_ws(1000, "done")
                assert await stream.receive_ws() == WsClose(1000, "")
        request = ha.seen[0]
        assert request.header("sec-websocket-protocol") == "a, b"
        assert request.header("upgrade") == "websocket"
        assert frames[-1].opcode is Opcode.CLOSE
        await wait_until(lambda: pair.addon.connection.open_streams == 0)
        await wait_until(lambda: not ha.open_connections)


async def test_home_assistant_closing_its_websocket_closes_the_stream() -> None:
    async with websocket_ha(after="close") as (ha, _), served(ha) as (pair, _):
        with ws_request(pair) as stream:
            async with asyncio.timeout(10):
                assert (await stream.response_head()).status == 101
                assert await stream.receive_ws() == WsClose(4000, "")
                stream.close_ws(4000, "")
        await wait_until(lambda: pair.addon.connection.open_streams == 0)


async def test_pings_from_home_assistant_are_answered() -> None:
    async with websocket_ha(after="ping") as (ha, frames), served(ha) as (pair, _):
        with ws_request(pair) as stream:
            async with asyncio.timeout(10):
                assert (await stream.response_head()).status == 101
                await wait_until(lambda: any(f.opcode is Opcode.PONG for f in frames))
                stream.close_ws(1000, "")
        [pong] = [f for f in frames if f.opcode is Opcode.PONG]
        assert pong.data == b"are you there"


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"accept": "dGhlIHNhbXBsZSBub25jZQ=="}, "an accept key for another key"),
        ({"protocol": "c"}, "a subprotocol nobody offered"),
        ({"extra": b"Sec-WebSocket-Extensions: permessage-deflate\r\n"}, "an extension"),
    ],
)
async def test_an_upgrade_answered_wrongly_is_refused(kwargs: dict[str, object], why: str) -> None:
    async with websocket_ha(**kwargs) as (ha, frames), served(ha) as (pair, _):
        code = await refused(ws_request(pair, "a, b"))
        assert code is ErrorCode.UPSTREAM_UNAVAILABLE, why
        await wait_until(lambda: not ha.open_connections)
        assert frames == []


async def test_a_refused_upgrade_keeps_home_assistants_status() -> None:
    async def forbidden(conn: Conn) -> None:
        await conn.request()
        await conn.send(response(403, b"no"))
        await conn.reader.read()

    async with scripted_ha(forbidden) as ha, served(ha) as (pair, _):
        with ws_request(pair) as stream:
            async with asyncio.timeout(10):
                assert (await stream.response_head()).status == 403
        await wait_until(lambda: not ha.open_connections)
        await wait_until(lambda: pair.addon.connection.open_streams == 0)


async def test_no_websocket_frame_reaches_a_log(caplog: pytest.LogCaptureFixture) -> None:
    marker = b"relayed-secret-7f3a"
    caplog.set_level(logging.DEBUG)
    async with websocket_ha() as (ha, _), served(ha) as (pair, _):
        with ws_request(pair) as stream:
            async with asyncio.timeout(10):
                assert (await stream.response_head()).status == 101
                await stream.send_ws(marker, text=True)
                assert (await stream.receive_ws()) == WsMessage(marker, True)
                stream.close_ws(1000, "")
                await stream.receive_ws()
    assert caplog.records, "the positive control: debug logging was on"
    assert marker.decode() not in caplog.text
    for record in caplog.records:
        assert marker.decode() not in str(record.__dict__)


# ----------------------------------------------------------------- uvloop

ON_UVLOOP = [
    test_requests_share_one_kept_alive_connection_and_are_written_canonically,
    test_request_bodies_keep_their_length_or_go_chunked,
    test_a_dead_kept_alive_connection_is_retried_once_for_a_safe_request,
    test_an_early_answer_stops_the_upload_and_drops_the_connection,
    test_websocket_messages_both_ways_then_the_close,
    test_home_assistant_closing_its_websocket_closes_the_stream,
]


@pytest.mark.parametrize("case", ON_UVLOOP, ids=lambda case: case.__name__)
def test_on_uvloop(case: Callable[[], Awaitable[None]]) -> None:
    """The add-on runs on uvloop, whose transports are not asyncio's: the same cases there."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(case())  # type: ignore[arg-type]
