"""End to end: the sign-in hand-off code is used up by any presentation (R-SES-06).

A hand-off link that reaches a browser which never started the sign-in (a
leaked link, or a page pushing someone into the attacker's session: login
CSRF) has no state cookie on the tenant host.  It must be refused there *and*
be gone for the browser it was made for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from stack import Browser, Stack, start_stack
from yarl import URL

from homeport.relay.tenant import SESSION_COOKIE, STATE_COOKIE

NAVIGATE = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate"}


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with start_stack(tmp_path) as running:
        yield running


def _cookies(browser: Browser) -> dict[str, str]:
    return {c.key: c.value for c in browser.session.cookie_jar}


async def _handoff_link(browser: Browser, stack: Stack) -> URL:
    """Walk a signed-in browser from the tenant host to its hand-off link (not opened)."""
    async with browser.request("GET", stack.tenant_origin + "/", headers=NAVIGATE) as r:
        assert r.status == 303
        connect = r.url.join(URL(r.headers["Location"]))
    assert STATE_COOKIE in _cookies(browser)
    async with browser.request("GET", str(connect), headers=NAVIGATE) as r:
        assert r.status == 303, await r.text()
        link = r.url.join(URL(r.headers["Location"]))
    assert link.path == "/.homeport/handoff"
    assert link.query.get("code")
    return link


async def test_a_code_shown_without_the_state_cookie_is_used_up(stack: Stack) -> None:
    async with stack.browser() as browser, stack.browser() as elsewhere:
        await browser.sign_in_account_site()
        link = await _handoff_link(browser, stack)
        async with elsewhere.request("GET", str(link), headers=NAVIGATE) as r:
            assert r.status == 400
            assert "cannot be used" in await r.text()
        assert SESSION_COOKIE not in _cookies(elsewhere)
        # The browser the code was made for, with the right state cookie: too late.
        async with browser.request("GET", str(link), headers=NAVIGATE) as r:
            assert r.status == 400
        assert SESSION_COOKIE not in _cookies(browser)
        # A fresh hand-off in that browser works (the refusal above is the code's, not its).
        link = await _handoff_link(browser, stack)
        async with browser.request("GET", str(link), headers=NAVIGATE) as r:
            assert r.status == 303
        assert SESSION_COOKIE in _cookies(browser)
