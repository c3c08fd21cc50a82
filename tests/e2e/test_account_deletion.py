"""End to end: a person downloads their data and deletes their account (GDPR); the operator
deletes one from the command line while the relay runs.

Real relay and add-ons on loopback, the stand-in backend, a companion app, a member of
the home and a home shared with the owner by someone else, each with a WebSocket held
open: deletion must end all of it at once (the account site), or within the relay's
5 s sweep (``homeport admin user delete`` in another process), and leave other
people's homes alone. Chromium for the page itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
from email_flows import sign_in
from playwright.async_api import expect
from smtp_sink import SmtpSink
from stack import PASSWORD, Browser, Stack, start_stack
from tenants import extra_tenant

from homeport.accounts.deletion import ACCOUNT_DELETED, ACCOUNT_DELETED_BY_OPERATOR
from homeport.mail.settings import SmtpSettings

if TYPE_CHECKING:
    from browser import Chromium

pytest_plugins = ("browser",)
pytestmark = pytest.mark.timeout(180)

BOB = "bob@example.com"
CAROL = "carol@example.com"
NAVIGATE = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate"}


def _as(stack: Stack, email: str) -> Browser:
    return Browser(dataclasses.replace(stack, email=email))


async def _post(
    browser: Browser, path: str, data: dict[str, str], *, origin: str | None = None
) -> tuple[int, str]:
    stack = browser.stack
    headers = {"Origin": origin or stack.account_origin}
    async with browser.request(
        "POST", stack.account_origin + path, data=data, headers=headers
    ) as r:
        return r.status, await r.text()


async def _websocket(browser: Browser, origin: str) -> aiohttp.ClientWebSocketResponse:
    ws = await browser.session.ws_connect(
        origin.replace("https://", "wss://") + "/ws/echo", origin=origin
    )
    await ws.send_str("hello")
    assert await ws.receive_str() == "hello"
    return ws


async def _ended(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> None:
    """The relay ended the WebSocket within ``seconds``."""
    async with asyncio.timeout(seconds):
        while True:
            msg = await ws.receive()
            if msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                break
    await ws.close()


async def _app_link(stack: Stack, owner_id: int, name: str) -> str:
    label, _row = await stack.relay.accounts.sharing.create_app_link(
        owner_id, stack.instance_id, name
    )
    return f"https://{label}.{stack.config.tenant_domain}{stack.config.port_suffix}"


async def _owner_id(stack: Stack) -> int:
    user = await stack.relay.accounts.get_user_by_email(stack.email)
    assert user is not None
    return user.id


async def test_export_then_delete_ends_everything_at_once(stack: Stack, tmp_path: Path) -> None:
    accounts = stack.relay.accounts
    owner_id = await _owner_id(stack)
    home = stack.instance_id
    bob = await accounts.create_user(BOB, PASSWORD)
    await accounts.add_member(home, bob.id)
    app_url = await _app_link(stack, owner_id, "Anna's phone")
    async with (
        extra_tenant(stack, tmp_path, email=CAROL) as carol,
        stack.browser() as owner,
        _as(stack, BOB) as guest,
        _as(carol, CAROL) as carol_browser,
        stack.companion_app() as phone,
    ):
        await accounts.add_member(carol.instance_id, owner_id)  # Carol shares her home
        assert (await owner.sign_in("/")).status == 200
        own_ws = await _websocket(owner, stack.tenant_origin)
        owner_at_carol = Browser(dataclasses.replace(carol, email=stack.email))
        async with owner_at_carol:
            assert (await owner_at_carol.sign_in("/")).status == 200
            visiting_ws = await _websocket(owner_at_carol, carol.tenant_origin)
            assert (await guest.sign_in("/")).status == 200
            guest_ws = await _websocket(guest, stack.tenant_origin)
            app_ws = await phone.ws_connect(app_url.replace("https://", "wss://") + "/ws/echo")
            await app_ws.send_str("hi")
            assert await app_ws.receive_str() == "hi"
            assert (await carol_browser.sign_in("/")).status == 200

            # The download: everything, as JSON, never cached, no app-link host in it.
            async with owner.request(
                "GET", stack.account_origin + "/account/export", headers=NAVIGATE
            ) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("application/json")
                assert r.headers["Cache-Control"] == "no-store"
                assert re.fullmatch(
                    r'attachment; filename="homeport-account-\d{4}-\d\d-\d\d\.json"',
                    r.headers["Content-Disposition"],
                )
                text = await r.text()
            data = json.loads(text)
            assert data["account"]["email"] == stack.email
            assert [h["id"] for h in data["homes_owned"]] == [home]
            assert data["homes_owned"][0]["app_links"][0]["name"] == "Anna's phone"
            assert [m["home_id"] for m in data["memberships"]] == [carol.instance_id]
            assert app_url.split("//")[1].split(".")[0] not in text

            # Refused without the password, without the tick, or from another site.
            status, page = await _post(
                owner, "/account/delete", {"password": "wrong one", "confirm": "yes"}
            )
            assert status == 401
            status, page = await _post(owner, "/account/delete", {"password": PASSWORD})
            assert status == 400
            status, _ = await _post(
                owner,
                "/account/delete",
                {"password": PASSWORD, "confirm": "yes"},
                origin=stack.tenant_origin,
            )
            assert status == 403
            assert await accounts.get_user(owner_id) is not None
            assert stack.relay.hub.tunnel_for(home) is not None

            status, page = await _post(
                owner, "/account/delete", {"password": PASSWORD, "confirm": "yes"}
            )
            assert status == 200, page
            assert "Account deleted" in page
            # At once: the home's tunnel, and every open WebSocket of it and of the account.
            assert stack.relay.hub.tunnel_for(home) is None
            for ws in (own_ws, guest_ws, app_ws, visiting_ws):
                await _ended(ws, 5)
            async with phone.get(app_url + "/", allow_redirects=False) as r:
                assert r.status == 421  # the app link is gone
            async with guest.request("GET", stack.tenant_origin + "/") as r:
                assert r.status == 401
            async with owner.request("GET", stack.account_origin + "/", headers=NAVIGATE) as r:
                assert (r.status, r.headers["Location"]) == (303, "/signin")
            # Carol's home carries on, for Carol.
            assert stack.relay.hub.tunnel_for(carol.instance_id) is not None
            async with carol_browser.request("GET", carol.tenant_origin + "/") as r:
                assert r.status == 200
    assert await accounts.get_user_by_email(stack.email) is None
    assert [m.email for m in await accounts.sharing.members(carol.instance_id)] == []
    assert ACCOUNT_DELETED in [e.kind for e in await accounts.audit.export(owner_id)]


def _admin(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEPORT_")}
    return subprocess.run(
        [sys.executable, "-m", "homeport.cli", "admin", *args, "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


async def test_the_operator_deletes_while_the_relay_runs(stack: Stack) -> None:
    """`homeport admin user delete` in another process: the relay's sweep cuts within 5 s."""
    accounts = stack.relay.accounts
    owner_id = await _owner_id(stack)
    app_url = await _app_link(stack, owner_id, "tablet")
    async with stack.browser() as owner, stack.companion_app() as phone:
        assert (await owner.sign_in("/")).status == 200
        own_ws = await _websocket(owner, stack.tenant_origin)
        app_ws = await phone.ws_connect(app_url.replace("https://", "wss://") + "/ws/echo")
        await app_ws.send_str("hi")
        assert await app_ws.receive_str() == "hi"
        deleted = await asyncio.to_thread(
            _admin, stack.data_dir, "user", "delete", stack.email, "--yes"
        )
        assert deleted.returncode == 0, deleted.stderr
        assert deleted.stdout == f"Deleted {stack.email}; unlinked {stack.instance_id}\n"
        # Nothing in this process was told: the 5 s sweep finds it all.
        for ws in (own_ws, app_ws):
            await _ended(ws, 15)
        async with asyncio.timeout(15):
            while stack.relay.hub.tunnel_for(stack.instance_id) is not None:
                await asyncio.sleep(0.05)
    kinds = [e.kind for e in await accounts.audit.export(owner_id)]
    assert ACCOUNT_DELETED_BY_OPERATOR in kinds


async def test_the_page_in_chromium(stack: Stack, chromium: Chromium, tmp_path: Path) -> None:
    async with chromium.person() as person:
        page = person.page
        await page.goto(stack.account_origin + "/signin")
        await page.get_by_label("Email").fill(stack.email)
        await page.get_by_label("Password").fill(stack.password)
        await page.get_by_role("button", name="Sign in", exact=True).click()
        await expect(page.get_by_role("heading", name="Your homes")).to_be_visible()
        await page.goto(stack.account_origin + "/security")
        await page.get_by_role(
            "link", name="Your data: download it, or delete your account"
        ).click()
        await expect(page.get_by_role("heading", name="Your data", exact=True)).to_be_visible()

        async with page.expect_download() as info:
            await page.get_by_role("link", name="Download my data (JSON)").click()
        download = await info.value
        saved = tmp_path / download.suggested_filename
        await download.save_as(saved)
        assert json.loads(saved.read_text())["account"]["email"] == stack.email

        await page.get_by_label("Your password, to confirm it is you").fill(stack.password)
        await page.get_by_label("I want to delete my account for good").check()
        await page.get_by_role("button", name="Delete my account").click()
        await expect(page.get_by_role("heading", name="Account deleted")).to_be_visible()
        assert person.csp_errors() == []
        assert person.page_errors == []
    assert await stack.relay.accounts.get_user_by_email(stack.email) is None


async def test_the_address_is_told_by_mail(tmp_path: Path) -> None:
    with SmtpSink() as sink:
        smtp = SmtpSettings(
            host="127.0.0.1", port=sink.port, security="none", mail_from="relay@example.com"
        )
        async with start_stack(tmp_path, smtp=smtp) as stack, stack.browser() as owner:
            await sign_in(owner, stack, sink)  # type: ignore[arg-type]
            before = len(sink.to(stack.email))
            status, page = await _post(
                owner, "/account/delete", {"password": PASSWORD, "confirm": "yes"}
            )
            assert status == 200, page
            mail = await sink.wait_for(stack.email, before + 1)
    assert mail.message["Subject"] == "Your Homeport account was deleted"
    assert "the 1 home(s) it owned were unlinked" in mail.text
