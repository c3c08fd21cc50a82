"""RFC 6455 framing at the relay, on raw frames a browser library would never send.

The relay reads a whole, unfragmented, masked data frame at a frame boundary
itself (the common case) and hands everything else to the ``websockets``
library's parser.  These cases drive both paths through real sockets and the
real relay and add-on (the stand-in echoes): sizes at every length encoding,
frames split across reads and several in one read (the relay must always know
where the library's parser is), fragments with a ping between them, and the
errors each path must answer exactly as the library does: no mask, a reserved
bit, invalid UTF-8, a message over the size limit, stray continuations.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from rawhttp import connect, read_head
from stack import Stack, start_stack
from websockets.frames import Frame, Opcode

from homeport.relay.proxy import exchange
from homeport.relay.tenant import SESSION_COOKIE

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Site:
    stack: Stack
    token: str

    @property
    def authority(self) -> str:
        return self.stack.tenant_origin.removeprefix("https://")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    async with start_stack(tmp_path_factory.mktemp("wsframes")) as stack, stack.browser() as b:
        await b.sign_in("/")
        jar = {c.key: c.value for c in b.session.cookie_jar}
        yield Site(stack, jar[SESSION_COOKIE])


class Socket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, *chunks: bytes, pause: float = 0.02) -> None:
        """Each chunk in its own write (and so, most likely, its own read at the relay)."""
        for chunk in chunks:
            self.writer.write(chunk)
            await self.writer.drain()
            if len(chunks) > 1:
                await asyncio.sleep(pause)

    async def frame(self) -> tuple[int, bool, bytes]:
        """The next frame from the relay: (opcode, fin, payload); a server never masks."""
        async with asyncio.timeout(10):
            first, second = await self.reader.readexactly(2)
            assert not second & 0x80, "a server frame must not be masked"
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return first & 0x0F, bool(first & 0x80), await self.reader.readexactly(length)

    async def closed_with(self) -> int:
        """The relay's close code, then the connection ends."""
        opcode, _, payload = await self.frame()
        assert opcode == Opcode.CLOSE
        async with asyncio.timeout(10):
            assert await self.reader.read() == b""
        return int(struct.unpack("!H", payload[:2])[0])


@contextlib.asynccontextmanager
async def open_ws(site: Site) -> AsyncIterator[Socket]:
    """A WebSocket to the stand-in's echo, upgraded by hand on a raw TLS connection."""
    sni = site.authority.rsplit(":", 1)[0]
    reader, writer = await connect(site.stack.config.listen_port, sni, site.stack.ca_path)
    writer.write(
        (
            f"GET /ws/echo HTTP/1.1\r\nHost: {site.authority}\r\n"
            f"Cookie: {SESSION_COOKIE}={site.token}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {site.stack.tenant_origin}\r\n\r\n"
        ).encode()
    )
    status, _, _ = await read_head(reader)
    assert status == 101
    try:
        yield Socket(reader, writer)
    finally:
        writer.close()


@pytest_asyncio.fixture(loop_scope="module")
async def ws(site: Site) -> AsyncIterator[Socket]:
    async with open_ws(site) as socket:
        yield socket


def client_frame(opcode: Opcode, payload: bytes, *, fin: bool = True) -> bytes:
    """A frame as a browser sends it (masked), serialised by the library itself."""
    return Frame(opcode, payload, fin).serialize(mask=True, extensions=[])


@pytest.mark.parametrize("size", [0, 1, 125, 126, 1000, 65535, 65536, 200_000])
@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY])
async def test_whole_frames_of_every_length_encoding_echo(
    ws: Socket, size: int, opcode: Opcode
) -> None:
    payload = (b"x" * size) if opcode is Opcode.TEXT else bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]
    for _ in range(2):
        await ws.send(client_frame(opcode, payload))
        assert await ws.frame() == (opcode, True, payload)


async def test_frames_split_across_reads_and_batched_in_one(ws: Socket) -> None:
    """Wherever the reads cut the stream, every message arrives once, whole and in order."""
    frames = [client_frame(Opcode.TEXT, f"message {i}".encode() * 20) for i in range(6)]
    await ws.send(b"".join(frames[:3]))  # three in one read
    split = frames[3]
    await ws.send(split[:1], split[1:3], split[3:7], split[7:])  # one cut in four reads
    await ws.send(frames[4] + frames[5][:5], frames[5][5:])  # one and a half, then the rest
    await ws.send(client_frame(Opcode.TEXT, b"whole again"))  # at a boundary once more
    for i in range(6):
        assert await ws.frame() == (Opcode.TEXT, True, f"message {i}".encode() * 20)
    assert await ws.frame() == (Opcode.TEXT, True, b"whole again")


async def test_a_payload_that_looks_like_a_frame_is_never_read_as_one(ws: Socket) -> None:
    """The second read is exactly a whole masked text frame's bytes, but it is the payload
    of the frame whose header came in the first read (a zero mask keeps it readable)."""
    inner = client_frame(Opcode.TEXT, b"not a frame")
    outer = bytes([0x82, 0x80 | len(inner)]) + b"\0\0\0\0" + inner
    await ws.send(outer[:6], outer[6:])
    assert await ws.frame() == (Opcode.BINARY, True, inner)
    await ws.send(inner)
    assert await ws.frame() == (Opcode.TEXT, True, b"not a frame")


async def test_a_fragmented_message_with_a_ping_between_is_joined(ws: Socket) -> None:
    await ws.send(
        client_frame(Opcode.TEXT, b"hel", fin=False),
        client_frame(Opcode.PING, b"are you there"),
        client_frame(Opcode.CONT, "lo \u00e9".encode()[:4], fin=False),
        client_frame(Opcode.CONT, "lo \u00e9".encode()[4:]),
    )
    assert await ws.frame() == (Opcode.PONG, True, b"are you there")
    assert await ws.frame() == (Opcode.TEXT, True, "hello \u00e9".encode())
    await ws.send(client_frame(Opcode.BINARY, b"\x00after"))
    assert await ws.frame() == (Opcode.BINARY, True, b"\x00after")


async def test_the_browsers_close_is_answered(ws: Socket) -> None:
    await ws.send(client_frame(Opcode.CLOSE, struct.pack("!H", 1000) + b"bye"))
    assert await ws.closed_with() == 1000


def _unmasked(opcode: Opcode, payload: bytes) -> bytes:
    return Frame(opcode, payload).serialize(mask=False, extensions=[])


def _reserved_bit(frame: bytes) -> bytes:
    return bytes([frame[0] | 0x40]) + frame[1:]


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        pytest.param([_unmasked(Opcode.TEXT, b"hi")], 1002, id="unmasked"),
        # The length leaves out 4 bytes, so the bytes add up as a masked frame's.
        pytest.param([bytes([0x81, 2]) + b"hi" + b"\0\0\0\0"], 1002, id="unmasked-fits-masked"),
        pytest.param([_reserved_bit(client_frame(Opcode.TEXT, b"hi"))], 1002, id="rsv1"),
        pytest.param([client_frame(Opcode.TEXT, b"bad \xff\xfe utf-8")], 1007, id="utf-8"),
        pytest.param([client_frame(Opcode.CONT, b"stray")], 1002, id="stray-continuation"),
        pytest.param(
            [client_frame(Opcode.TEXT, b"a", fin=False), client_frame(Opcode.TEXT, b"b")],
            1002,
            id="new-message-inside-a-fragmented-one",
        ),
        pytest.param([bytes([0x83, 0x80]) + b"mask"], 1002, id="unknown-opcode"),
    ],
)
async def test_bad_frames_close_with_the_librarys_code(
    ws: Socket, frames: list[bytes], code: int
) -> None:
    await ws.send(*frames)
    assert await ws.closed_with() == code


@pytest.mark.parametrize("split", [False, True])
async def test_a_message_over_the_size_limit_is_refused(
    site: Site, monkeypatch: pytest.MonkeyPatch, split: bool
) -> None:
    """1009, whether the frame comes whole (the relay's own path) or in pieces (the library's)."""
    monkeypatch.setattr(exchange, "MAX_WS_MESSAGE", 1000)
    async with open_ws(site) as socket:
        await socket.send(client_frame(Opcode.BINARY, b"a" * 1000))
        assert await socket.frame() == (Opcode.BINARY, True, b"a" * 1000)
        too_big = client_frame(Opcode.BINARY, b"a" * 1001)
        await socket.send(*([too_big[:3], too_big[3:]] if split else [too_big]))
        assert await socket.closed_with() == 1009
