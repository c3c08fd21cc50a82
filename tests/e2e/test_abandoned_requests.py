"""A person who gives up at any phase never takes the home offline (R-MT-15, issue #9.1).

Through real sockets: a browser (or the companion app, over an app link)
closes its connection before the response head, during a WebSocket
upgrade, mid-download, mid-upload and mid-WebSocket; then the home answers
after all.  Each time the relay's tunnel for the home is the same one as
before (never dropped, the add-on never reconnected), the stream count on
both sides returns to zero, and the next request works.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import pytest_asyncio
from phase_backend import Phases, phase_backend
from rawhttp import connect, read_head
from stack import Browser, Stack, start_stack

from homeport.relay.tenant import SESSION_COOKIE
from homeport.tunnel.session import TunnelSession

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]


@dataclass
class Home:
    stack: Stack
    phases: Phases
    browser: Browser
    cookie: str
    app_link_host: str

    def host(self, via: str) -> str:
        if via == "app link":
            return self.app_link_host
        return self.stack.tenant_origin.removeprefix("https://").rsplit(":", 1)[0]

    def head(self, via: str, method: str, path: str, extra: str = "") -> bytes:
        cookie = f"Cookie: {SESSION_COOKIE}={self.cookie}\r\n" if via == "session" else ""
        host = f"{self.host(via)}{self.stack.config.port_suffix}"
        return (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{cookie}{extra}\r\n").encode()

    def relay_tunnel(self) -> TunnelSession:
        tunnel = self.stack.relay.hub.tunnel_for(self.stack.instance_id)
        assert tunnel is not None
        return tunnel

    async def open(self, via: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await connect(self.stack.config.listen_port, self.host(via), self.stack.ca_path)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def home(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Home]:
    async with (
        phase_backend() as (phases, url),
        start_stack(tmp_path_factory.mktemp("abandon"), ha_url=url) as stack,
        stack.browser() as browser,
    ):
        await browser.sign_in("/fine")
        jar = {c.key: c.value for c in browser.session.cookie_jar}
        owner = await stack.relay.accounts.get_user_by_email(stack.email)
        assert owner is not None
        label, _ = await stack.relay.accounts.sharing.create_app_link(
            owner.id, stack.instance_id, "phone"
        )
        host = f"{label}.{stack.config.tenant_domain}"
        yield Home(stack, phases, browser, jar[SESSION_COOKIE], host)


def _ws_upgrade(home: Home, via: str, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    origin = f"https://{home.host(via)}{home.stack.config.port_suffix}"
    return home.head(
        via,
        "GET",
        path,
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n",
    )


def _masked_text(text: bytes) -> bytes:
    mask = os.urandom(4)
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    return struct.pack(">BB", 0x81, 0x80 | len(text)) + mask + payload


async def _before_head(home: Home, via: str) -> None:
    _, writer = await home.open(via)
    writer.write(home.head(via, "GET", "/hold-head"))
    await home.phases.seen("head").wait()
    writer.transport.abort()


async def _during_upgrade(home: Home, via: str) -> None:
    _, writer = await home.open(via)
    writer.write(_ws_upgrade(home, via, "/ws/hold-upgrade"))
    await home.phases.seen("upgrade").wait()
    writer.transport.abort()


async def _mid_download(home: Home, via: str) -> None:
    reader, writer = await home.open(via)
    writer.write(home.head(via, "GET", "/endless"))
    status, _, _ = await read_head(reader)
    assert status == 200
    await reader.readexactly(256 * 1024)
    writer.transport.abort()
    await home.phases.done("body").wait()  # the home stopped sending


async def _mid_upload(home: Home, via: str) -> None:
    _, writer = await home.open(via)
    writer.write(home.head(via, "POST", "/upload", f"Content-Length: {64 * 1024 * 1024}\r\n"))
    writer.write(b"u" * (1024 * 1024))
    await writer.drain()
    await home.phases.seen("upload").wait()
    writer.transport.abort()
    await home.phases.done("upload").wait()  # Home Assistant saw the upload cut


async def _mid_websocket(home: Home, via: str) -> None:
    reader, writer = await home.open(via)
    writer.write(_ws_upgrade(home, via, "/ws/echo"))
    status, _, _ = await read_head(reader)
    assert status == 101
    writer.write(_masked_text(b"hello"))
    assert (await reader.readexactly(7))[2:] == b"hello"
    writer.transport.abort()
    await home.phases.done("websocket").wait()  # Home Assistant's WebSocket was closed


PHASES: dict[str, Callable[[Home, str], Awaitable[None]]] = {
    "before the head": _before_head,
    "during the upgrade": _during_upgrade,
    "mid-download": _mid_download,
    "mid-upload": _mid_upload,
    "mid-websocket": _mid_websocket,
}


@pytest.mark.parametrize("via", ["session", "app link"])
@pytest.mark.parametrize("phase", list(PHASES))
async def test_giving_up_never_drops_the_home(home: Home, phase: str, via: str) -> None:
    tunnel = home.relay_tunnel()
    addon_tunnel = home.stack.addon.tunnel
    connects = home.stack.addon.status.connects
    home.phases.reset()
    async with asyncio.timeout(30):
        await PHASES[phase](home, via)
        await asyncio.sleep(0.1)  # the relay notices the closed connection
        home.phases.release.set()  # ... and now the home answers after all
        # Nothing left open on either side, and nobody was disconnected.
        while tunnel.streams or tunnel.connection.open_streams:
            await asyncio.sleep(0.02)
        assert addon_tunnel is not None
        while addon_tunnel.streams or addon_tunnel.connection.open_streams:
            await asyncio.sleep(0.02)
    assert home.relay_tunnel() is tunnel
    assert home.stack.addon.tunnel is addon_tunnel
    assert home.stack.addon.status.connects == connects
    assert not tunnel.ended
    # The home still answers, by both ways in.
    async with home.browser.request("GET", home.stack.tenant_origin + "/fine") as response:
        assert response.status == 200
        assert await response.text() == "fine"
