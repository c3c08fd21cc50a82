"""A backend whose answers wait at each phase until the test says so.

For tests that give up on a request at a chosen moment (before the response
head, during a WebSocket upgrade, mid-body, mid-upload, mid-WebSocket) and
then let the home answer after all: the answer must find nobody waiting and
be dropped with its stream, never take the tunnel down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

CHUNK = 64 * 1024
#: A body that never ends in practice, but the loop is still bounded.
ENDLESS_CHUNKS = 16 * 1024


@dataclass
class Phases:
    """What the backend has seen, and the gate that holds its answers."""

    arrived: dict[str, asyncio.Event] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    finished: dict[str, asyncio.Event] = field(default_factory=dict)

    def seen(self, name: str) -> asyncio.Event:
        return self.arrived.setdefault(name, asyncio.Event())

    def done(self, name: str) -> asyncio.Event:
        return self.finished.setdefault(name, asyncio.Event())

    def reset(self) -> None:
        self.arrived.clear()
        self.finished.clear()
        self.release = asyncio.Event()


def build_app(phases: Phases) -> web.Application:
    async def hold_head(request: web.Request) -> web.Response:
        phases.seen("head").set()
        await phases.release.wait()
        phases.done("head").set()
        return web.Response(text="late answer")

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        phases.seen("body").set()
        try:
            for _ in range(ENDLESS_CHUNKS):
                await response.write(b"\xa5" * CHUNK)
        finally:
            phases.done("body").set()
        return response

    async def upload(request: web.Request) -> web.Response:
        phases.seen("upload").set()
        size = 0
        try:
            async for chunk in request.content.iter_chunked(CHUNK):
                size += len(chunk)
        finally:
            phases.done("upload").set()
        return web.Response(text=str(size))

    async def hold_upgrade(request: web.Request) -> web.WebSocketResponse:
        phases.seen("upgrade").set()
        await phases.release.wait()
        return await _echo(request, "upgrade")

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        return await _echo(request, "websocket")

    async def _echo(request: web.Request, name: str) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        phases.seen(f"{name}-open").set()
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await ws.send_str(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
        finally:
            phases.done(name).set()
        return ws

    async def fine(request: web.Request) -> web.Response:
        return web.Response(text="fine")

    app = web.Application(client_max_size=1024**3)
    app.router.add_get("/hold-head", hold_head)
    app.router.add_get("/endless", endless)
    app.router.add_post("/upload", upload)
    app.router.add_get("/ws/hold-upgrade", hold_upgrade)
    app.router.add_get("/ws/echo", websocket)
    app.router.add_get("/fine", fine)
    return app


@contextlib.asynccontextmanager
async def phase_backend() -> AsyncIterator[tuple[Phases, str]]:
    phases = Phases()
    runner = web.AppRunner(build_app(phases))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield phases, f"http://127.0.0.1:{port}"
    finally:
        phases.release.set()
        await runner.cleanup()
