"""RFC 6455 framing at the add-on, on raw frames from Home Assistant's side.

The add-on reads a whole, unfragmented, unmasked data frame at a frame
boundary itself (``homeport.websocket_frames``, the common case) and hands
everything else to the ``websockets`` library's parser, the mirror of the
relay's reading of the browser (``test_websocket_framing.py``).  A stand-in
Home Assistant accepts the WebSocket and then writes, on command, raw bytes
straight to its socket: sizes at every length encoding, frames split across
writes and several in one (the add-on must always know where the library's
parser is), a fragmented message with a ping between, and the errors the
library answers (a masked frame from a server, a reserved bit, invalid UTF-8,
a stray continuation, a message over the size limit).  What arrives is read by
a signed-in browser through the real relay and add-on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from stack import Browser, Stack, start_stack
from websockets.frames import Frame, Opcode

from homeport.standin import build_app

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def raw_frames(request: web.Request) -> web.WebSocketResponse:
    """Accept, then for each command write its chunks raw to the socket, one write each."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    transport = request.transport
    assert transport is not None
    async for message in ws:
        if message.type is not aiohttp.WSMsgType.TEXT:
            continue
        for chunk in json.loads(message.data):
            transport.write(bytes.fromhex(chunk))
            await asyncio.sleep(0.02)
    return ws


@dataclass
class Home:
    stack: Stack
    browser: Browser


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def home(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Home]:
    app = build_app()
    app.router.add_get("/ws/raw", raw_frames)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    backend = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with (
            start_stack(tmp_path_factory.mktemp("wshome"), ha_url=backend) as stack,
            stack.browser() as browser,
        ):
            await browser.sign_in("/")
            yield Home(stack, browser)
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="module")
async def ws(home: Home) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    origin = home.stack.tenant_origin
    socket = await home.browser.session.ws_connect(
        origin.replace("https://", "wss://") + "/ws/raw", origin=origin, max_msg_size=0
    )
    try:
        yield socket
    finally:
        await socket.close()


async def home_sends(ws: aiohttp.ClientWebSocketResponse, *chunks: bytes) -> None:
    """Home Assistant writes these bytes raw, each chunk in its own write."""
    await ws.send_str(json.dumps([chunk.hex() for chunk in chunks]))


async def received(ws: aiohttp.ClientWebSocketResponse) -> tuple[aiohttp.WSMsgType, object]:
    message = await ws.receive(timeout=10)
    return message.type, message.data


def server_frame(opcode: Opcode, payload: bytes, *, fin: bool = True) -> bytes:
    """A frame as a server sends it (not masked), serialised by the library itself."""
    return Frame(opcode, payload, fin).serialize(mask=False, extensions=[])


TEXT, BINARY, CLOSE = aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.CLOSE


@pytest.mark.parametrize("size", [0, 1, 125, 126, 1000, 65535, 65536, 200_000])
async def test_whole_frames_of_every_length_encoding_arrive(
    ws: aiohttp.ClientWebSocketResponse, size: int
) -> None:
    text = ("y" * size)[:size]
    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    for _ in range(2):
        await home_sends(ws, server_frame(Opcode.TEXT, text.encode()))
        assert await received(ws) == (TEXT, text)
        await home_sends(ws, server_frame(Opcode.BINARY, data))
        assert await received(ws) == (BINARY, data)


async def test_frames_split_across_reads_and_batched_in_one(
    ws: aiohttp.ClientWebSocketResponse,
) -> None:
    frames = [server_frame(Opcode.TEXT, f"message {i}".encode() * 20) for i in range(6)]
    split = frames[3]
    await home_sends(
        ws,
        b"".join(frames[:3]),  # three in one read
        split[:1],  # one cut in four reads
        split[1:3],
        split[3:7],
        split[7:],
        frames[4] + frames[5][:5],  # one and a half, then the rest
        frames[5][5:],
        server_frame(Opcode.TEXT, b"whole again"),  # at a boundary once more
    )
    for i in range(6):
        assert await received(ws) == (TEXT, f"message {i}" * 20)
    assert await received(ws) == (TEXT, "whole again")


async def test_a_payload_that_looks_like_a_frame_is_never_read_as_one(
    ws: aiohttp.ClientWebSocketResponse,
) -> None:
    inner = server_frame(Opcode.TEXT, b"not a frame")
    outer = server_frame(Opcode.BINARY, inner)
    await home_sends(ws, outer[:2], outer[2:])
    assert await received(ws) == (BINARY, inner)
    await home_sends(ws, inner)
    assert await received(ws) == (TEXT, "not a frame")


async def test_a_fragmented_message_with_a_ping_between_is_joined(
    ws: aiohttp.ClientWebSocketResponse,
) -> None:
    word = "lo \u00e9".encode()
    await home_sends(
        ws,
        server_frame(Opcode.TEXT, b"hel", fin=False),
        server_frame(Opcode.PING, b"are you there"),
        server_frame(Opcode.CONT, word[:4], fin=False),
        server_frame(Opcode.CONT, word[4:]),
        server_frame(Opcode.BINARY, b"\x00after"),
    )
    assert await received(ws) == (TEXT, "hello \u00e9")
    assert await received(ws) == (BINARY, b"\x00after")


def _masked(opcode: Opcode, payload: bytes) -> bytes:
    return Frame(opcode, payload).serialize(mask=True, extensions=[])


def _reserved_bit(frame: bytes) -> bytes:
    return bytes([frame[0] | 0x40]) + frame[1:]


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        pytest.param([_masked(Opcode.TEXT, b"hi")], 1002, id="masked-by-a-server"),
        # The length counts the mask key too, so the bytes add up as an unmasked frame's.
        pytest.param([bytes([0x81, 0x80 | 6]) + b"\0\0\0\0hi"], 1002, id="masked-fits-unmasked"),
        pytest.param([_reserved_bit(server_frame(Opcode.TEXT, b"hi"))], 1002, id="rsv1"),
        pytest.param([server_frame(Opcode.TEXT, b"bad \xff\xfe utf-8")], 1007, id="utf-8"),
        pytest.param([server_frame(Opcode.CONT, b"stray")], 1002, id="stray-continuation"),
        pytest.param(
            [server_frame(Opcode.TEXT, b"a", fin=False), server_frame(Opcode.TEXT, b"b")],
            1002,
            id="new-message-inside-a-fragmented-one",
        ),
        pytest.param([bytes([0x82, 127]) + (17 * 2**20).to_bytes(8, "big")], 1009, id="too-big"),
    ],
)
async def test_bad_frames_from_home_assistant_close_with_the_librarys_code(
    ws: aiohttp.ClientWebSocketResponse, frames: list[bytes], code: int
) -> None:
    await home_sends(ws, server_frame(Opcode.TEXT, b"before"), *frames)
    assert await received(ws) == (TEXT, "before")
    kind, _ = await received(ws)
    assert kind is CLOSE
    assert ws.close_code == code
