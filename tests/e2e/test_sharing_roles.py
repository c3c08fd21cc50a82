"""End to end: sharing that ends by itself and has roles (issue 16).

A guest's access and an app link end at the time the owner set, with their open
WebSockets cut by the relay's sweep like a revocation; a member can do none of the
owner's actions (every owner page and action answers 403 and changes nothing, while a
stranger gets the 404 of a home that does not exist); the owner hands the home over to a
member. Real relay and add-on on loopback, the stand-in backend,
cookie-keeping aiohttp browsers and a companion app; the owner's page in Chromium.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import aiohttp
import pytest
from playwright.async_api import expect
from stack import PASSWORD, Browser, Stack

from homeport.accounts.audit import EventType

if TYPE_CHECKING:
    from browser import Chromium

pytest_plugins = ("browser",)
pytestmark = pytest.mark.timeout(180)

BOB = "bob@example.com"
NAVIGATE = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate"}
#: The sweep runs every 5 s: an end is enforced on open traffic within that (plus slack).
CUT_WITHIN = 15.0


def _as(stack: Stack, email: str) -> Browser:
    return Browser(dataclasses.replace(stack, email=email))


async def _post(
    browser: Browser, path: str, data: dict[str, str] | None = None
) -> tuple[int, str, str]:
    stack = browser.stack
    async with browser.request(
        "POST",
        stack.account_origin + path,
        data=data or {},
        headers={"Origin": stack.account_origin},
    ) as r:
        return r.status, await r.text(), r.headers.get("Location", "")


async def _get(browser: Browser, path: str) -> tuple[int, str]:
    async with browser.request("GET", browser.stack.account_origin + path, headers=NAVIGATE) as r:
        return r.status, await r.text()


async def _sign_in(browser: Browser) -> None:
    status, body, _ = await _post(
        browser, "/signin", {"email": browser.stack.email, "password": PASSWORD, "next": "/"}
    )
    assert status == 303, body


def _in(seconds: float) -> str:
    """A form's UTC end time ``seconds`` from now."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")


async def _closed(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> int:
    """Wait for the relay to close the WebSocket; the close code it sent."""
    async with asyncio.timeout(seconds):
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.CLOSE:
                return int(msg.data)
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return -1


async def _echo(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_str("still here")
    assert await ws.receive_str(timeout=10) == "still here"


async def _ids(stack: Stack) -> tuple[int, int]:
    accounts = stack.relay.accounts
    owner = await accounts.get_user_by_email(stack.email)
    bob = await accounts.get_user_by_email(BOB) or await accounts.create_user(BOB, PASSWORD)
    assert owner is not None
    return owner.id, bob.id


async def test_a_guest_access_ends_on_time_with_its_traffic(stack: Stack) -> None:
    _owner_id, bob_id = await _ids(stack)
    home = stack.instance_id
    await stack.relay.accounts.add_member(home, bob_id)
    async with stack.browser() as owner, _as(stack, BOB) as guest:
        await _sign_in(owner)
        assert (await guest.sign_in("/")).status == 200
        ws = await guest.session.ws_connect(
            stack.tenant_origin.replace("https://", "wss://") + "/ws/echo",
            origin=stack.tenant_origin,
        )
        await _echo(ws)
        # In the past: refused, nothing changes.
        status, page, _ = await _post(
            owner, f"/instances/{home}/members/{bob_id}/end", {"until": _in(-60)}
        )
        assert status == 400
        assert "future" in page
        status, _, location = await _post(
            owner, f"/instances/{home}/members/{bob_id}/end", {"until": _in(3)}
        )
        assert (status, location) == (303, f"/instances/{home}/access?done=member-end")
        status, page = await _get(owner, location)
        assert "Their access ends at that time" in page
        status, page = await _get(guest, "/")
        assert "Shared with you by" in page
        assert ', until <time datetime="20' in page  # the guest sees when their access ends
        await _echo(ws)  # not yet
        started = time.monotonic()
        assert await _closed(ws, CUT_WITHIN) == 1008  # access withdrawn
        assert time.monotonic() - started >= 1.0  # not before its time
        await ws.close()
        async with guest.request("GET", stack.tenant_origin + "/") as r:
            assert r.status == 401
        status, page = await _get(guest, "/")
        assert "Shared with you by" not in page
        # A new session is refused too (the hand-off checks the membership).
        async with _as(stack, BOB) as again:
            assert (await again.sign_in("/")).status != 200
        status, page = await _get(owner, f"/instances/{home}")
        assert BOB not in page
    kinds = [e.kind for e in await stack.relay.accounts.audit.for_instance(home)]
    assert EventType.MEMBER_END_SET in kinds
    assert EventType.MEMBER_EXPIRED in kinds


async def test_an_app_link_expires_on_time_with_its_traffic(stack: Stack) -> None:
    owner_id, _bob_id = await _ids(stack)
    home = stack.instance_id
    label, row = await stack.relay.accounts.sharing.create_app_link(owner_id, home, "tablet")
    url = f"https://{label}.{stack.config.tenant_domain}{stack.config.port_suffix}"
    async with stack.browser() as owner, stack.companion_app() as app:
        await _sign_in(owner)
        ws = await app.ws_connect(url.replace("https://", "wss://") + "/ws/echo")
        await _echo(ws)
        status, _, location = await _post(
            owner, f"/instances/{home}/app-links/{row.id}/expiry", {"until": _in(3)}
        )
        assert (status, location) == (303, f"/instances/{home}/access?done=link-expiry")
        await _echo(ws)
        assert await _closed(ws, CUT_WITHIN) == 1008
        await ws.close()
        async with app.get(url + "/", allow_redirects=False) as r:
            assert r.status == 421  # the same answer as an unknown host
    assert await stack.relay.accounts.sharing.app_links(home) == []
    kinds = [e.kind for e in await stack.relay.accounts.audit.for_instance(home)]
    assert EventType.APP_LINK_EXPIRED in kinds


async def test_a_member_can_do_none_of_the_owners_actions(stack: Stack) -> None:
    accounts = stack.relay.accounts
    owner_id, bob_id = await _ids(stack)
    home = stack.instance_id
    await accounts.add_member(home, bob_id)
    carol = await accounts.create_user("carol@example.com", PASSWORD)
    await accounts.add_member(home, carol.id)
    _label, link = await accounts.sharing.create_app_link(owner_id, home, "phone")
    _token, invitation = await accounts.sharing.invite(
        owner_id, home, "dave@example.com", lifetime=None
    )
    later = _in(86400)
    forbidden = {
        f"/instances/{home}/rename": {"name": "Mine now"},
        f"/instances/{home}/unlink": {"confirm": "yes"},
        f"/instances/{home}/invitations": {"email": "eve@example.com", "days": "7"},
        f"/instances/{home}/invitations/{invitation.id}/revoke": {},
        f"/instances/{home}/members/{carol.id}/remove": {},
        f"/instances/{home}/members/{carol.id}/end": {"until": later},
        f"/instances/{home}/members/{bob_id}/end": {"until": ""},
        f"/instances/{home}/app-links": {"name": "mine"},
        f"/instances/{home}/app-links/{link.id}/revoke": {},
        f"/instances/{home}/app-links/{link.id}/expiry": {"until": later},
        f"/instances/{home}/second-factor": {"required": "yes"},
        f"/instances/{home}/transfer": {"user": str(bob_id), "confirm": "yes"},
    }
    async with _as(stack, BOB) as guest, _as(stack, "mallory@example.com") as stranger:
        await _sign_in(guest)
        await accounts.create_user("mallory@example.com", PASSWORD)
        await _sign_in(stranger)
        for path in (f"/instances/{home}", f"/instances/{home}/access"):
            status, page = await _get(guest, path)
            assert status == 403, path
            assert "only its owner" in page
            status, _ = await _get(stranger, path)
            assert status == 404, path
        for path, form in forbidden.items():
            status, page, _ = await _post(guest, path, form)
            assert status == 403, path
            assert "only its owner" in page
            status, _, _ = await _post(stranger, path, form)
            assert status == 404, path
        assert (await guest.sign_in("/")).status == 200  # opening it is what a member may
    instance = await accounts.get_instance(home)
    assert instance is not None
    assert (instance.name, instance.owner_id) == ("Home", owner_id)
    assert stack.relay.hub.tunnel_for(home) is not None
    assert [m.email for m in await accounts.sharing.members(home)] == [BOB, carol.email]
    assert all(m.until is None for m in await accounts.sharing.members(home))
    assert [(x.id, x.expires_at) for x in await accounts.sharing.app_links(home)] == [
        (link.id, None)
    ]
    assert [i.status for i in await accounts.sharing.invitations(home)] == ["pending"]
    assert not await accounts.sharing.requires_second_factor(home)


async def test_an_app_link_made_with_an_expiry(stack: Stack) -> None:
    home = stack.instance_id
    async with stack.browser() as owner:
        await _sign_in(owner)
        status, page, _ = await _post(
            owner, f"/instances/{home}/app-links", {"name": "tablet", "until": _in(-60)}
        )
        assert status == 400
        assert "future" in page
        assert await stack.relay.accounts.sharing.app_links(home) == []
        status, page, _ = await _post(
            owner, f"/instances/{home}/app-links", {"name": "tablet", "until": "tomorrow"}
        )
        assert status == 400
        assert await stack.relay.accounts.sharing.app_links(home) == []
        status, page, location = await _post(
            owner, f"/instances/{home}/app-links", {"name": "tablet", "until": _in(4)}
        )
        assert status == 303, page  # the secret is shown once, after a redirect
        status, page = await _get(owner, location)
        assert "It expires: 20" in page
    found = re.search(r'id="app-link-url"[^>]*value="(https://[^"]+)"', page)
    assert found is not None, page
    url = found.group(1)
    [row] = await stack.relay.accounts.sharing.app_links(home)
    assert row.expires_at is not None
    async with stack.companion_app() as app:
        ws = await app.ws_connect(url.replace("https://", "wss://") + "/ws/echo")
        await _echo(ws)
        assert await _closed(ws, CUT_WITHIN) == 1008
        await ws.close()
        async with app.get(url + "/", allow_redirects=False) as r:
            assert r.status == 421
    assert await stack.relay.accounts.sharing.app_links(home) == []


async def test_the_owner_hands_the_home_over(stack: Stack) -> None:
    accounts = stack.relay.accounts
    _owner_id, bob_id = await _ids(stack)
    home = stack.instance_id
    await accounts.add_member(home, bob_id)
    async with stack.browser() as owner, _as(stack, BOB) as bob:
        assert (await owner.sign_in("/")).status == 200  # owner's session on the home
        await _sign_in(bob)
        status, page, _ = await _post(owner, f"/instances/{home}/transfer", {"user": str(bob_id)})
        assert status == 400  # not confirmed
        status, page, _ = await _post(
            bob, f"/instances/{home}/transfer", {"user": str(bob_id), "confirm": "yes"}
        )
        assert status == 403  # a member cannot take it
        status, page, _ = await _post(
            owner, f"/instances/{home}/transfer", {"user": "999999", "confirm": "yes"}
        )
        assert status == 400
        assert "can open this home" in page
        status, page, _ = await _post(
            owner, f"/instances/{home}/transfer", {"user": str(bob_id), "confirm": "yes"}
        )
        assert status == 200, page
        assert "Home handed over" in page
        status, _ = await _get(owner, f"/instances/{home}")
        assert status == 403  # a member now
        status, page = await _get(bob, f"/instances/{home}")
        assert status == 200  # the new owner manages it
        assert stack.email in page  # the old owner is listed as a member
        async with owner.request("GET", stack.tenant_origin + "/") as r:
            assert r.status == 200  # the old owner's session still opens it
        assert stack.relay.hub.tunnel_for(home) is not None
    kinds = [e.kind for e in await accounts.audit.for_instance(home)]
    assert EventType.OWNERSHIP_TRANSFERRED in kinds


async def test_the_owners_page_in_chromium(stack: Stack, chromium: Chromium) -> None:
    accounts = stack.relay.accounts
    owner_id, bob_id = await _ids(stack)
    home = stack.instance_id
    await accounts.add_member(home, bob_id)
    await accounts.sharing.create_app_link(owner_id, home, "Anna's phone")
    async with chromium.person() as person:
        page = person.page
        await page.goto(stack.account_origin + "/signin")
        await page.get_by_label("Email").fill(stack.email)
        await page.get_by_label("Password").fill(stack.password)
        await page.get_by_role("button", name="Sign in", exact=True).click()
        await page.get_by_role("link", name="Manage").click()
        weekend = (datetime.now(UTC) + timedelta(days=2)).replace(second=0, microsecond=0)
        await page.get_by_label("Device name").fill("Guest tablet")
        await page.get_by_label("Expires (UTC, optional)").fill(weekend.strftime("%Y-%m-%dT%H:%M"))
        await page.get_by_role("button", name="Create app link").click()
        await expect(page.get_by_text("It expires: ")).to_have_text(
            "It expires: " + weekend.strftime("%Y-%m-%d %H:%M UTC") + "."
        )
        tablet = [x for x in await accounts.sharing.app_links(home) if x.name == "Guest tablet"]
        assert [x.expires_at for x in tablet] == [weekend]
        await page.get_by_role(
            "link", name="End dates, app-link expiry and handing the home over"
        ).click()
        await expect(page.get_by_role("heading", name="Access to Home")).to_be_visible()

        await page.get_by_label(f"Access of {BOB} ends (UTC)").fill(
            weekend.strftime("%Y-%m-%dT%H:%M")
        )
        await page.get_by_role("button", name=f"Set end for {BOB}").click()
        await expect(page.get_by_role("status")).to_have_text(
            "Saved. Their access ends at that time, on its own."
        )
        [member] = await accounts.sharing.members(home)
        assert member.until == weekend
        await page.get_by_label("App link Anna's phone expires (UTC)").fill(
            weekend.strftime("%Y-%m-%dT%H:%M")
        )
        await page.get_by_role("button", name="Set expiry for Anna's phone").click()
        await expect(page.get_by_role("status")).to_contain_text("stops working at that time")

        await page.get_by_label("New owner").select_option(label=BOB)
        await page.get_by_label("I want to hand Home over and become a member").check()
        await page.get_by_role("button", name="Hand over").click()
        await expect(page.get_by_role("heading", name="Home handed over")).to_be_visible()
        await page.get_by_role("main").get_by_role("link", name="Your homes").click()
        await expect(page.get_by_text(f"Shared with you by {BOB}")).to_be_visible()
        await expect(page.get_by_role("link", name="Manage")).to_have_count(0)
        await page.goto(stack.account_origin + f"/instances/{home}/access")
        await expect(page.get_by_role("heading", name="Only the owner")).to_be_visible()
        assert person.csp_errors() == []
        assert person.page_errors == []
    instance = await accounts.get_instance(home)
    assert instance is not None
    assert instance.owner_id == bob_id
