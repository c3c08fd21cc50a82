"""Ending a session cuts what it has open: downloads stop, WebSockets close, at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from stack import Stack, start_stack


async def _read_to_end(response: aiohttp.ClientResponse) -> None:
    async with asyncio.timeout(5):
        while await response.content.read(65536):
            pass


@pytest.fixture
async def stack(tmp_path: Path):
    async with start_stack(tmp_path) as running:
        yield running


async def test_sign_out_cuts_open_streams(stack: Stack) -> None:
    async with stack.browser() as browser, stack.browser() as other:
        await browser.sign_in("/")
        await other.sign_in("/")  # a second person's browser, signed in separately
        ws_url = stack.tenant_origin.replace("https://", "wss://") + "/ws/echo"
        ws = await browser.session.ws_connect(ws_url, origin=stack.tenant_origin)
        other_ws = await other.session.ws_connect(ws_url, origin=stack.tenant_origin)
        await ws.send_str("before")
        assert await ws.receive_str() == "before"
        # A long event stream that would run for a minute.
        sse = await browser.request("GET", stack.tenant_origin + "/sse?count=600&interval=0.1")
        await sse.__aenter__()
        assert (await sse.content.readuntil(b"\n\n")).startswith(b"id: 0")

        async with browser.request(
            "POST", stack.account_origin + "/signout", headers={"Origin": stack.account_origin}
        ) as r:
            assert r.status == 303
        signed_out = time.monotonic()

        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1008
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
            await _read_to_end(sse)
        assert time.monotonic() - signed_out < 3
        await sse.__aexit__(None, None, None)
        await ws.close()

        # The other browser's session was not the one that ended: it carries on.
        await other_ws.send_str("still here")
        assert await other_ws.receive_str() == "still here"
        await other_ws.close()
        # And the signed-out browser can no longer open anything.
        async with browser.request("GET", stack.tenant_origin + "/api/") as r:
            assert r.status == 401
