"""End to end: an app link made in the add-on's panel reaches the home, is listed, and revoked.

Real relay (TLS, SQLite), real add-on client and tunnel, the stand-in backend,
the panel on loopback (its allowed peer here, as in tests/addon/test_panel.py).
The panel asks the relay over the tunnel's CONTROL frames; the link it shows
then opens the home with no browser session, appears on the account site's
home page and audit log, and revoking it there cuts it.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
from pathlib import Path

import aiohttp
import pytest
from panel_stack import panel_for, until_capability_known
from stack import start_stack

pytestmark = pytest.mark.timeout(120)

NO_HOME_TITLE = "<title>No home at this address · Homeport</title>"


async def panel_create(panel: str, name: str) -> tuple[int, str]:
    """Create an app link the way the browser form does (Origin: the panel itself)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(panel + "/") as r:
            token = re.search(r'name="csrf" value="([^"]+)"', await r.text())
            assert token is not None
        async with session.post(
            panel + "/app-links",
            data={"name": name, "csrf": token[1]},
            headers={"Origin": panel},
        ) as r:
            return r.status, await r.text()


def shown_url(page: str) -> str:
    found = re.search(r'id="app-link-url"[^>]*value="([^"]+)"', page)
    assert found is not None, page
    return html.unescape(found[1])


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url, allow_redirects=False) as r:
        return r.status, await r.text()


async def test_panel_app_link_reaches_the_home_until_revoked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with start_stack(tmp_path) as stack, panel_for(stack, tmp_path) as panel:
        await until_capability_known(stack, True)
        status, page = await panel_create(panel, "Anna's phone")
        assert status == 200, page
        url = shown_url(page)
        label = url.removeprefix("https://").split(".", 1)[0]
        assert re.fullmatch(r"[a-z2-7]{32}", label)
        assert url == f"https://{label}.{stack.config.tenant_domain}{stack.config.port_suffix}"

        async with stack.companion_app() as app:
            status, body = await fetch(app, url + "/")
            assert status == 200
            assert "Home Assistant stand-in" in body
            status, _ = await fetch(app, url + "/api/")
            assert status == 401  # Home Assistant's own login still guards the API

            home = stack.instance_id
            async with stack.browser() as owner:
                await owner.sign_in_account_site()
                async with owner.request("GET", f"{stack.account_origin}/instances/{home}") as r:
                    listing = await r.text()
                assert "Anna&#39;s phone" in listing
                async with owner.request("GET", f"{stack.account_origin}/security/audit") as r:
                    audit = await r.text()
                assert "App link created" in audit
                assert 'data-label="Device">Homeport add-on panel</td>' in audit
                async with owner.request("GET", f"{stack.account_origin}/security/audit.csv") as r:
                    exported = await r.text()
                assert "from the add-on panel" in exported
                assert label not in audit + exported

                (link,) = await stack.relay.accounts.sharing.app_links(home)
                async with owner.request(
                    "POST",
                    f"{stack.account_origin}/instances/{home}/app-links/{link.id}/revoke",
                    headers={"Origin": stack.account_origin},
                ) as r:
                    assert r.status == 303
            status, page = await fetch(app, url + "/")
            assert (status, NO_HOME_TITLE in page) == (421, True)
    # The link is a credential: no log line of the relay, the add-on or the panel has it.
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "addon_control.app_link_created" in logged
    assert label not in logged


async def test_a_relay_without_the_capability_gets_the_panel_message(tmp_path: Path) -> None:
    async with start_stack(tmp_path) as stack, panel_for(stack, tmp_path) as panel:
        await until_capability_known(stack, True)
        # The relay as an older one: no CONTROL in its SETTINGS on the next tunnel.
        stack.relay.hub.control_handler = None
        first = stack.addon.status.connects
        await stack.relay.hub.close_instance(stack.instance_id, reason="test: older relay")
        async with asyncio.timeout(30):
            while stack.addon.status.connects == first:
                await asyncio.sleep(0.05)
        await stack.wait_connected()
        await until_capability_known(stack, False)

        async with aiohttp.ClientSession() as session, session.get(panel + "/") as r:
            assert "does not support creating app links here" in await r.text()
        status, page = await panel_create(panel, "phone")
        assert status == 501
        assert "use the account site" in page
        assert await stack.relay.accounts.sharing.app_links(stack.instance_id) == []
        # The tunnel is unharmed: remote traffic still flows.
        async with stack.browser() as person:
            response = await person.sign_in("/")
            assert response.status == 200
