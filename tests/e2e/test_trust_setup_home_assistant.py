"""Zero-touch trust against the real Home Assistant Core the suite installs.

Home Assistant starts as installed, not trusting any proxy. The owner presses
the panel's button: the add-on adds the settings to the real configuration.yaml,
Home Assistant's own API checks it (valid), Home Assistant restarts (through
its API; a watcher relaunches it on exit code 100, as systemd would), and from
then on the person's own address reaches Home Assistant: failed remote logins
ban that person, never the add-on.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest
from ha_core import start_home_assistant
from ha_restarts import RESTART_EXIT_CODE, restart_on_request
from stack import start_stack
from test_home_assistant_trust import ATTACKER, SOMEONE_ELSE, _bans, _fail_logins, _login

from homeport.addon.gate import RemoteAccessGate
from homeport.addon.ha_trust import Trust, TrustMonitor
from homeport.addon.panel import Panel, PanelSources
from homeport.addon.trust_setup import CoreApi, Step, TrustSetup

pytestmark = [pytest.mark.homeassistant, pytest.mark.timeout(600)]


async def test_button_makes_home_assistant_trust_the_addon(tmp_path: Path) -> None:
    async with start_home_assistant(tmp_path / "ha", trust_proxies=False) as ha:
        config = ha.config_dir / "configuration.yaml"
        original = config.read_text()
        monitor = TrustMonitor(ha.url, supervised=False)
        async with (
            aiohttp.ClientSession() as session,
            start_stack(tmp_path, ha_url=ha.url, addon_kwargs={"trust": monitor}) as stack,
            restart_on_request(ha) as exits,
        ):
            assert (await monitor.check(session)).trust is Trust.UNTRUSTED
            setup = TrustSetup(
                config, CoreApi(ha.url + "/api", ha.long_lived_token), monitor, session
            )
            panel = Panel(
                PanelSources(
                    status=lambda: stack.addon.status,
                    gate=RemoteAccessGate(tmp_path / "panel"),
                    trust=monitor,
                    ha_how=f"Home Assistant at {ha.url} (configured)",
                    account_origin=stack.account_origin,
                    trust_setup=setup,
                ),
                allowed_peers=("127.0.0.1",),
            )
            await panel.start("127.0.0.1", 0)
            url = f"http://127.0.0.1:{panel.port}"
            try:
                async with session.get(url + "/") as r:
                    page = await r.text()
                token = re.search(r'name="csrf" value="([^"]+)"', page)
                assert token
                assert 'id="trust-setup"' in page
                async with session.post(
                    url + "/trust-setup",
                    data={"csrf": token[1], "confirm": "yes"},
                    headers={"Origin": url},
                    allow_redirects=False,
                ) as r:
                    assert r.status == 303
                status = await asyncio.wait_for(setup.wait(), 400)
            finally:
                await panel.stop()
            assert status.step is Step.DONE, (status, ha.log_tail())
            assert exits == [RESTART_EXIT_CODE], "Home Assistant restarted once, through its API"
            # The file has the settings, everything else as it was; the backup is the original.
            new = config.read_text()
            assert "  use_x_forwarded_for: true\n  trusted_proxies:\n    - 127.0.0.1\n" in new
            assert (
                new.replace(
                    "  use_x_forwarded_for: true\n  trusted_proxies:\n    - 127.0.0.1\n    - ::1\n",
                    "",
                )
                == original
            )
            assert status.backup is not None
            assert Path(status.backup).read_text() == original
            assert monitor.send_forwarded()

            # The point of it all: the person is banned, not the add-on.
            async with stack.browser(source_ip=ATTACKER) as attacker:
                await attacker.sign_in("/")
                await _fail_logins(attacker, stack, ha)
                async with asyncio.timeout(10):
                    while ATTACKER not in _bans(ha):
                        await asyncio.sleep(0.1)
            assert "127.0.0.1" not in _bans(ha)
            async with stack.browser(source_ip=SOMEONE_ELSE) as other:
                page_response = await other.sign_in("/")
                assert page_response.status == 200
                assert await _login(other, stack, ha.username, ha.password) == 200
