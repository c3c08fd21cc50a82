"""End to end: enrol TOTP through the account pages, then sign in with password + code.

Real relay, add-on and stand-in on loopback TLS; the browser posts the forms
with the account site's Origin like a real one would.
"""

from __future__ import annotations

import re
import time

import pyotp
from stack import Browser, Stack

from homeport.relay.site.signin_flow import ACCOUNT_COOKIE, PENDING_COOKIE

NAVIGATE = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate"}


def _cookie(browser: Browser, name: str) -> str | None:
    for morsel in browser.session.cookie_jar:
        if morsel.key == name:
            return morsel.value
    return None


async def _post(
    browser: Browser, stack: Stack, path: str, data: dict[str, str]
) -> tuple[int, str, str]:
    async with browser.request(
        "POST", stack.account_origin + path, data=data, headers={"Origin": stack.account_origin}
    ) as r:
        return r.status, await r.text(), r.headers.get("Location", "")


async def _password(browser: Browser, stack: Stack) -> tuple[int, str, str]:
    return await _post(
        browser, stack, "/signin", {"email": stack.email, "password": stack.password, "next": "/"}
    )


async def _enrol(stack: Stack) -> tuple[pyotp.TOTP, list[str]]:
    async with stack.browser() as browser:
        page = await browser.sign_in("/")
        assert page.status == 200
        async with browser.request("GET", stack.account_origin + "/security") as r:
            assert r.status == 200
            assert "Set up an authenticator app" in await r.text()
        async with browser.request(
            "POST",
            stack.account_origin + "/security/totp/start",
            headers={"Origin": stack.tenant_origin},
        ) as r:
            assert r.status == 403  # a tenant page cannot drive account actions
        status, body, location = await _post(browser, stack, "/security/totp/start", {})
        assert (status, location) == (303, "/security/totp")
        async with browser.request("GET", stack.account_origin + location) as r:
            body = await r.text()
        assert "otpauth://totp/" in body
        match = re.search(r"secret=([A-Z2-7]+)", body)
        assert match is not None
        totp = pyotp.TOTP(match.group(1))
        status, body, _ = await _post(browser, stack, "/security/totp/confirm", {"code": "12345"})
        assert status == 400
        assert "not right" in body
        status, body, location = await _post(
            browser, stack, "/security/totp/confirm", {"code": totp.now()}
        )
        assert status == 303, body
        async with browser.request("GET", stack.account_origin + location) as r:
            body = await r.text()
        codes = re.findall(r"<code>([a-z2-7-]{29})</code>", body)
        assert len(codes) == 10
        status, _, location = await _post(browser, stack, "/signout", {})
        assert status == 303
        assert location == "/signin"
    return totp, codes


async def test_enrol_then_sign_in_with_code(stack: Stack) -> None:
    totp, codes = await _enrol(stack)
    async with stack.browser() as browser:
        status, _, location = await _password(browser, stack)
        assert status == 303
        assert location == "/signin/totp"
        assert _cookie(browser, ACCOUNT_COOKIE) is None  # no session before the code
        pending = _cookie(browser, PENDING_COOKIE)
        assert pending
        async with browser.request("GET", stack.account_origin + "/signin/totp") as r:
            body = await r.text()
            assert r.status == 200
            assert "Authentication code" in body
            assert "Verify" in body
            assert "Use a recovery code" in body
        async with browser.request("GET", stack.account_origin + "/") as r:
            assert r.status == 303
            assert r.headers["Location"] == "/signin"
        right = totp.at(time.time() + 30)  # T+1: the enrolment already used step T
        wrong = f"{(int(right) + 1) % 1_000_000:06d}"
        status, body, _ = await _post(browser, stack, "/signin/totp", {"code": wrong})
        assert status == 401
        assert "not right" in body
        assert "Authentication code" in body
        status, _, location = await _post(browser, stack, "/signin/totp", {"code": right})
        assert status == 303
        assert location == "/"
        token = _cookie(browser, ACCOUNT_COOKIE)
        assert token
        assert token != pending
        # the pending record is used up: replaying the cookie does nothing
        status, _, location = await _post(browser, stack, "/signin/totp", {"code": right})
        assert status == 303
        assert location == "/signin"
        async with browser.session.get(stack.tenant_origin + "/", headers=NAVIGATE) as r:
            assert r.status == 200
            assert str(r.url).startswith(stack.tenant_origin)

    # a recovery code works once
    async with stack.browser() as browser:
        await _password(browser, stack)
        status, _, location = await _post(
            browser, stack, "/signin/totp", {"recovery_code": codes[0]}
        )
        assert status == 303
        assert location == "/"
    async with stack.browser() as browser:
        await _password(browser, stack)
        status, body, _ = await _post(browser, stack, "/signin/totp", {"recovery_code": codes[0]})
        assert status == 401
        assert "Recovery code" in body


async def test_wrong_codes_are_throttled(stack: Stack) -> None:
    totp, _ = await _enrol(stack)
    async with stack.browser() as browser:
        status, _, _ = await _password(browser, stack)
        assert status == 303
        right = totp.at(time.time() + 30)
        wrong = f"{(int(right) + 1) % 1_000_000:06d}"
        statuses = []
        started = time.monotonic()
        for _ in range(6):
            status, _, _ = await _post(browser, stack, "/signin/totp", {"code": wrong})
            statuses.append(status)
        assert time.monotonic() - started < 10
        assert statuses == [401] * 5 + [429]
        # even the right code is refused unchecked while the delay runs
        status, _, _ = await _post(browser, stack, "/signin/totp", {"code": right})
        assert status == 429
        assert _cookie(browser, ACCOUNT_COOKIE) is None
