"""End to end: add a passkey on the account site, sign in with it without a password,
use it as the second step after a password, and every refusal on the way.

Real relay, add-on and stand-in on loopback TLS; the software authenticator signs
for real with the relay's relying-party id (the account host) and origin.
"""

from __future__ import annotations

import re
from typing import Any

import pyotp
from authenticator import SoftAuthenticator, b64url
from stack import Browser, Stack

from homeport.relay.site.passkeys import CEREMONY_COOKIE
from homeport.relay.site.signin_flow import ACCOUNT_COOKIE


def _cookie(browser: Browser, name: str) -> str | None:
    return next((m.value for m in browser.session.cookie_jar if m.key == name), None)


async def _json(
    browser: Browser, stack: Stack, path: str, body: dict[str, Any], *, origin: str | None = None
) -> tuple[int, dict[str, Any]]:
    async with browser.request(
        "POST",
        stack.account_origin + path,
        json=body,
        headers={"Origin": origin or stack.account_origin},
    ) as r:
        return r.status, await r.json()


async def _add_passkey(browser: Browser, stack: Stack, auth: SoftAuthenticator) -> None:
    status, body = await _json(
        browser, stack, "/security/passkeys/options", {"name": "Laptop", "password": stack.password}
    )
    assert status == 200, body
    credential = auth.create(body["options"])
    status, body = await _json(
        browser, stack, "/security/passkeys/register", {"credential": credential}
    )
    assert (status, body) == (200, {"redirect": "/security"})


async def _passkey_sign_in(
    browser: Browser, stack: Stack, auth: SoftAuthenticator, next_path: str = "/"
) -> tuple[int, dict[str, Any]]:
    status, body = await _json(browser, stack, "/signin/passkey/options", {"next": next_path})
    assert status == 200, body
    response = auth.get(body["options"])
    return await _json(
        browser, stack, "/signin/passkey", {"credential": response, "next": next_path}
    )


async def _turn_on_totp(browser: Browser, stack: Stack) -> None:
    async with browser.request(
        "POST",
        stack.account_origin + "/security/totp/start",
        headers={"Origin": stack.account_origin},
    ) as r:
        assert (r.status, r.headers["Location"]) == (303, "/security/totp")
    async with browser.request("GET", stack.account_origin + "/security/totp") as r:
        match = re.search(r"secret=([A-Z2-7]+)", await r.text())
    assert match is not None
    async with browser.request(
        "POST",
        stack.account_origin + "/security/totp/confirm",
        data={"code": pyotp.TOTP(match.group(1)).now()},
        headers={"Origin": stack.account_origin},
    ) as r:
        assert r.status == 303
        assert r.headers["Location"].startswith("/security/recovery-codes?shown=")


def _device(stack: Stack) -> SoftAuthenticator:
    return SoftAuthenticator(origin=stack.account_origin, rp_id=stack.config.account_host)


async def test_passwordless_sign_in_opens_the_home(stack: Stack) -> None:
    auth = _device(stack)
    async with stack.browser() as browser:
        assert (await browser.sign_in("/")).status == 200
        await _add_passkey(browser, stack, auth)
        async with browser.request("GET", stack.account_origin + "/security") as r:
            page = await r.text()
        assert "Laptop" in page
        assert 'src="/static/passkeys.js"' in page

    async with stack.browser() as browser:
        status, body = await _passkey_sign_in(browser, stack, auth, "/")
        assert (status, body) == (200, {"redirect": "/"})
        assert _cookie(browser, ACCOUNT_COOKIE)
        # The session counts as a second-factor one (owners may require that).
        user = await stack.relay.accounts.get_user_by_email(stack.email)
        assert user is not None
        latest = max(await stack.relay.accounts.list_sessions(user.id), key=lambda r: r.id)
        assert (latest.kind, latest.second_factor) == ("account", True)
        # With that account session the tenant walk needs no password at all.
        async with browser.request("GET", stack.account_origin + "/") as r:
            assert r.status == 200
            assert "Your homes" in await r.text()
        stack.password = "not the password"  # sign_in would fail if it got asked
        page = await browser.sign_in("/")
        assert page.status == 200
        assert "Home Assistant stand-in" in await page.text()


async def test_adding_a_passkey_needs_the_password_and_the_own_origin(stack: Stack) -> None:
    async with stack.browser() as browser:
        assert (await browser.sign_in("/")).status == 200
        status, body = await _json(
            browser, stack, "/security/passkeys/options", {"name": "x", "password": "wrong"}
        )
        assert status == 401
        assert "password" in body["error"]
        status, _body = await _json(
            browser,
            stack,
            "/security/passkeys/options",
            {"name": "x", "password": stack.password},
            origin=stack.tenant_origin,
        )
        assert status == 403  # a tenant page cannot add a passkey
        # A form post (what a cross-site page could send) is not JSON: refused.
        async with browser.request(
            "POST",
            stack.account_origin + "/security/passkeys/options",
            data={"password": stack.password},
            headers={"Origin": stack.account_origin},
        ) as r:
            assert r.status == 415
    async with stack.browser() as stranger:
        status, _body = await _json(
            stranger, stack, "/security/passkeys/options", {"password": stack.password}
        )
        assert status == 401  # not signed in


async def test_the_ceremony_belongs_to_the_browser_that_started_it(stack: Stack) -> None:
    auth = _device(stack)
    async with stack.browser() as browser:
        assert (await browser.sign_in("/")).status == 200
        await _add_passkey(browser, stack, auth)
    async with stack.browser() as victim, stack.browser() as attacker:
        status, body = await _json(victim, stack, "/signin/passkey/options", {})
        assert status == 200
        assert _cookie(victim, CEREMONY_COOKIE)
        response = auth.get(body["options"])
        # The attacker holds a valid response to the victim's challenge, but not
        # the victim's ceremony cookie: refused, and no session for anybody.
        status, body = await _json(attacker, stack, "/signin/passkey", {"credential": response})
        assert status == 401
        assert _cookie(attacker, ACCOUNT_COOKIE) is None
        # A response to another site's challenge is refused in the victim's browser too.
        status, body = await _json(victim, stack, "/signin/passkey/options", {})
        forged = _device(stack)
        forged.key, forged.credential_id = auth.key, auth.credential_id
        forged.user_handle, forged.sign_count = auth.user_handle, auth.sign_count
        forged.origin = "https://homeport.localhost.evil.test"
        status, body = await _json(
            victim, stack, "/signin/passkey", {"credential": forged.get(body["options"])}
        )
        assert status == 401
        assert _cookie(victim, ACCOUNT_COOKIE) is None


async def test_passkey_as_the_second_step_after_a_password(stack: Stack) -> None:
    auth = _device(stack)
    async with stack.browser() as browser:
        assert (await browser.sign_in("/")).status == 200
        await _add_passkey(browser, stack, auth)
        await _turn_on_totp(browser, stack)

    async with stack.browser() as browser:
        async with browser.request(
            "POST",
            stack.account_origin + "/signin",
            data={"email": stack.email, "password": stack.password, "next": "/security"},
            headers={"Origin": stack.account_origin},
        ) as r:
            assert (r.status, r.headers["Location"]) == (303, "/signin/totp")
        async with browser.request("GET", stack.account_origin + "/signin/totp") as r:
            page = await r.text()
        assert "Use a passkey" in page
        assert _cookie(browser, ACCOUNT_COOKIE) is None
        # The pending sign-in names the account: the passkey finishes it and the
        # pending step's own return path wins over the request's.
        status, body = await _passkey_sign_in(browser, stack, auth, "/elsewhere")
        assert (status, body) == (200, {"redirect": "/security"})
        assert _cookie(browser, ACCOUNT_COOKIE)


async def test_another_accounts_passkey_cannot_finish_my_second_step(stack: Stack) -> None:
    mine = _device(stack)
    async with stack.browser() as browser:
        assert (await browser.sign_in("/")).status == 200
        await _add_passkey(browser, stack, mine)
        await _turn_on_totp(browser, stack)
    # Mallory has her own account and passkey, and Alice's password.
    await stack.relay.accounts.create_user(
        "mallory@example.com", "an entirely different passphrase"
    )
    theirs = _device(stack)
    async with stack.browser() as mallory:
        async with mallory.request(
            "POST",
            stack.account_origin + "/signin",
            data={"email": "mallory@example.com", "password": "an entirely different passphrase"},
            headers={"Origin": stack.account_origin},
        ) as r:
            assert r.status == 303
        await _add_passkey_as(mallory, stack, theirs, "an entirely different passphrase")
    async with stack.browser() as browser:
        async with browser.request(
            "POST",
            stack.account_origin + "/signin",
            data={"email": stack.email, "password": stack.password, "next": "/"},
            headers={"Origin": stack.account_origin},
        ) as r:
            assert r.headers["Location"] == "/signin/totp"
        status, body = await _json(browser, stack, "/signin/passkey/options", {})
        assert status == 200
        # Only Alice's passkey is asked for; Mallory's valid response is refused.
        allowed = [c["id"] for c in body["options"]["allowCredentials"]]
        assert allowed == [b64url(mine.credential_id)]
        status, _body = await _json(
            browser, stack, "/signin/passkey", {"credential": theirs.get(body["options"])}
        )
        assert status == 401
        assert _cookie(browser, ACCOUNT_COOKIE) is None


async def _add_passkey_as(
    browser: Browser, stack: Stack, auth: SoftAuthenticator, password: str
) -> None:
    status, body = await _json(
        browser, stack, "/security/passkeys/options", {"name": "Mine", "password": password}
    )
    assert status == 200, body
    status, body = await _json(
        browser, stack, "/security/passkeys/register", {"credential": auth.create(body["options"])}
    )
    assert status == 200, body


async def test_removing_a_passkey_stops_it(stack: Stack) -> None:
    auth = _device(stack)
    async with stack.browser() as browser:
        assert (await browser.sign_in("/")).status == 200
        await _add_passkey(browser, stack, auth)
        async with browser.request("GET", stack.account_origin + "/security") as r:
            match = re.search(r'name="id" value="(\d+)"', await r.text())
        assert match is not None
        async with browser.request(
            "POST",
            stack.account_origin + "/security/passkeys/delete",
            data={"id": match.group(1)},
            headers={"Origin": stack.tenant_origin},
        ) as r:
            assert r.status == 403  # cross-site: nothing removed
        async with browser.request(
            "POST",
            stack.account_origin + "/security/passkeys/delete",
            data={"id": match.group(1)},
            headers={"Origin": stack.account_origin},
        ) as r:
            assert r.status == 303
    async with stack.browser() as browser:
        status, _body = await _passkey_sign_in(browser, stack, auth)
        assert status == 401


async def test_a_disabled_accounts_passkey_gets_the_ordinary_refusal(stack: Stack) -> None:
    """Not a 500 with a traceback after the counter moved: the same 401 as any failure."""
    auth = _device(stack)
    async with stack.browser() as browser:
        assert (await browser.sign_in("/")).status == 200
        await _add_passkey(browser, stack, auth)
    user = await stack.relay.accounts.get_user_by_email(stack.email)
    assert user is not None
    await stack.relay.accounts.set_user_disabled(user.id, True)
    async with stack.browser() as browser:
        status, body = await _passkey_sign_in(browser, stack, auth)
        assert (status, body) == (401, {"error": "That passkey did not work here. Try again."})
        assert not _cookie(browser, ACCOUNT_COOKIE)
    [row] = await stack.relay.accounts.passkeys.list(user.id)
    assert row.sign_count == 0, "the counter did not move"


async def test_starting_passkey_sign_ins_is_limited_per_network(stack: Stack) -> None:
    """Each start stores a challenge for 5 minutes and needs no account: bounded per network."""
    async with stack.browser(source_ip="127.0.0.3") as flooder:
        for _ in range(30):
            status, _body = await _json(flooder, stack, "/signin/passkey/options", {"next": "/"})
            assert status == 200
        async with flooder.request(
            "POST",
            stack.account_origin + "/signin/passkey/options",
            json={"next": "/"},
            headers={"Origin": stack.account_origin},
        ) as r:
            assert r.status == 429
            assert int(r.headers["Retry-After"]) > 0
            assert "Too many" in (await r.json())["error"]
    # Someone on another network starts, and signs in, as usual.
    auth = _device(stack)
    async with stack.browser() as browser:
        assert (await browser.sign_in("/")).status == 200
        await _add_passkey(browser, stack, auth)
    async with stack.browser(source_ip="127.0.0.4") as other:
        assert (await _passkey_sign_in(other, stack, auth))[0] == 200
