"""The panel's "trust the add-on" button against a stand-in Home Assistant on loopback.

The stand-in behaves like Home Assistant where it matters: it answers 400 to
``X-Forwarded-For`` until it restarts with a configuration.yaml that trusts
loopback, checks that file on ``POST /api/config/core/check_config`` (with the
API token), and "restarts" on ``POST /api/services/homeassistant/restart`` by
reading the file again.  The real thing: tests/e2e/test_trust_setup_home_assistant.py.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from ports import reserve_port

from homeport.addon.client import AddonStatus
from homeport.addon.gate import RemoteAccessGate
from homeport.addon.ha_trust import Trust, TrustMonitor
from homeport.addon.panel import Panel, PanelSources
from homeport.addon.trust_setup import CoreApi, Step, TrustSetup

TOKEN = "stand-in-long-lived-token"
ORIGINAL = """\
# my configuration
homeassistant:
  name: Home   # shown in the sidebar
automation: !include automations.yaml

http:
  server_port: 8123
  ip_ban_enabled: true
"""


@dataclass
class StandIn:
    config: Path
    valid: bool = True
    restarts: int = 0
    trusted: bool = False
    checks: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {TOKEN}"

    async def manifest(self, request: web.Request) -> web.Response:
        if "X-Forwarded-For" in request.headers and not self.trusted:
            return web.Response(status=400, text="400: Bad Request")
        return web.json_response({"name": "Home Assistant"})

    async def check(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.Response(status=401)
        self.checks.append(self.config.read_text())
        if self.valid:
            return web.json_response({"result": "valid", "errors": None})
        return web.json_response({"result": "invalid", "errors": "Invalid config for 'http'"})

    async def restart(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.Response(status=401)
        self.restarts += 1
        http = yaml.compose(self.config.read_text())  # what a restart would read
        text = yaml.serialize(http) if http is not None else ""
        self.trusted = "use_x_forwarded_for" in text and "127.0.0.1" in text
        return web.json_response([])


@pytest.fixture
async def standin(tmp_path: Path) -> AsyncIterator[StandIn]:
    config = tmp_path / "config" / "configuration.yaml"
    config.parent.mkdir()
    config.write_text(ORIGINAL)
    config.chmod(0o640)
    ha = StandIn(config)
    app = web.Application()
    app.router.add_get("/manifest.json", ha.manifest)
    app.router.add_post("/api/config/core/check_config", ha.check)
    app.router.add_post("/api/services/homeassistant/restart", ha.restart)
    runner = web.AppRunner(app)
    await runner.setup()
    ha.port = reserve_port()
    await web.TCPSite(runner, "127.0.0.1", ha.port).start()
    try:
        yield ha
    finally:
        await runner.cleanup()


@dataclass
class Panelled:
    setup: TrustSetup
    monitor: TrustMonitor
    url: str
    session: aiohttp.ClientSession


@pytest.fixture
async def panelled(tmp_path: Path, standin: StandIn) -> AsyncIterator[Panelled]:
    async with aiohttp.ClientSession() as session:
        monitor = TrustMonitor(standin.url, supervised=False)
        await monitor.check(session)
        assert monitor.report.trust is Trust.UNTRUSTED
        setup = TrustSetup(
            standin.config,
            CoreApi(standin.url + "/api", TOKEN),
            monitor,
            session,
            poll_interval=0.05,
            wait_timeout=10,
        )
        status = AddonStatus()
        panel = Panel(
            PanelSources(
                status=lambda: status,
                gate=RemoteAccessGate(tmp_path / "state"),
                trust=monitor,
                ha_how="Home Assistant at the stand-in (configured)",
                account_origin="https://homeport.example",
                trust_setup=setup,
            ),
            allowed_peers=("127.0.0.1",),
        )
        await panel.start("127.0.0.1", 0)
        try:
            yield Panelled(setup, monitor, f"http://127.0.0.1:{panel.port}", session)
        finally:
            await setup.close()
            await panel.stop()


async def _page(p: Panelled) -> str:
    async with p.session.get(p.url + "/") as r:
        assert r.status == 200
        return await r.text()


async def _press(p: Panelled, *, origin: str | None = None, confirm: str = "yes") -> int:
    token = re.search(r'name="csrf" value="([^"]+)"', await _page(p))
    assert token
    headers = {"Origin": origin or p.url}
    data = {"csrf": token[1], "confirm": confirm}
    async with p.session.post(
        p.url + "/trust-setup", data=data, headers=headers, allow_redirects=False
    ) as r:
        return r.status


async def test_button_adds_checks_restarts_and_then_home_assistant_trusts(
    panelled: Panelled, standin: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    page = await _page(panelled)
    assert 'id="trust-setup"' in page
    assert "    - 127.0.0.1\n    - ::1\n" in page  # exactly what will be added
    with caplog.at_level(logging.DEBUG):
        assert await _press(panelled) == 303
        status = await panelled.setup.wait()
    assert status.step is Step.DONE, status
    assert standin.restarts == 1
    # Home Assistant checked the new file, before it restarted.
    assert "use_x_forwarded_for: true" in standin.checks[0]
    new = standin.config.read_text()
    assert new == ORIGINAL.replace(
        "http:\n",
        "http:\n  use_x_forwarded_for: true\n  trusted_proxies:\n    - 127.0.0.1\n    - ::1\n",
    )
    assert (standin.config.stat().st_mode & 0o777) == 0o640, "the file keeps its mode"
    backups = list(standin.config.parent.glob("configuration.yaml.homeport-backup-*"))
    assert [b.read_text() for b in backups] == [ORIGINAL]
    assert status.backup == str(backups[0])
    assert not list(standin.config.parent.glob("*.homeport-tmp"))
    assert panelled.monitor.send_forwarded()
    page = await _page(panelled)
    assert 'data-step="done"' in page
    assert "Done: Home Assistant trusts the add-on." in page
    assert 'id="trust-setup"' not in page  # trusted: no button any more
    # Neither the token nor the file's content reached a log line.
    text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert TOKEN not in text
    assert "shown in the sidebar" not in text


async def test_an_invalid_check_restores_the_original_and_restarts_nothing(
    panelled: Panelled, standin: StandIn
) -> None:
    standin.valid = False
    assert await _press(panelled) == 303
    status = await panelled.setup.wait()
    assert status.step is Step.INVALID
    assert status.details == "Invalid config for 'http'"
    assert standin.restarts == 0
    assert standin.config.read_text() == ORIGINAL
    assert not list(standin.config.parent.glob("configuration.yaml.homeport-*"))
    page = await _page(panelled)
    assert "nothing was restarted and the original configuration.yaml is back" in page
    assert "Invalid config for &#39;http&#39;" in page
    assert 'id="trust-setup"' in page  # the owner may try again after fixing it


async def test_a_file_it_cannot_merge_is_left_alone(panelled: Panelled, standin: StandIn) -> None:
    standin.config.write_text("http: !include http.yaml\n")
    assert await _press(panelled) == 303
    status = await panelled.setup.wait()
    assert status.step is Step.REFUSED
    assert "http: comes from elsewhere (!include http.yaml)" in status.message
    assert standin.config.read_text() == "http: !include http.yaml\n"
    assert standin.checks == []
    assert standin.restarts == 0


async def test_a_wrong_token_changes_nothing_for_long(tmp_path: Path, standin: StandIn) -> None:
    async with aiohttp.ClientSession() as session:
        monitor = TrustMonitor(standin.url, supervised=False)
        await monitor.check(session)
        setup = TrustSetup(standin.config, CoreApi(standin.url + "/api", "wrong"), monitor, session)
        setup.start()
        status = await setup.wait()
    assert status.step is Step.FAILED
    assert "could not check its configuration" in status.message
    assert standin.config.read_text() == ORIGINAL
    assert standin.restarts == 0


async def test_cross_site_and_unconfirmed_posts_are_refused(
    panelled: Panelled, standin: StandIn
) -> None:
    assert await _press(panelled, origin="https://evil.example") == 403
    assert await _press(panelled, confirm="no") == 400
    await asyncio.sleep(0.1)
    assert standin.config.read_text() == ORIGINAL
    assert panelled.setup.status.step is Step.IDLE


async def test_without_setup_the_panel_shows_the_yaml_to_paste(tmp_path: Path) -> None:
    status = AddonStatus()
    monitor = TrustMonitor("http://127.0.0.1:9", supervised=True)
    monitor.report = monitor.report.__class__(
        Trust.UNTRUSTED, "http://127.0.0.1:9", proxies=("172.30.32.0/23",), detail="x"
    )
    panel = Panel(
        PanelSources(
            status=lambda: status,
            gate=RemoteAccessGate(tmp_path),
            trust=monitor,
            ha_how="",
            account_origin="https://homeport.example",
        ),
        allowed_peers=("127.0.0.1",),
    )
    await panel.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{panel.port}/") as r:
                page = await r.text()
            assert 'id="trust-yaml"' in page
            assert 'id="trust-setup"' not in page
            data = {"csrf": "x", "confirm": "yes"}
            origin = {"Origin": f"http://127.0.0.1:{panel.port}"}
            async with session.post(
                f"http://127.0.0.1:{panel.port}/trust-setup", data=data, headers=origin
            ) as r:
                assert r.status == 403  # CSRF first, then "not available"
    finally:
        await panel.stop()


async def test_the_runtime_offers_the_button_with_a_folder_and_a_token(
    tmp_path: Path, standin: StandIn
) -> None:
    """``homeport addon --ha-config DIR --ha-token-file F`` wires the button into the panel."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from homeport.addon.client import AddonConfig
    from homeport.addon.runtime import AddonRuntime, PanelSettings

    port = reserve_port()
    runtime = AddonRuntime(
        AddonConfig(
            relay_url="wss://127.0.0.1:9/v1/tunnel",  # nothing listens: the panel still runs
            ha_url=standin.url,
            state_dir=tmp_path / "state",
            pinned_keys=(Ed25519PrivateKey.generate().public_key(),),
        ),
        supervisor_token=None,
        panel=PanelSettings("127.0.0.1", port, ("127.0.0.1",)),
        ha_url_given=True,
        ha_config=standin.config,
        ha_token=TOKEN,
    )
    async with runtime.running(), aiohttp.ClientSession() as session:
        assert runtime.trust_setup is not None
        assert runtime.trust_setup.api.base == standin.url + "/api"
        async with asyncio.timeout(20):
            while True:
                async with session.get(f"http://127.0.0.1:{port}/") as r:
                    if 'id="trust-setup"' in await r.text():
                        break
                await asyncio.sleep(0.1)
    # Without a token (and no Supervisor) there is no button, only the YAML.
    bare = AddonRuntime(
        runtime.config, supervisor_token=None, panel=None, ha_url_given=True,
        ha_config=standin.config,
    )  # fmt: skip
    async with bare.running():
        assert bare.trust_setup is None
