"""The panel's app-link pages on real sockets, asking a relay side over a real tunnel.

The panel runs on loopback (loopback is its allowed peer, as in test_panel.py);
the add-on half of the request is the real ``addon/app_links.py`` over two
real sessions (``session_pair``), whose relay side answers with scripted
replies, so every answer the relay can give is shown as it should be.
The whole path through the real relay is ``tests/e2e/test_panel_app_link.py``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from session_pair import SessionPair, session_pair

from homeport.addon import app_links
from homeport.addon.client import AddonStatus, State
from homeport.addon.gate import RemoteAccessGate
from homeport.addon.panel import Panel, PanelSources
from homeport.protocol.connection import Settings
from homeport.tunnel.session import TunnelSession

ACCOUNT = "https://homeport.example"
INGRESS_HOST = "homeassistant.local:8123"
INGRESS = {"X-Forwarded-Host": INGRESS_HOST, "Origin": f"http://{INGRESS_HOST}"}
INSTANCE = "k3n5p7r9t2v4x6z8b1d3f5h7j9"
LINK = "https://abcdefghijklmnopqrstuvwxyz234567.home.example"


class TunnelMaker:
    """The add-on client's two app-link methods, over one session (what AddonClient does)."""

    def __init__(self, session: TunnelSession) -> None:
        self.session = session

    def app_links_supported(self) -> bool | None:
        return app_links.supported(self.session)

    async def create_app_link(self, name: str) -> app_links.CreatedAppLink:
        return await app_links.create_app_link(self.session, name, timeout=15)


@dataclass
class Relay:
    """The relay side's answers: ``reply(body)`` for each request; what it was asked."""

    reply: Callable[[dict[str, Any]], dict[str, Any]] = lambda body: {
        "url": LINK,
        "name": body["name"],
    }
    asked: list[dict[str, Any]] = field(default_factory=list)
    hold: asyncio.Event | None = None

    async def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        self.asked.append(body)
        if self.hold is not None:
            await self.hold.wait()
        return self.reply(body)


@dataclass
class Running:
    url: str
    status: AddonStatus
    relay: Relay
    pair: SessionPair


@asynccontextmanager
async def running_panel(tmp_path: Path, *, capable: bool = True) -> AsyncIterator[Running]:
    relay = Relay()
    settings = Settings(accept_control=True) if capable else None
    async with session_pair(on_control=relay, relay_settings=settings) as pair:
        async with asyncio.timeout(10):
            while not pair.addon.connection.peer_settings_received:
                await asyncio.sleep(0.01)
        status = AddonStatus(
            state=State.CONNECTED, instance_id=INSTANCE, public_url="https://x.home.example"
        )
        panel = Panel(
            PanelSources(
                status=lambda: status,
                gate=RemoteAccessGate(tmp_path),
                trust=None,
                ha_how="Home Assistant at http://127.0.0.1:8123 (configured)",
                account_origin=ACCOUNT,
                app_links=TunnelMaker(pair.addon),
            ),
            allowed_peers=("127.0.0.1",),
        )
        await panel.start("127.0.0.1", 0)
        try:
            yield Running(f"http://127.0.0.1:{panel.port}", status, relay, pair)
        finally:
            await panel.stop()


async def fetch(
    run: Running, method: str, path: str, **kwargs: Any
) -> tuple[aiohttp.ClientResponse, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, run.url + path, allow_redirects=False, **kwargs) as r,
    ):
        return r, await r.text()


async def token(run: Running) -> str:
    _r, html = await fetch(run, "GET", "/")  # the same per-process token on every form
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found[1]


async def create(
    run: Running, name: str, *, headers: dict[str, str] | None = None, csrf: str | None = None
) -> tuple[aiohttp.ClientResponse, str]:
    data = {"name": name, "csrf": csrf if csrf is not None else await token(run)}
    return await fetch(run, "POST", "/app-links", data=data, headers=headers or INGRESS)


async def test_the_panel_offers_it_once_connected(tmp_path: Path) -> None:
    async with running_panel(tmp_path) as run:
        _r, html = await fetch(run, "GET", "/")
        assert 'id="app-links-open"' in html
        assert 'href="app-links"' in html  # relative: stays under the ingress path
        r, html = await fetch(run, "GET", "/app-links")
        assert r.status == 200
        assert r.headers["Cache-Control"] == "no-store"
        assert 'http-equiv="refresh"' not in html  # would drop what the person typed
        assert '<label for="app-link-name">Device name</label>' in html
        assert 'id="app-link-create"' in html

        run.status.state = State.DISCONNECTED
        _r, html = await fetch(run, "GET", "/")
        assert 'id="companion"' not in html
        _r, html = await fetch(run, "GET", "/app-links")
        assert 'id="app-links-offline"' in html
        assert 'id="app-link-create"' not in html


async def test_creating_shows_the_qr_and_the_url_once(tmp_path: Path) -> None:
    async with running_panel(tmp_path) as run:
        r, html = await create(run, "Anna's phone")
        assert r.status == 200, html
        assert run.relay.asked == [{"op": "create_app_link", "name": "Anna's phone"}]
        assert r.headers["Cache-Control"] == "no-store"
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        assert "script-src 'self';" in r.headers["Content-Security-Policy"]
        assert "<script" not in html  # this page polls nothing: no script at all
        assert 'http-equiv="refresh"' not in html
        qr = re.search(r'<div class="qr" id="app-link-qr">(.*?)</div>', html, re.S)
        assert qr is not None
        assert qr[1].startswith("<svg")
        assert "style=" not in qr[1]  # the strict CSP has no inline style
        assert f'id="app-link-url" class="copy" value="{LINK}" readonly' in html
        assert "App link for Anna&#39;s phone" in html
        assert "shown only this once" in html
        assert f'href="{ACCOUNT}/instances/{INSTANCE}"' in html  # revoke it there
        assert "Enter address manually" in html


async def test_post_needs_same_origin_and_the_token(tmp_path: Path) -> None:
    async with running_panel(tmp_path) as run:
        good = await token(run)
        refused = [
            (good, {"X-Forwarded-Host": INGRESS_HOST}),
            (good, {"X-Forwarded-Host": INGRESS_HOST, "Origin": "https://evil.example"}),
            (good, {**INGRESS, "Sec-Fetch-Site": "cross-site"}),
            ("0" * len(good), INGRESS),
        ]
        for csrf, headers in refused:
            r, _ = await create(run, "phone", headers=headers, csrf=csrf)
            assert r.status == 403, headers
        assert run.relay.asked == []  # nothing reached the relay


async def test_bad_names_never_reach_the_relay(tmp_path: Path) -> None:
    async with running_panel(tmp_path) as run:
        for name in ("", "   ", "x" * 201):
            r, html = await create(run, name)
            assert r.status == 400
            assert 'id="app-link-error"' in html
        assert run.relay.asked == []


async def test_the_relays_refusals_are_shown_clearly(tmp_path: Path) -> None:
    async with running_panel(tmp_path) as run:
        cases = [
            ({"error": "too_many", "message": "Too many <b>app links</b>."}, 429),
            ({"error": "invalid", "message": "The name must be 1 to 64 characters."}, 400),
            ({"error": "limit", "message": "A home can have at most 20 app links."}, 409),
            ({"error": "unlinked", "message": "No longer linked."}, 502),
            ({"url": "javascript:alert(1)", "name": "x"}, 502),
        ]
        for reply, status in cases:
            run.relay.reply = lambda body, reply=reply: reply  # type: ignore[misc]
            r, html = await create(run, "Kitchen tablet")
            assert r.status == status, html
            assert 'id="app-link-qr"' not in html
            assert 'value="Kitchen tablet"' in html  # kept in the form for another try
            if "message" in reply:
                assert str(reply["message"]).replace("<", "&lt;").replace(">", "&gt;") in html
            else:
                assert "not understood" in html
                assert "javascript:" not in html
        assert "<b>" not in html


async def test_a_relay_without_the_capability_gets_the_account_site(tmp_path: Path) -> None:
    async with running_panel(tmp_path, capable=False) as run:
        _r, html = await fetch(run, "GET", "/")
        assert "does not support creating app links here; use the account site" in html
        assert 'id="app-links-open"' not in html
        _r, html = await fetch(run, "GET", "/app-links")
        assert 'id="app-links-unsupported"' in html
        assert 'id="app-link-create"' not in html
        r, html = await create(run, "phone")
        assert r.status == 501
        assert "use the account site" in html
        await asyncio.sleep(0.2)
        assert not run.pair.relay.ended  # no CONTROL frame went out to end the tunnel
        assert not run.pair.addon.ended


async def test_the_tunnel_dropping_mid_request_gives_an_answer(tmp_path: Path) -> None:
    async with running_panel(tmp_path) as run:
        run.relay.hold = asyncio.Event()
        csrf = await token(run)
        creating = asyncio.create_task(create(run, "phone", csrf=csrf))
        async with asyncio.timeout(10):
            while not run.relay.asked:
                await asyncio.sleep(0.01)
        await run.pair.relay.close("relay restarting")
        r, html = await asyncio.wait_for(creating, 20)
        assert r.status == 504
        assert "No answer from the relay" in html
        assert "tunnel closed" in html
