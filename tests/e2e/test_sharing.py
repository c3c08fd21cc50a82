"""End to end: sharing a home, app links, linking by code on the web, unlinking.

Real relay, real add-on(s), real stand-in backends, TLS on loopback; browsers
are cookie-keeping aiohttp clients posting forms with the account site's
Origin, like a real one. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import html
import json
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pyotp
import pytest
from stack import PASSWORD, Browser, Stack, make_addon
from tenants import extra_tenant

from homeport.addon.client import AddonStatus, State
from homeport.relay.tenant import SESSION_COOKIE

BOB = "bob@example.com"
NAVIGATE = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate"}
#: The one answer for every tenant-domain host that opens no home (R-MT-04): a styled
#: page, byte for byte the same whatever the name (a revoked link, a typo, junk).
NO_HOME_TITLE = "<title>No home at this address · Homeport</title>"


def as_person(stack: Stack, email: str) -> Browser:
    """A browser that signs in as ``email`` (password :data:`PASSWORD`)."""
    return Browser(dataclasses.replace(stack, email=email))


async def post(
    browser: Browser, path: str, data: dict[str, str] | None = None, *, origin: str | None = None
) -> tuple[int, str, str]:
    stack = browser.stack
    async with browser.request(
        "POST",
        stack.account_origin + path,
        data=data or {},
        headers={"Origin": origin or stack.account_origin},
    ) as r:
        return r.status, await r.text(), r.headers.get("Location", "")


async def get(browser: Browser, url: str) -> tuple[int, str]:
    async with browser.request("GET", url, headers=NAVIGATE) as r:
        return r.status, await r.text()


async def account_sign_in(browser: Browser) -> None:
    status, body, _ = await post(
        browser,
        "/signin",
        {"email": browser.stack.email, "password": browser.stack.password, "next": "/"},
    )
    assert status == 303, body


def copied_value(page: str, field_id: str) -> str:
    match = re.search(rf'id="{field_id}"[^>]*value="([^"]+)"', page)
    assert match is not None, page
    return html.unescape(match.group(1))


def app(stack: Stack) -> aiohttp.ClientSession:
    """The companion app (no cookies, no session): ``async with app(stack) as phone``."""
    return stack.companion_app()


async def app_get(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    async with session.get(url, headers=headers or {}, allow_redirects=False) as r:
        return r.status, await r.text()


async def post_then_get(
    browser: Browser, path: str, data: dict[str, str] | None = None
) -> tuple[int, str]:
    """A form that creates a secret answers 303 to the page showing it (post/redirect/get)."""
    status, page, location = await post(browser, path, data)
    assert status == 303, page
    return await get(browser, browser.stack.account_origin + location)


async def create_app_link(owner: Browser, instance_id: str, name: str) -> str:
    status, page = await post_then_get(owner, f"/instances/{instance_id}/app-links", {"name": name})
    assert status == 200, page
    assert "<svg" in page  # the QR code, inline
    return copied_value(page, "app-link-url")


async def no_home(stack: Stack, phone: aiohttp.ClientSession) -> tuple[int, str]:
    """What a host on the tenant domain that names nothing at all answers."""
    suffix = f".{stack.config.tenant_domain}{stack.config.port_suffix}"
    answer = await app_get(phone, f"https://nothing-here{suffix}/")
    assert answer[0] == 421, answer
    assert NO_HOME_TITLE in answer[1], answer
    return answer


async def link_ids(stack: Stack, instance_id: str) -> list[int]:
    return [link.id for link in await stack.relay.accounts.sharing.app_links(instance_id)]


async def closed_within(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> int | None:
    """Read until the relay closes the WebSocket; its close code."""
    async with asyncio.timeout(seconds):
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return ws.close_code
            if msg.type is aiohttp.WSMsgType.ERROR:
                return None


# -------------------------------------------------------------- invitations


async def test_invite_accept_open_then_removed(stack: Stack) -> None:
    accounts = stack.relay.accounts
    bob = await accounts.create_user(BOB, PASSWORD)
    home = stack.instance_id
    async with stack.browser() as owner, as_person(stack, BOB) as guest:
        await account_sign_in(owner)
        status, page = await get(owner, f"{stack.account_origin}/instances/{home}")
        assert status == 200
        assert "Only you." in page
        # Cross-site invitation attempts change nothing.
        status, _, _ = await post(
            owner,
            f"/instances/{home}/invitations",
            {"email": BOB, "days": "7"},
            origin=stack.tenant_origin,
        )
        assert status == 403
        status, page = await post_then_get(
            owner, f"/instances/{home}/invitations", {"email": BOB, "days": "7"}
        )
        assert status == 200, page
        accept_url = copied_value(page, "invite-url")
        assert accept_url.startswith(stack.account_origin + "/invitations/accept?token=")

        # Bob, not signed in, sees the invitation and is offered to sign in (and come
        # back to it) or to create the account for the invited address.
        status, page = await get(guest, accept_url)
        assert status == 200
        assert "Create your account to join Home" in page
        assert "/signin?next=%2Finvitations%2Faccept%3Ftoken%3D" in page
        assert 'name="token"' not in page  # nothing to accept before signing in
        await account_sign_in(guest)
        status, page = await get(guest, accept_url)
        assert status == 200
        assert "owner@example.com invited <strong>bob@example.com</strong>" in page
        token = copied_value(page.replace('type="hidden" name="token"', 'id="t"'), "t")
        status, page, location = await post(guest, "/invitations/accept", {"token": token})
        assert (status, location) == (303, "/?joined=" + home), page
        status, page = await get(guest, stack.account_origin + location)
        assert "You joined Home." in page
        # Used up: a second accept is refused.
        status, _, _ = await post(guest, "/invitations/accept", {"token": token})
        assert status == 404

        # Bob opens the home, and keeps a WebSocket open.
        opened = await guest.sign_in("/")
        assert opened.status == 200
        ws = await guest.session.ws_connect(
            stack.tenant_origin.replace("https://", "wss://") + "/ws/echo",
            origin=stack.tenant_origin,
        )
        await ws.send_str("hello")
        assert await ws.receive_str() == "hello"
        status, page = await get(owner, f"{stack.account_origin}/instances/{home}")
        assert BOB in page

        # The owner removes him: the open WebSocket closes and the next request is refused.
        status, _, location = await post(owner, f"/instances/{home}/members/{bob.id}/remove")
        assert (status, location) == (303, f"/instances/{home}?done=member-removed")
        assert await closed_within(ws, 10) == 1008
        await ws.close()
        async with guest.request("GET", stack.tenant_origin + "/") as r:
            assert r.status == 401
        async with guest.request("GET", stack.tenant_origin + "/", headers=NAVIGATE) as r:
            location = r.headers["Location"]
        status, page = await get(guest, location)
        assert status == 404
        assert "no access" in page.lower()


async def test_invitation_for_someone_else_is_refused(stack: Stack) -> None:
    await stack.relay.accounts.create_user(BOB, PASSWORD)
    token, _ = await stack.relay.accounts.sharing.invite(
        (await stack.relay.accounts.get_user_by_email(stack.email)).id,  # type: ignore[union-attr]
        stack.instance_id,
        "carol@example.com",
        lifetime=None,
    )
    async with as_person(stack, BOB) as guest:
        await account_sign_in(guest)
        status, page = await get(guest, f"{stack.account_origin}/invitations/accept?token={token}")
        assert status == 200
        assert "this invitation is for carol@example.com" in page
        assert 'name="token"' not in page
        status, page, _ = await post(guest, "/invitations/accept", {"token": token})
        assert status == 403
        assert "carol@example.com" in page
        status, _ = await get(guest, f"{stack.account_origin}/invitations/accept?token=nope")
        assert status == 404
    assert not await stack.relay.accounts.can_access(
        (await stack.relay.accounts.get_user_by_email(BOB)).id,  # type: ignore[union-attr]
        stack.instance_id,
    )


async def test_member_leaves_a_shared_home(stack: Stack) -> None:
    accounts = stack.relay.accounts
    bob = await accounts.create_user(BOB, PASSWORD)
    await accounts.add_member(stack.instance_id, bob.id)
    async with as_person(stack, BOB) as guest:
        assert (await guest.sign_in("/")).status == 200
        ws = await guest.session.ws_connect(
            stack.tenant_origin.replace("https://", "wss://") + "/ws/echo",
            origin=stack.tenant_origin,
        )
        status, page = await get(guest, stack.account_origin + "/")
        assert "Shared with you by owner@example.com" in page
        assert f"/instances/{stack.instance_id}/leave" in page
        # A member cannot manage the home: 403, only the owner can (issue 16's roles).
        status, _ = await get(guest, f"{stack.account_origin}/instances/{stack.instance_id}")
        assert status == 403
        status, _, _ = await post(guest, f"/instances/{stack.instance_id}/rename", {"name": "x"})
        assert status == 403
        status, _, _ = await post(
            guest, f"/instances/{stack.instance_id}/leave", origin=stack.tenant_origin
        )
        assert status == 403
        status, _, location = await post(guest, f"/instances/{stack.instance_id}/leave")
        assert (status, location) == (303, "/")
        assert await closed_within(ws, 10) == 1008
        await ws.close()
        async with guest.request("GET", stack.tenant_origin + "/") as r:
            assert r.status == 401
        status, page = await get(guest, stack.account_origin + "/")
        assert "Shared with you" not in page
        # Leaving twice, or a home one never had, is the same 404.
        status, _, _ = await post(guest, f"/instances/{stack.instance_id}/leave")
        assert status == 404
    assert await accounts.can_access(
        (await accounts.get_user_by_email(stack.email)).id,  # type: ignore[union-attr]
        stack.instance_id,
    )


# ---------------------------------------------------------------- app links


async def test_app_link_opens_the_home_without_a_cookie(stack: Stack) -> None:
    home = stack.instance_id
    async with stack.browser() as owner, app(stack) as phone:
        await account_sign_in(owner)
        url = await create_app_link(owner, home, "Anna's phone")
        host = urlsplit(url).hostname
        assert host is not None
        label = host.split(".", 1)[0]
        assert re.fullmatch(r"[a-z2-7]{32}", label)
        assert url == f"https://{label}.{stack.config.tenant_domain}{stack.config.port_suffix}"

        status, body = await app_get(phone, url + "/")
        assert status == 200
        assert "Home Assistant stand-in" in body
        # Home Assistant's own login still guards the API: the relay adds no credential.
        status, _ = await app_get(phone, url + "/api/")
        assert status == 401
        # Relay cookies never reach Home Assistant, and the public host is the app link's.
        status, echoed = await app_get(
            phone, url + "/echo", {"Cookie": f"{SESSION_COOKIE}=forged; ha=1"}
        )
        assert status == 200
        headers = {k.lower(): v for k, v in json.loads(echoed)["headers"]}
        assert headers.get("cookie") == "ha=1"
        assert headers["x-forwarded-host"] == urlsplit(url).netloc
        # The relay's own paths do not exist here (no hand-off on an app-link host).
        status, _ = await app_get(phone, url + "/.homeport/handoff?code=x")
        assert status == 404

        # WebSockets: no Origin (the app) or this host's own origin pass; others are refused.
        ws_url = url.replace("https://", "wss://") + "/ws/echo"
        async with phone.ws_connect(ws_url) as ws:
            await ws.send_str("ping")
            assert await ws.receive_str() == "ping"
        for origin in (stack.tenant_origin, stack.account_origin, "null"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await phone.ws_connect(ws_url, origin=origin)
            assert refused.value.status == 403
        ws = await phone.ws_connect(ws_url, origin=url)
        await ws.send_str("still here")
        assert await ws.receive_str() == "still here"

        # Listed with its name and last use.
        status, page = await get(owner, f"{stack.account_origin}/instances/{home}")
        assert "Anna&#39;s phone" in page
        assert "last used not yet" not in page

        # Revoked: the open WebSocket closes, and the host answers like an unknown host.
        (link_id,) = await link_ids(stack, home)
        status, _, _ = await post(owner, f"/instances/{home}/app-links/{link_id}/revoke")
        assert status == 303
        assert await closed_within(ws, 10) == 1008
        await ws.close()
        assert await app_get(phone, url + "/") == await no_home(stack, phone)

        # A valid tenant session cookie is no substitute for a (revoked) app link.
        async with stack.browser() as person:
            await person.sign_in("/")
            token = next(m.value for m in person.session.cookie_jar if m.key == SESSION_COOKIE)
        assert await app_get(phone, url + "/", {"Cookie": f"{SESSION_COOKIE}={token}"}) == (
            await no_home(stack, phone)
        )


async def test_wrong_labels_get_the_unknown_host_answer(stack: Stack) -> None:
    async with stack.browser() as owner, app(stack) as phone:
        await account_sign_in(owner)
        url = await create_app_link(owner, stack.instance_id, "phone")
        label = urlsplit(url).hostname.split(".", 1)[0]  # type: ignore[union-attr]
        suffix = f".{stack.config.tenant_domain}{stack.config.port_suffix}"
        assert (await app_get(phone, url + "/"))[0] == 200
        wrong = [
            label[:-1],  # short
            label[:-1] + ("a" if label[-1] != "a" else "b"),  # one character off
            label + "a",  # long
            "a" * 32,  # well-formed, unknown
            "nothere",
        ]
        for bad in wrong:
            assert await app_get(phone, f"https://{bad}{suffix}/") == await no_home(stack, phone), (
                bad
            )


async def test_app_link_of_one_home_never_reaches_another(stack: Stack, tmp_path: Path) -> None:
    async with (
        extra_tenant(stack, tmp_path, email="neighbour@example.com") as other,
        stack.browser() as owner_a,
        other.browser() as owner_b,
        app(stack) as phone,
    ):
        await account_sign_in(owner_a)
        await account_sign_in(owner_b)
        url_a = await create_app_link(owner_a, stack.instance_id, "A's phone")
        url_b = await create_app_link(owner_b, other.instance_id, "B's phone")
        for url, backend in ((url_a, stack.backend_url), (url_b, other.backend_url)):
            status, echoed = await app_get(phone, url + "/echo")
            assert status == 200
            headers = {k.lower(): v for k, v in json.loads(echoed)["headers"]}
            assert headers["host"] == urlsplit(backend).netloc
        # B cannot manage or revoke A's app link; A's keeps working.
        (link_a,) = await link_ids(stack, stack.instance_id)
        status, _, _ = await post(
            owner_b, f"/instances/{stack.instance_id}/app-links/{link_a}/revoke"
        )
        assert status == 404
        status, _, _ = await post(
            owner_b, f"/instances/{other.instance_id}/app-links/{link_a}/revoke"
        )
        assert status == 303
        assert (await app_get(phone, url_a + "/"))[0] == 200
        status, _ = await get(owner_b, f"{stack.account_origin}/instances/{stack.instance_id}")
        assert status == 404


# ------------------------------------------------------- linking, unlinking


async def test_link_by_code_on_the_web_is_throttled(stack: Stack, tmp_path: Path) -> None:
    statuses: list[AddonStatus] = []
    addon = make_addon(stack.config, stack.relay, stack.backend_url, tmp_path / "new", statuses)
    await addon.__aenter__()
    task = asyncio.create_task(addon.run_forever())
    try:
        async with asyncio.timeout(20):
            while addon.status.link_code is None:
                await asyncio.sleep(0.02)
        code = addon.status.link_code
        async with stack.browser() as owner:
            await account_sign_in(owner)
            status, page = await get(owner, stack.account_origin + "/link")
            assert status == 200
            assert 'for="code"' in page
            status, _, _ = await post(
                owner, "/link", {"code": code, "name": "Cabin"}, origin=stack.tenant_origin
            )
            assert status == 403
            wrong = "ZZZZZ-ZZZZZ" if code != "ZZZZZ-ZZZZZ" else "YYYYY-YYYYY"
            answers = [
                (await post(owner, "/link", {"code": wrong, "name": "Cabin"}))[0] for _ in range(4)
            ]
            # A bad name is answered without counting, and does not reset the count.
            status, page, _ = await post(owner, "/link", {"code": wrong, "name": " "})
            assert status == 400
            assert "1 to 64" in page
            answers += [
                (await post(owner, "/link", {"code": wrong, "name": "Cabin"}))[0] for _ in range(2)
            ]
            assert answers == [400] * 5 + [429]
            # While the delay runs, even the right code is not checked.
            async with owner.request(
                "POST",
                stack.account_origin + "/link",
                data={"code": code, "name": "Cabin"},
                headers={"Origin": stack.account_origin},
            ) as r:
                assert r.status == 429
                retry = float(r.headers["Retry-After"])
            await asyncio.sleep(retry + 0.1)
            status, _, location = await post(
                owner, "/link", {"code": code.lower(), "name": "Cabin"}
            )
            assert status == 303
            instance_id = location.split("/")[2].split("?")[0]
            async with asyncio.timeout(20):
                while stack.relay.hub.tunnel_for(instance_id) is None:
                    await asyncio.sleep(0.05)
            status, page = await get(owner, stack.account_origin + location)
            assert status == 200
            assert "Cabin" in page
            # The account counter was reset by the success.
            status, _, _ = await post(owner, "/link", {"code": wrong, "name": "x"})
            assert status == 400
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await addon.__aexit__(None, None, None)


async def test_unlink_closes_the_tunnel_and_retires_the_name(stack: Stack) -> None:
    home = stack.instance_id
    old_code = stack.addon.status.link_code
    async with stack.browser() as owner, app(stack) as phone:
        await account_sign_in(owner)
        url = await create_app_link(owner, home, "phone")
        page = await owner.sign_in("/")
        assert page.status == 200
        ws = await owner.session.ws_connect(
            stack.tenant_origin.replace("https://", "wss://") + "/ws/echo",
            origin=stack.tenant_origin,
        )
        status, page, _ = await post(owner, f"/instances/{home}/unlink", {})
        assert status == 400  # not confirmed: nothing happens
        assert stack.relay.hub.tunnel_for(home) is not None
        status, page, _ = await post(owner, f"/instances/{home}/unlink", {"confirm": "yes"})
        assert status == 200, page  # no secret here: the page itself says it is done
        assert "Home unlinked" in page
        assert stack.relay.hub.tunnel_for(home) is None
        assert await closed_within(ws, 10) is not None
        await ws.close()
        async with owner.request("GET", stack.tenant_origin + "/") as r:
            assert r.status == 401
        assert await app_get(phone, url + "/") == await no_home(stack, phone)
        # The add-on is told nothing secret; it asks for a new link code.
        async with asyncio.timeout(20):
            while stack.addon.status.link_code in (None, old_code):
                await asyncio.sleep(0.05)
        assert stack.addon.status.state is not State.CONNECTED
        assert await stack.relay.accounts.sharing.app_links(home) == []


# --------------------------------------------------------- second factor


async def test_owner_requires_a_second_factor(stack: Stack) -> None:
    accounts = stack.relay.accounts
    owner_user = await accounts.get_user_by_email(stack.email)
    assert owner_user is not None
    bob = await accounts.create_user(BOB, PASSWORD)
    await accounts.add_member(stack.instance_id, bob.id)
    home = stack.instance_id
    enrolment = await accounts.totp.start_enrolment(owner_user.id, owner_user.email)
    totp = pyotp.TOTP(enrolment.secret_base32)
    outcome, _ = await accounts.totp.confirm_enrolment(owner_user.id, totp.now(), ip="127.0.0.1")
    assert outcome.ok
    async with stack.browser() as owner, as_person(stack, BOB) as guest:
        assert (await guest.sign_in("/")).status == 200
        # The owner signs in with password and code.
        status, _, location = await post(
            owner, "/signin", {"email": stack.email, "password": PASSWORD, "next": "/"}
        )
        assert (status, location) == (303, "/signin/totp")
        # The next step's code: the current one was used up by the enrolment (replay rule),
        # and T+1 is inside the accepted window.
        status, _, _ = await post(owner, "/signin/totp", {"code": totp.at(time.time() + 30)})
        assert status == 303
        status, _, location = await post(
            owner, f"/instances/{home}/second-factor", {"required": "yes"}
        )
        assert (status, location) == (303, f"/instances/{home}?done=policy")
        # Bob's open session ended, and the hand-off now refuses him with a clear page.
        async with guest.request("GET", stack.tenant_origin + "/") as r:
            assert r.status == 401
        async with guest.request("GET", stack.tenant_origin + "/", headers=NAVIGATE) as r:
            location = r.headers["Location"]
        await account_sign_in(guest)
        status, page = await get(guest, location)
        assert status == 403
        assert "requires two-step verification" in page
        # The owner, signed in with a code, still gets in.
        assert (await owner.sign_in("/")).status == 200
