"""Open traffic through the relay for revocation tests: a WebSocket and a streaming response."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from stack import Browser

#: Plenty of events, so the stream is still open whenever the test looks (100 s).
SSE_PATH = "/sse?count=2000&interval=0.05"


class OpenTraffic:
    """A WebSocket and a streaming response held open through the relay by one browser."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.sse_task: asyncio.Task[int] | None = None
        self.ws_task: asyncio.Task[aiohttp.WSMessage] | None = None

    async def open(self) -> None:
        stack = self.browser.stack
        url = stack.tenant_origin.replace("https://", "wss://") + "/ws/echo"
        self.ws = await self.browser.session.ws_connect(url, origin=stack.tenant_origin)
        await self.ws.send_str("hello")
        assert (await self.ws.receive(timeout=20)).data == "hello"
        self.ws_task = asyncio.create_task(self.ws.receive())
        started = asyncio.Event()
        self.sse_task = asyncio.create_task(self._read_sse(started))
        async with asyncio.timeout(20):
            await started.wait()

    async def _read_sse(self, started: asyncio.Event) -> int:
        events = 0
        stack = self.browser.stack
        try:
            async with self.browser.request("GET", stack.tenant_origin + SSE_PATH) as r:
                assert r.status == 200
                async for line in r.content:
                    if line.startswith(b"data:"):
                        events += 1
                        started.set()
        except aiohttp.ClientError:
            pass  # a cut connection: what revocation does
        return events

    async def ended(self, within: float) -> aiohttp.WSMessage:
        """Both ended within ``within`` seconds; the WebSocket's closing message."""
        assert self.ws_task is not None
        assert self.sse_task is not None
        async with asyncio.timeout(within):
            message = await self.ws_task
            await self.sse_task
        return message

    def still_open(self) -> bool:
        assert self.ws_task is not None
        assert self.sse_task is not None
        return not self.ws_task.done() and not self.sse_task.done()

    async def close(self) -> None:
        for task in (self.ws_task, self.sse_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                    await task
        if self.ws is not None:
            await self.ws.close()
