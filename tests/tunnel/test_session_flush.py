"""TunnelSession after each flush: finished streams are pruned, blocked writers woken.

Two real sessions over a real aiohttp WebSocket on 127.0.0.1, no mocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from homeport.protocol.connection import Role, TunnelConnection
from homeport.protocol.heads import RequestHead, ResponseHead
from homeport.tunnel.session import MAX_MESSAGE, TunnelSession
from homeport.tunnel.stream import HIGH_WATER, Stream

BIG = 8 * 1024 * 1024
PIECE = 64 * 1024
SMALL_STREAMS = 40


async def _handler(stream: Stream) -> None:
    """The add-on side: /big streams BIG bytes in pieces, anything else a short body."""
    assert stream.request is not None
    if stream.request.target == "/big":
        stream.respond(ResponseHead(200))
        piece = b"\xa5" * PIECE
        for _ in range(BIG // PIECE):
            await stream.write(piece)
            # Backpressure holds: a writer never gets far past the high-water mark.
            assert stream._session.connection.buffered(stream.id) <= HIGH_WATER + PIECE
        await stream.write(b"", end=True)
    else:
        stream.respond(ResponseHead(200))
        await stream.write(stream.request.target.encode(), end=True)


@dataclass
class Pair:
    relay: TunnelSession
    addon: TunnelSession


@asynccontextmanager
async def tunnel() -> AsyncIterator[Pair]:
    relay_side: asyncio.Future[TunnelSession] = asyncio.get_running_loop().create_future()
    served = asyncio.Event()

    async def endpoint(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, compress=False)
        await ws.prepare(request)
        session = TunnelSession(ws, TunnelConnection(Role.RELAY), name="test-relay")
        relay_side.set_result(session)
        await session.run()
        served.set()
        return ws

    app = web.Application()
    app.router.add_get("/t", endpoint)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as client:
        ws = await client.ws_connect(f"http://127.0.0.1:{port}/t", max_msg_size=MAX_MESSAGE)
        addon = TunnelSession(ws, TunnelConnection(Role.ADDON), on_stream=_handler, name="t-add")
        addon_task = asyncio.create_task(addon.run())
        relay = await asyncio.wait_for(relay_side, 10)
        try:
            yield Pair(relay, addon)
        finally:
            await addon.close("test over")
            await asyncio.wait_for(addon_task, 10)
            await asyncio.wait_for(served.wait(), 10)
    await runner.cleanup()


async def _get(session: TunnelSession, path: str) -> bytes:
    stream = session.open_stream(RequestHead("GET", path), websocket=False, end_stream=True)
    head = await stream.response
    assert head.status == 200
    body = bytearray()
    async for chunk in stream.iter_body():
        body += chunk
    return bytes(body)


async def test_bulk_writer_is_woken_and_finished_streams_are_pruned() -> None:
    async with asyncio.timeout(60), tunnel() as pair:
        big = asyncio.create_task(_get(pair.relay, "/big"))
        # Short streams open and finish while the bulk writer keeps blocking.
        for number in range(SMALL_STREAMS):
            assert await _get(pair.relay, f"/s{number}") == f"/s{number}".encode()
        body = await big
        assert len(body) == BIG
        assert body == b"\xa5" * BIG
        # One more exchange so both writers flush after the last stream ended.
        assert await _get(pair.relay, "/last") == b"/last"
        for _ in range(100):
            if not (pair.relay.streams or pair.addon.streams):
                break
            await asyncio.sleep(0.01)
        assert pair.relay.streams == {}
        assert pair.addon.streams == {}
        assert pair.relay.connection.open_streams == 0
        assert pair.addon.connection.open_streams == 0
        # No writer is left registered as blocked once its stream is done.
        assert not pair.addon._blocked_writers
        assert not pair.relay._blocked_writers
