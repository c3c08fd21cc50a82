"""End to end: the session list, and revocation that cuts open streams and WebSockets at once.

Real relay, real add-on, real TLS on loopback. The relay's periodic sweep is
stopped in the tests of the immediate path, so only the revocation itself can
be what ends the streams.
"""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest
from stack import PASSWORD, Browser, Stack
from traffic import OpenTraffic

from homeport.relay.live import SESSION_ENDED_CODE

pytestmark = [pytest.mark.timeout(120), pytest.mark.stack(housekeeping=False)]

FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
ENDS_WITHIN = 5.0  # generous for a loaded machine; the gate cache alone is 5 s, sweep stopped


async def _sessions_page(browser: Browser) -> str:
    async with browser.request("GET", browser.stack.account_origin + "/security/sessions") as r:
        assert r.status == 200
        return await r.text()


async def _post(browser: Browser, path: str, data: dict[str, str]) -> int:
    async with browser.request(
        "POST",
        browser.stack.account_origin + path,
        data=data,
        headers={"Origin": browser.stack.account_origin},
    ) as r:
        return r.status


async def _other_member(stack: Stack) -> str:
    email = "friend@example.com"
    friend = await stack.relay.accounts.create_user(email, PASSWORD)
    await stack.relay.accounts.add_member(stack.instance_id, friend.id)
    return email


async def test_page_lists_sessions_and_ending_one_cuts_its_streams(stack: Stack) -> None:
    accounts = stack.relay.accounts
    friend_email = await _other_member(stack)
    async with (
        stack.browser() as phone,
        stack.browser() as laptop,
        stack.browser() as friend,
    ):
        phone.session.headers["User-Agent"] = FIREFOX
        assert (await phone.sign_in("/")).status == 200
        assert (await friend.sign_in("/", email=friend_email)).status == 200
        await laptop.sign_in_account_site()
        victim, bystander = OpenTraffic(phone), OpenTraffic(friend)
        try:
            await victim.open()
            await bystander.open()

            page = await _sessions_page(laptop)
            owner = await accounts.get_user_by_email(stack.email)
            assert owner is not None
            rows = await accounts.list_sessions(owner.id)
            phone_tenant = next(r for r in rows if r.kind == "tenant")
            assert "This session" in page
            assert "Firefox on Windows" in page
            assert "Home: Home" in page
            assert "127.0.0.1" in page
            listed = {int(i) for i in re.findall(r'name="session" value="(\d+)"', page)}
            assert listed == {r.id for r in rows}  # the friend's sessions are not shown

            # A foreign Origin changes nothing.
            async with laptop.request(
                "POST",
                stack.account_origin + "/security/sessions/end",
                data={"session": str(phone_tenant.id)},
                headers={"Origin": stack.tenant_origin},
            ) as r:
                assert r.status == 403
            await asyncio.sleep(0.3)
            assert victim.still_open()

            started = time.monotonic()
            assert await _post(laptop, "/security/sessions/end", {"session": str(phone_tenant.id)})
            message = await victim.ended(ENDS_WITHIN)
            assert message.type is aiohttp.WSMsgType.CLOSE
            assert message.data == SESSION_ENDED_CODE
            assert message.extra == "session ended"
            assert time.monotonic() - started < ENDS_WITHIN

            # The other person's stream and WebSocket carry on.
            await asyncio.sleep(0.5)
            assert bystander.still_open()
            assert bystander.ws is not None
            await bystander.ws.send_str("still here")
            # The bystander's WebSocket read task takes the echo.
            assert bystander.ws_task is not None
            echo = await asyncio.wait_for(bystander.ws_task, 20)
            assert echo.data == "still here"

            # The phone's tenant cookie opens nothing now; its row is gone from the list.
            async with phone.request("GET", stack.tenant_origin + "/") as r:
                assert r.status == 401
            assert f'value="{phone_tenant.id}"' not in await _sessions_page(laptop)
        finally:
            await victim.close()
            await bystander.close()


async def test_sign_out_all_others_keeps_this_browser(stack: Stack) -> None:
    async with stack.browser() as phone, stack.browser() as laptop:
        assert (await phone.sign_in("/")).status == 200
        assert (await laptop.sign_in("/")).status == 200
        victim, mine = OpenTraffic(phone), OpenTraffic(laptop)
        try:
            await victim.open()
            await mine.open()
            page = await _sessions_page(laptop)
            assert "This browser" in page  # the laptop's own tenant session
            assert await _post(laptop, "/security/sessions/end-others", {}) == 303
            message = await victim.ended(ENDS_WITHIN)
            assert message.data == SESSION_ENDED_CODE
            await asyncio.sleep(0.5)
            assert mine.still_open()
            async with laptop.request("GET", stack.tenant_origin + "/") as r:
                assert r.status == 200
            async with phone.request("GET", stack.account_origin + "/security/sessions") as r:
                assert r.status == 303  # signed out: sent to sign in
        finally:
            await victim.close()
            await mine.close()


async def test_signing_out_cuts_streams_of_that_browser(stack: Stack) -> None:
    async with stack.browser() as phone:
        assert (await phone.sign_in("/")).status == 200
        traffic = OpenTraffic(phone)
        try:
            await traffic.open()
            assert await _post(phone, "/signout", {}) == 303
            assert (await traffic.ended(ENDS_WITHIN)).data == SESSION_ENDED_CODE
        finally:
            await traffic.close()


async def test_revocation_elsewhere_is_cut_by_the_sweep(stack: Stack) -> None:
    """The admin CLI (another process) revokes in the database only: the sweep cuts."""
    accounts = stack.relay.accounts
    async with stack.browser() as phone:
        assert (await phone.sign_in("/")).status == 200
        traffic = OpenTraffic(phone)
        try:
            await traffic.open()
            assert await stack.relay.housekeeping.sweep() == 0  # valid: nothing cut
            await asyncio.sleep(0.3)
            assert traffic.still_open()
            owner = await accounts.get_user_by_email(stack.email)
            assert owner is not None
            await accounts.set_user_disabled(owner.id, True)
            assert traffic.still_open()  # no in-process call was made...
            assert await stack.relay.housekeeping.sweep() == 1  # ...the sweep finds it
            assert (await traffic.ended(ENDS_WITHIN)).data == SESSION_ENDED_CODE
        finally:
            await traffic.close()


async def test_no_one_can_end_another_accounts_session(stack: Stack) -> None:
    accounts = stack.relay.accounts
    friend_email = await _other_member(stack)
    async with stack.browser() as owner_browser, stack.browser() as friend:
        assert (await friend.sign_in("/", email=friend_email)).status == 200
        await owner_browser.sign_in_account_site()
        friend_user = await accounts.get_user_by_email(friend_email)
        assert friend_user is not None
        friend_rows = await accounts.list_sessions(friend_user.id)
        assert friend_rows
        for row in friend_rows:
            assert await _post(owner_browser, "/security/sessions/end", {"session": str(row.id)})
        for bad in ("", "abc", "-1", "9" * 40):
            assert await _post(owner_browser, "/security/sessions/end", {"session": bad}) == 303
        assert {r.id for r in await accounts.list_sessions(friend_user.id)} == {
            r.id for r in friend_rows
        }
        async with friend.request("GET", stack.tenant_origin + "/") as r:
            assert r.status == 200


async def test_signing_out_this_session_from_the_list(stack: Stack) -> None:
    async with stack.browser() as laptop:
        await laptop.sign_in_account_site()
        page = await _sessions_page(laptop)
        (mine,) = re.findall(r'name="session" value="(\d+)"', page)
        async with laptop.request(
            "POST",
            stack.account_origin + "/security/sessions/end",
            data={"session": mine},
            headers={"Origin": stack.account_origin},
        ) as r:
            assert r.status == 303
            assert r.headers["Location"] == "/signin"
        async with laptop.request("GET", stack.account_origin + "/security/sessions") as r:
            assert r.status == 303  # the cookie is gone and the session with it
        assert await stack.relay.accounts.list_sessions(await _owner_id(stack)) == []


async def _owner_id(stack: Stack) -> int:
    owner = await stack.relay.accounts.get_user_by_email(stack.email)
    assert owner is not None
    return owner.id
