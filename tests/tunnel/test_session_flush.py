"""TunnelSession after each flush: finished streams are pruned, blocked writers woken.

Two real sessions over a real aiohttp WebSocket on 127.0.0.1 (``session_pair``), no mocks.
"""

from __future__ import annotations

import asyncio

from session_pair import session_pair

from homeport.protocol.heads import RequestHead, ResponseHead
from homeport.tunnel.session import TunnelSession
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
            assert stream._host.connection.buffered(stream.id) <= HIGH_WATER + PIECE
        await stream.write(b"", end=True)
    else:
        stream.respond(ResponseHead(200))
        await stream.write(stream.request.target.encode(), end=True)


async def _get(session: TunnelSession, path: str) -> bytes:
    stream = session.open_stream(RequestHead("GET", path), websocket=False, end_stream=True)
    head = await stream.response_head()
    assert head.status == 200
    body = bytearray()
    async for chunk in stream.iter_body():
        body += chunk
    return bytes(body)


async def test_bulk_writer_is_woken_and_finished_streams_are_pruned() -> None:
    async with asyncio.timeout(60), session_pair(on_stream=_handler) as pair:
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
