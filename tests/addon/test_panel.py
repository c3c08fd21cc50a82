"""The ingress panel on a real loopback socket: who may open it, CSRF, what it shows."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from homeport.addon.client import AddonStatus, State
from homeport.addon.gate import Access, RemoteAccessGate
from homeport.addon.ha_trust import Trust, TrustMonitor, TrustReport
from homeport.addon.panel import Panel, PanelSources

ACCOUNT = "https://homeport.example"
INGRESS_HOST = "homeassistant.local:8123"


@dataclass
class Running:
    panel: Panel
    gate: RemoteAccessGate
    status: AddonStatus
    trust: TrustMonitor
    url: str


async def _start(tmp_path: Path, allowed: tuple[str, ...]) -> tuple[Running, Panel]:
    status = AddonStatus()
    gate = RemoteAccessGate(tmp_path)
    trust = TrustMonitor("http://homeassistant:8123", supervised=True)
    panel = Panel(
        PanelSources(
            status=lambda: status,
            gate=gate,
            trust=trust,
            ha_how="Supervisor: Home Assistant Core at http://homeassistant:8123",
            account_origin=ACCOUNT,
        ),
        allowed_peers=allowed,
    )
    await panel.start("127.0.0.1", 0)
    return Running(panel, gate, status, trust, f"http://127.0.0.1:{panel.port}"), panel


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    run, panel = await _start(tmp_path, ("127.0.0.1",))
    try:
        yield run
    finally:
        await panel.stop()


async def _page(run: Running) -> tuple[aiohttp.ClientResponse, str]:
    async with aiohttp.ClientSession() as session, session.get(run.url + "/") as r:
        return r, await r.text()


def _token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found
    return found[1]


async def _switch(
    run: Running, enabled: str, *, token: str | None, headers: dict[str, str]
) -> aiohttp.ClientResponse:
    data = {"enabled": enabled}
    if token is not None:
        data["csrf"] = token
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            run.url + "/remote-access", data=data, headers=headers, allow_redirects=False
        ) as r,
    ):
        await r.read()
        return r


INGRESS = {"X-Forwarded-Host": INGRESS_HOST, "Origin": f"http://{INGRESS_HOST}"}


async def test_only_the_ingress_proxy_is_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run, panel = await _start(tmp_path, ("172.30.32.2",))
    try:
        with caplog.at_level(logging.WARNING, logger="homeport.addon.panel"):
            async with aiohttp.ClientSession() as session:
                # Headers claiming to be the ingress proxy prove nothing.
                spoof = {"X-Forwarded-For": "172.30.32.2", "X-Ingress-Path": "/api/hassio_ingress"}
                for method, path in (("GET", "/"), ("POST", "/remote-access"), ("GET", "/x")):
                    async with session.request(method, run.url + path, headers=spoof) as r:
                        assert r.status == 403
                        assert "Remote access" not in await r.text()
        refused = [r for r in caplog.records if r.getMessage() == "addon.panel_refused"]
        assert len(refused) == 3
        assert refused[0].peer == "127.0.0.1"  # type: ignore[attr-defined]
        assert run.gate.enabled  # nothing changed
    finally:
        await panel.stop()


async def test_page_runs_only_its_own_script_with_strict_headers(running: Running) -> None:
    running.status.state = State.CONNECTED
    running.status.public_url = "https://abc123.home.example"
    r, html = await _page(running)
    assert r.status == 200
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    # Only the panel's own script (the state poll), no inline script, nothing foreign.
    assert "script-src 'self';" in csp
    assert "connect-src 'self';" in csp
    assert "unsafe-inline" not in csp
    assert re.findall(r"<script[^>]*>", html) == ['<script src="static/panel.js" defer>']
    assert "frame-ancestors 'self'" in csp
    assert r.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Cache-Control"] == "no-store"
    assert 'href="static/panel.css"' in html  # relative: works under any ingress path
    assert "Connected" in html
    assert 'id="public-url">https://abc123.home.example<' in html
    for label in re.findall(r"<(?:input|button)[^>]*>", html):
        assert 'type="hidden"' in label or "<button" in label
    async with (
        aiohttp.ClientSession() as session,
        session.get(running.url + "/static/panel.css") as css,
    ):
        text = await css.text()
        assert css.headers["Content-Type"] == "text/css; charset=utf-8"
    for variable in ("--primary-color", "--card-background-color", "--primary-text-color"):
        assert f"var({variable}," in text
    assert "prefers-color-scheme: dark" in text


async def test_unlinked_shows_the_code_and_the_account_site(running: Running) -> None:
    running.status.state = State.UNLINKED
    running.status.link_code = "ABCDE-FGHJK"
    running.status.link_expires_in = 600
    _r, html = await _page(running)
    assert 'id="link-code">ABCDE-FGHJK<' in html
    # "Open the account site" lands on the link form with this code filled in (#13).
    button = html.split('id="link-button"')[0].split("<a ")[-1]
    assert f'href="{ACCOUNT}/link?code=ABCDE-FGHJK"' in button


async def test_error_state_shows_the_reason_escaped(running: Running) -> None:
    running.status.state = State.DISCONNECTED
    running.status.last_error = "relay certificate not trusted: <b>expired</b>"
    _r, html = await _page(running)
    assert "relay certificate not trusted: &lt;b&gt;expired&lt;/b&gt;" in html


async def test_untrusted_home_assistant_gets_the_yaml_and_the_ban_warning(
    running: Running,
) -> None:
    running.trust.report = TrustReport(
        Trust.UNTRUSTED,
        "http://homeassistant:8123",
        seen_as="172.30.33.5",
        proxies=("172.30.32.0/23",),
        detail="Home Assistant does not trust the add-on as a proxy",
    )
    _r, html = await _page(running)
    assert 'id="ban-warning"' in html
    assert "use_x_forwarded_for: true" in html
    assert "- 172.30.32.0/23" in html
    running.trust.report = TrustReport(Trust.TRUSTED, "http://homeassistant:8123", detail="fine")
    _r, html = await _page(running)
    assert 'id="ban-warning"' not in html


async def test_accesses_are_listed_without_paths_or_queries(running: Running) -> None:
    running.gate.access_log.add(Access(0.0, "POST", "/api/webhook/…", 200, "198.51.100.7", False))
    _r, html = await _page(running)
    assert "POST /api/webhook/…" in html
    assert "198.51.100.7" in html
    assert "1970-01-01 00:00:00 UTC" in html
    assert "it sees the add-on" in html  # trust not confirmed yet
    running.trust.report = TrustReport(Trust.TRUSTED, "http://homeassistant:8123", detail="ok")
    _r, html = await _page(running)
    assert "it sees the add-on" not in html


async def test_switch_needs_same_origin_and_the_token(running: Running) -> None:
    _r, html = await _page(running)
    token = _token(html)
    refused = [
        (token, {"X-Forwarded-Host": INGRESS_HOST}),  # no Origin, no Referer
        (token, {"X-Forwarded-Host": INGRESS_HOST, "Origin": "https://evil.example"}),
        (token, {"X-Forwarded-Host": INGRESS_HOST, "Origin": "null"}),
        (token, {**INGRESS, "Sec-Fetch-Site": "cross-site"}),
        ("0" * len(token), INGRESS),
        (None, INGRESS),
    ]
    for bad_token, headers in refused:
        r = await _switch(running, "off", token=bad_token, headers=headers)
        assert r.status == 403, headers
        assert running.gate.enabled
    r = await _switch(running, "maybe", token=token, headers=INGRESS)
    assert r.status == 400
    r = await _switch(running, "off", token=token, headers=INGRESS)
    assert r.status == 303
    assert r.headers["Location"] == "./"
    assert not running.gate.enabled
    _r, html = await _page(running)
    assert "Remote access is <strong>off</strong>" in html
    # Referer works as well as Origin (some browsers omit Origin on same-origin POSTs).
    referer = {"X-Forwarded-Host": INGRESS_HOST, "Referer": f"http://{INGRESS_HOST}/hassio/x"}
    r = await _switch(running, "on", token=token, headers=referer)
    assert r.status == 303
    assert running.gate.enabled


async def test_switch_without_ingress_uses_the_host(running: Running) -> None:
    """Standalone: no X-Forwarded-Host, so Origin must match the panel's own Host."""
    _r, html = await _page(running)
    origin = {"Origin": running.url}
    r = await _switch(running, "off", token=_token(html), headers=origin)
    assert r.status == 303
    assert not running.gate.enabled
