"""Two real :class:`TunnelSession` objects joined by an aiohttp WebSocket on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from homeport.protocol.connection import Role, Settings, TunnelConnection
from homeport.tunnel.control import HANDLER_GRACE, ControlHandler
from homeport.tunnel.pipes import MAX_MESSAGE
from homeport.tunnel.session import StreamHandler, TunnelSession
from homeport.tunnel.stream import Stream


@dataclass
class SessionPair:
    relay: TunnelSession
    addon: TunnelSession


@asynccontextmanager
async def session_pair(
    *,
    on_stream: StreamHandler | None = None,
    on_open: Callable[[Stream], None] | None = None,
    on_control: ControlHandler | None = None,
    relay_settings: Settings | None = None,
    control_grace: float = HANDLER_GRACE,
) -> AsyncIterator[SessionPair]:
    """``on_stream`` (a task per stream) or ``on_open`` (callbacks) serves the add-on
    side; ``on_control`` answers on the relay side (its handlers may run on
    ``control_grace`` seconds after the tunnel closed)."""
    relay_side: asyncio.Future[TunnelSession] = asyncio.get_running_loop().create_future()
    served = asyncio.Event()

    async def endpoint(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, compress=False)
        await ws.prepare(request)
        connection = TunnelConnection(Role.RELAY, relay_settings)
        session = TunnelSession(
            ws, connection, on_control=on_control, name="pair-relay", control_grace=control_grace
        )
        relay_side.set_result(session)
        try:
            await session.run()
        finally:
            served.set()
        return ws

    app = web.Application()
    app.router.add_get("/t", endpoint)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as client:
            ws = await client.ws_connect(f"http://127.0.0.1:{port}/t", max_msg_size=MAX_MESSAGE)
            addon = TunnelSession(
                ws,
                TunnelConnection(Role.ADDON),
                on_stream=on_stream,
                on_open=on_open,
                name="pair-addon",
            )
            addon_task = asyncio.create_task(addon.run())
            relay = await asyncio.wait_for(relay_side, 10)
            try:
                yield SessionPair(relay, addon)
            finally:
                await addon.close("test over")
                await asyncio.wait_for(addon_task, 15)
                await asyncio.wait_for(served.wait(), 15)
    finally:
        await runner.cleanup()
