"""One exchange's fate never reaches the tunnel (R-MT-15).

A waiter that gives up (a browser that closes its tab during a WebSocket
upgrade, a timeout) must release its stream, and a later event for that
stream must not end the tunnel for everybody else using the home.
"""

from __future__ import annotations

import asyncio

from session_pair import session_pair

from homeport.protocol.heads import RequestHead, ResponseHead
from homeport.tunnel.stream import Stream


async def test_an_abandoned_upgrade_answered_later_leaves_the_tunnel_up() -> None:
    answer = asyncio.Event()

    async def handler(stream: Stream) -> None:
        await answer.wait()
        stream.respond(ResponseHead(101))
        await stream.receive_ws()

    async with asyncio.timeout(20), session_pair(on_stream=handler) as pair:
        stream = pair.relay.open_stream(
            RequestHead("GET", "/api/websocket"), websocket=True, end_stream=False
        )
        waiter = asyncio.create_task(stream.response_head())
        await asyncio.sleep(0.05)
        waiter.cancel()  # the browser closed the tab
        await asyncio.sleep(0.05)
        answer.set()  # Home Assistant answers after all
        await asyncio.sleep(0.2)
        assert not pair.relay.ended
        assert not pair.relay.closed.is_set()
        # Another exchange still works.
        other = pair.relay.open_stream(
            RequestHead("GET", "/api/websocket"), websocket=True, end_stream=False
        )
        assert (await other.response_head()).status == 101
