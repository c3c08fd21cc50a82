"""End to end: new passwords checked against a breached-password range API (R-PWD-03).

The relay is told the base URL of a local stand-in of the range API
(``tests/support/pwned_range.py``; the real service is never contacted) and
checks every new password: on the password page (in Chromium), at sign-up and
at a reset by mail (real SMTP to an aiosmtpd sink). When the service does not
answer in time or answers an error, the password is let through.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from email_flows import get, post
from playwright.async_api import expect
from pwned_range import RangeService
from smtp_sink import SmtpSink
from stack import Stack, start_stack

from homeport.mail.settings import SmtpSettings

if TYPE_CHECKING:
    from browser import Chromium

pytest_plugins = ("browser",)
pytestmark = pytest.mark.timeout(180)

LEAKED = "correct horse battery staple leaked"
FRESH = "an unusual phrase nobody has leaked yet"
NEWCOMER = "newcomer@example.com"


@pytest.fixture
async def service() -> AsyncIterator[RangeService]:
    async with RangeService(breached={LEAKED: 52}) as running:
        yield running


@pytest.fixture
def stack_options(service: RangeService) -> dict[str, Any]:
    return {"breached_passwords_url": service.url, "breached_passwords_timeout": 1.0}


async def test_password_page_refuses_a_breached_password_in_chromium(
    stack: Stack, chromium: Chromium, service: RangeService
) -> None:
    async with chromium.person() as owner:
        page = owner.page
        await page.goto(stack.account_origin + "/signin")
        await page.get_by_label("Email").fill(stack.email)
        await page.get_by_label("Password").fill(stack.password)
        await page.get_by_role("button", name="Sign in", exact=True).click()
        await expect(page.get_by_role("heading", name="Your homes")).to_be_visible()

        async def change(new: str) -> None:
            await page.goto(stack.account_origin + "/security/password")
            await page.get_by_label("Current password").fill(stack.password)
            await page.get_by_label("New password", exact=True).fill(new)
            await page.get_by_label("New password again").fill(new)
            await page.get_by_role("button", name="Change password").click()

        await change(LEAKED)
        await expect(page.get_by_role("alert")).to_have_text(re.compile("data breach"))
        assert service.requests, "the relay asked the range service"
        assert await stack.relay.accounts.authenticate(stack.email, stack.password) is not None

        # The service stops answering in time: the change goes through (fail open).
        service.delay = 5.0
        started = time.monotonic()
        await change(LEAKED)
        await expect(page.get_by_role("status")).to_contain_text("Your password is changed")
        assert time.monotonic() - started < 5.0
        assert owner.csp_errors() == []
        assert owner.page_errors == []
    assert await stack.relay.accounts.authenticate(stack.email, LEAKED) is not None


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


async def test_sign_up_and_reset_refuse_breached_passwords(
    tmp_path: Path, service: RangeService, sink: SmtpSink
) -> None:
    smtp = SmtpSettings(
        host="127.0.0.1", port=sink.port, security="none", mail_from="relay@example.com"
    )
    async with start_stack(
        tmp_path, smtp=smtp, signup=True, breached_passwords_url=service.url
    ) as stack:
        async with stack.browser() as visitor:
            status, page, _ = await post(
                visitor, stack, "/signup", {"email": NEWCOMER, "password": LEAKED}
            )
            assert status == 400
            assert "data breach" in page
            assert sink.to(NEWCOMER) == []
            status, page, _ = await post(
                visitor, stack, "/signup", {"email": NEWCOMER, "password": FRESH}
            )
            assert status == 200, page
            await sink.wait_for(NEWCOMER)

        async with stack.browser() as owner:
            status, _, _ = await post(owner, stack, "/signin/forgot", {"email": stack.email})
            assert status in (200, 303)
            mail = await sink.wait_for(stack.email)
            link = re.search(r"https://\S+/signin/reset\?t=[\w-]+", mail.text)
            assert link is not None, mail.text
            token = link.group(0).rsplit("=", 1)[1]
            status, _, _ = await get(owner, link.group(0))
            assert status == 200
            status, page, _ = await post(
                owner, stack, "/signin/reset", {"t": token, "password": LEAKED, "confirm": LEAKED}
            )
            assert status == 400
            assert "data breach" in page
            # The refusal did not use the link up.
            status, page, _ = await post(
                owner, stack, "/signin/reset", {"t": token, "password": FRESH, "confirm": FRESH}
            )
            assert status == 200, page
        assert await stack.relay.accounts.authenticate(stack.email, FRESH) is not None


async def test_sign_up_goes_through_when_the_service_is_down(
    tmp_path: Path, service: RangeService, sink: SmtpSink
) -> None:
    service.status = 503
    smtp = SmtpSettings(
        host="127.0.0.1", port=sink.port, security="none", mail_from="relay@example.com"
    )
    async with (
        start_stack(tmp_path, smtp=smtp, signup=True, breached_passwords_url=service.url) as stack,
        stack.browser() as visitor,
    ):
        status, page, _ = await post(
            visitor, stack, "/signup", {"email": NEWCOMER, "password": LEAKED}
        )
        assert status == 200, page
        await sink.wait_for(NEWCOMER)
    assert service.requests
