"""The add-on's remote-access switch through real sockets: relay, tunnel, add-on, stand-in.

Switching off refuses every new stream with the add-on's own 503 page and cuts
open HTTP streams and WebSockets at once, while the tunnel stays connected.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from stack import start_stack

from homeport.addon.gate import SWITCHED_OFF_CLOSE, RemoteAccessGate

pytestmark = pytest.mark.timeout(90)

OFF_TEXT = "switched remote access off in the Homeport add-on"


async def test_switch_cuts_everything_at_once_and_keeps_the_tunnel(tmp_path: Path) -> None:
    gate = RemoteAccessGate(tmp_path / "gate")
    async with (
        start_stack(tmp_path, addon_kwargs={"gate": gate}) as stack,
        stack.browser() as browser,
    ):
        await browser.sign_in("/")
        origin = stack.tenant_origin
        tunnel = stack.relay.hub.tunnel_for(stack.instance_id)
        connects = stack.addon.status.connects
        ws = await browser.session.ws_connect(
            origin.replace("https://", "wss://") + "/ws/echo", origin=origin
        )
        await ws.send_str("hello")
        assert (await ws.receive(timeout=10)).data == "hello"
        # A long response in flight: 1000 events, one every 50 ms.
        sse = await browser.request("GET", origin + "/sse?count=1000&interval=0.05").__aenter__()
        assert sse.status == 200
        first = await asyncio.wait_for(sse.content.readline(), 10)
        assert first.startswith(b"id: 0")
        assert gate.open_streams == 2

        gate.set_enabled(False)
        gate.set_enabled(False)  # a second click before the cut streams have unwound

        closed = await ws.receive(timeout=10)
        assert closed.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == SWITCHED_OFF_CLOSE
        assert closed.extra == "Remote access is switched off in the add-on"
        with pytest.raises(aiohttp.ClientPayloadError):  # cut, never completed
            await asyncio.wait_for(_read_all(sse), 10)
        sse.release()

        async with browser.request("GET", origin + "/bytes/10") as r:
            assert r.status == 503
            assert r.headers["Content-Type"] == "text/html; charset=utf-8"
            assert OFF_TEXT in await r.text()
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await browser.session.ws_connect(
                origin.replace("https://", "wss://") + "/ws/echo", origin=origin
            )
        assert refused.value.status == 503

        # The tunnel never dropped: switching on again is instant.
        assert stack.relay.hub.tunnel_for(stack.instance_id) is tunnel
        assert stack.addon.status.connects == connects
        gate.set_enabled(True)
        async with browser.request("GET", origin + "/bytes/10") as r:
            assert r.status == 200
            assert len(await r.read()) == 10
        await ws.close()

        recent = gate.access_log.recent()
        assert [a.status for a in recent[:3]] == [200, 503, 503]
        assert {a.route for a in recent} >= {"/bytes/…", "/sse", "/ws/…"}
        assert all("?" not in a.route for a in recent)
        assert all(a.remote == "127.0.0.1" for a in recent)


async def test_switched_off_state_survives_an_addon_restart(tmp_path: Path) -> None:
    RemoteAccessGate(tmp_path / "gate").set_enabled(False)
    gate = RemoteAccessGate(tmp_path / "gate")
    async with (
        start_stack(tmp_path, addon_kwargs={"gate": gate}) as stack,
        stack.browser() as browser,
    ):
        page = await browser.sign_in("/")
        assert page.status == 503
        assert OFF_TEXT in await page.text()
        assert gate.access_log.recent()[0].status == 503


async def _read_all(response: aiohttp.ClientResponse) -> int:
    received = 0
    while line := await response.content.readline():
        received += len(line)
    return received
