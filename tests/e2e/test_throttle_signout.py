"""End to end: sign-in throttling (R-RATE), link-code limits, and a sign-out that signs out.

Real relay, real add-on, real TLS on loopback; every loop is bounded in count
and time.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from stack import Stack, make_addon

from homeport.accounts.throttle import LINK_NETWORK
from homeport.addon.client import AddonStatus, State

SIGNIN_HEADERS = {"Accept": "text/html"}


async def _sign_in(stack: Stack, email: str, password: str) -> tuple[int, str, str | None]:
    async with (
        stack.browser() as browser,
        browser.request(
            "POST",
            stack.account_origin + "/signin",
            data={"email": email, "password": password, "next": "/"},
            headers={"Origin": stack.account_origin, **SIGNIN_HEADERS},
        ) as r,
    ):
        body = (await r.text()).replace(email, "EMAIL")
        return r.status, body, r.headers.get("Retry-After")


async def test_growing_delay_same_answer_for_known_and_unknown(stack: Stack) -> None:
    known, unknown = stack.email, "nobody-here@example.com"
    started = time.monotonic()
    answers: dict[str, list[tuple[int, str, str | None]]] = {known: [], unknown: []}
    for _ in range(7):
        answers[known].append(await _sign_in(stack, known, "wrong password, sorry"))
    # While the delay runs even the right password is not checked: 429. (Asked at
    # once: the 1 s delay must not run out while a busy machine hashes other attempts.)
    status, _body, retry = await _sign_in(stack, known, stack.password)
    assert status == 429
    assert retry is not None
    for _ in range(7):
        answers[unknown].append(await _sign_in(stack, unknown, "wrong password, sorry"))
    assert time.monotonic() - started < 30
    statuses = [a[0] for a in answers[known]]
    assert statuses == [401] * 5 + [429] * 2
    # Identical status, body and Retry-After whether or not the account exists.
    assert answers[known] == answers[unknown]
    assert answers[known][5][2] == "1"
    assert "Too many sign-in attempts" in answers[known][5][1]
    assert answers[known][0][1] != answers[known][5][1]

    # After waiting, the right password works and resets this network's counter...
    await asyncio.sleep(float(retry) + 0.1)
    status, _body, _retry = await _sign_in(stack, known, stack.password)
    assert status == 303
    status, _body, _retry = await _sign_in(stack, known, "wrong password, sorry")
    assert status == 401
    # ...but not the unknown address's (nothing else was proven): its 1 s delay
    # has run out, so one more failure is checked, and the delay after it doubles.
    status, _body, _retry = await _sign_in(stack, unknown, "wrong password, sorry")
    assert status == 401
    status, _body, retry = await _sign_in(stack, unknown, "wrong password, sorry")
    assert (status, retry) == (429, "2")


async def test_delays_keep_growing(stack: Stack) -> None:
    retries: list[int] = []
    deadline = time.monotonic() + 20
    for _ in range(12):  # bounded: 5 free failures, then 1 s, 2 s, 4 s of waiting
        status, _body, retry = await _sign_in(stack, "someone@example.com", "nope nope nope")
        if status == 429:
            assert retry is not None
            retries.append(int(retry))
            if len(retries) == 3:
                break
            await asyncio.sleep(int(retry) + 0.05)
        else:
            assert status == 401
        assert time.monotonic() < deadline
    assert retries == [1, 2, 4]


async def test_sign_out_ends_tenant_sessions_at_once(stack: Stack) -> None:
    async with stack.browser() as browser, stack.browser() as other:
        page = await browser.sign_in("/")
        assert page.status == 200
        assert "Home Assistant stand-in" in await page.text()
        assert (await other.sign_in("/")).status == 200
        # Warm the gate's cache: the revocation must not wait for its TTL.
        async with browser.request("GET", stack.tenant_origin + "/") as r:
            assert r.status == 200

        # A cross-site sign-out is refused and changes nothing.
        async with browser.request(
            "POST", stack.account_origin + "/signout", headers={"Origin": stack.tenant_origin}
        ) as r:
            assert r.status == 403
        async with browser.request("GET", stack.tenant_origin + "/") as r:
            assert r.status == 200

        async with browser.request(
            "POST", stack.account_origin + "/signout", headers={"Origin": stack.account_origin}
        ) as r:
            assert r.status == 303
            assert r.headers["Location"] == "/signin"

        # The old tenant cookie is still in the jar, but opens nothing any more.
        async with browser.request("GET", stack.tenant_origin + "/") as r:
            assert r.status == 401
            assert "stand-in" not in await r.text()
        async with browser.request(
            "GET",
            stack.tenant_origin + "/",
            headers={"Accept": "text/html", "Sec-Fetch-Mode": "navigate"},
        ) as r:
            assert r.status == 303
            location = r.headers["Location"]
            assert location.startswith(stack.account_origin + "/connect?")
        # ...and the account site asks for the password again instead of handing over.
        async with browser.request("GET", location) as r:
            assert r.status == 303
            assert r.headers["Location"].startswith("/signin?")

        # The same person's other browser is not signed out.
        async with other.request("GET", stack.tenant_origin + "/") as r:
            assert r.status == 200
            assert "stand-in" in await r.text()


async def test_link_codes_are_rate_limited_per_network(stack: Stack, tmp_path: Path) -> None:
    throttle = stack.relay.accounts.throttle
    key = [("link:net:127.0.0.1", LINK_NETWORK)]
    # The stack's own add-on already took one code; use up the rest of the hour.
    for _ in range(LINK_NETWORK.limit):
        if await throttle.attempt(key) > 0:
            break
    assert await throttle.attempt(key) > 0

    statuses: list[AddonStatus] = []
    addon = make_addon(stack.config, stack.relay, stack.backend_url, tmp_path / "new", statuses)
    await addon.__aenter__()
    task = asyncio.create_task(addon.run_forever())
    try:
        async with asyncio.timeout(15):
            while not any(s.last_error and "refused" in s.last_error for s in statuses):
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await addon.__aexit__(None, None, None)
    refused = next(s for s in statuses if s.last_error and "refused" in s.last_error)
    assert "too many link codes" in (refused.last_error or "")
    assert all(s.link_code is None for s in statuses)
    assert all(s.state is not State.CONNECTED for s in statuses)
