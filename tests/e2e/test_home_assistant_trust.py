"""Zero-touch set-up against a real Home Assistant Core: does it trust the add-on?

* Home Assistant that trusts the add-on (the session fixture: ``use_x_forwarded_for``
  and ``trusted_proxies: [127.0.0.1, ::1]``): detected; the remote person's address
  reaches Home Assistant, so failed remote logins ban that person, never the add-on.
* Home Assistant as installed (no proxy settings): detected, the add-on sends no
  ``X-Forwarded-For`` (which Home Assistant would answer with 400), requests keep
  working — and the warning the panel shows is true: failed remote logins ban the
  add-on's own address, locking every remote person out.

Remote people are told apart by the loopback address their browser connects from.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from ha_core import HomeAssistant, start_home_assistant
from stack import Browser, Stack, start_stack

from homeport.addon.ha_trust import PROBE_CLIENT, Trust, TrustMonitor, probe_trust

pytestmark = [pytest.mark.homeassistant, pytest.mark.timeout(240)]

#: Loopback addresses no other test uses: the session Home Assistant keeps its bans.
ATTACKER = "127.0.0.77"
SOMEONE_ELSE = "127.0.0.78"
THRESHOLD = 5  # login_attempts_threshold in ha_core.configuration_yaml


async def _login(browser: Browser, stack: Stack, username: str, password: str) -> int:
    """One pass through Home Assistant's login flow; the status of the credentials step."""
    client_id = stack.tenant_origin + "/"
    async with browser.request(
        "POST",
        stack.tenant_origin + "/auth/login_flow",
        json={
            "client_id": client_id,
            "handler": ["homeassistant", None],
            "redirect_uri": client_id + "?auth_callback=1",
        },
    ) as r:
        if r.status != 200:
            return r.status
        flow = await r.json()
    async with browser.request(
        "POST",
        stack.tenant_origin + f"/auth/login_flow/{flow['flow_id']}",
        json={"username": username, "password": password, "client_id": client_id},
    ) as r:
        body = await r.json() if r.status == 200 else None
        if body is not None and body.get("type") != "create_entry":
            assert body["errors"] == {"base": "invalid_auth"}, body
            return 401  # Home Assistant answers 200 with an error; it counts as a failure
        return r.status


async def _fail_logins(browser: Browser, stack: Stack, ha: HomeAssistant) -> None:
    for _ in range(THRESHOLD):
        assert await _login(browser, stack, ha.username, "wrong password") == 401


async def _wait_trust(monitor: TrustMonitor, trust: Trust) -> None:
    async with asyncio.timeout(30):
        while monitor.report.trust is not trust:
            await asyncio.sleep(0.05)


async def _manifest(browser: Browser, stack: Stack) -> int:
    async with browser.request("GET", stack.tenant_origin + "/manifest.json") as r:
        await r.read()
        return r.status


def _bans(ha: HomeAssistant) -> str:
    path = ha.config_dir / "ip_bans.yaml"
    return path.read_text() if path.exists() else ""


async def test_trusting_home_assistant_bans_the_person_not_the_addon(
    tmp_path: Path, home_assistant: HomeAssistant
) -> None:
    ha = home_assistant
    async with aiohttp.ClientSession() as session:
        report = await probe_trust(session, ha.url, supervised=False)
    assert report.trust is Trust.TRUSTED
    assert report.seen_as == "127.0.0.1"
    assert report.proxies == ("127.0.0.1", "::1")
    assert PROBE_CLIENT not in _bans(ha)  # the probe is no login attempt

    monitor = TrustMonitor(ha.url, supervised=False)
    async with start_stack(tmp_path, ha_url=ha.url, addon_kwargs={"trust": monitor}) as stack:
        await _wait_trust(monitor, Trust.TRUSTED)
        async with stack.browser(source_ip=ATTACKER) as attacker:
            await attacker.sign_in("/")
            await _fail_logins(attacker, stack, ha)
            async with asyncio.timeout(10):
                while ATTACKER not in _bans(ha):
                    await asyncio.sleep(0.1)
            assert await _manifest(attacker, stack) == 403  # the person is banned ...
        assert "127.0.0.1" not in _bans(ha)
        async with stack.browser(source_ip=SOMEONE_ELSE) as other:
            page = await other.sign_in("/")
            assert page.status == 200  # ... the add-on, and everyone else, are not
            assert await _login(other, stack, ha.username, ha.password) == 200


async def test_untrusting_home_assistant_is_detected_and_keeps_working(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with start_home_assistant(tmp_path / "ha", trust_proxies=False) as ha:
        async with aiohttp.ClientSession() as session:
            # The premise, checked against the real thing.
            async with session.get(ha.url + "/manifest.json") as r:
                assert r.status == 200
            headers = {"X-Forwarded-For": "203.0.113.5"}
            async with session.get(ha.url + "/manifest.json", headers=headers) as r:
                assert r.status == 400
            report = await probe_trust(session, ha.url, supervised=False)
        assert report.trust is Trust.UNTRUSTED
        assert "use_x_forwarded_for: true" in report.yaml
        assert "    - 127.0.0.1\n" in report.yaml
        assert not report.send_forwarded

        monitor = TrustMonitor(ha.url, supervised=False)
        async with start_stack(tmp_path, ha_url=ha.url, addon_kwargs={"trust": monitor}) as stack:
            await _wait_trust(monitor, Trust.UNTRUSTED)
            # The owner is told once, in the add-on's log, exactly what to paste.
            assert capsys.readouterr().out.count(report.yaml) == 1
            async with stack.browser(source_ip=ATTACKER) as attacker:
                page = await attacker.sign_in("/")
                assert page.status == 200  # no X-Forwarded-For sent: no 400
                assert "<title>Home Assistant</title>" in await page.text()
                assert await _login(attacker, stack, ha.username, ha.password) == 200
                # What the panel warns about: the failures count against the add-on.
                await _fail_logins(attacker, stack, ha)
            async with asyncio.timeout(10):
                while "127.0.0.1" not in _bans(ha):
                    await asyncio.sleep(0.1)
            assert ATTACKER not in _bans(ha)
            async with stack.browser(source_ip=SOMEONE_ELSE) as other:
                page = await other.sign_in("/")
                assert page.status == 403  # everyone is locked out
            async with aiohttp.ClientSession() as session:
                report = await monitor.check(session)
            assert report.trust is Trust.BANNED
            assert "ip_bans.yaml" in report.detail
