"""The rest of the account site in a real headless Chromium, as people use it.

A relay process with real mail (aiosmtpd on loopback) in front of the stand-in:

* a stranger signs up, confirms by the mailed link and signs in (the first sign-in
  is from a new network, so the mailed code is typed too);
* the owner turns on two-step verification on the page, signs out, and signs in
  again with password and authenticator code; reads the activity page and its CSV;
* the owner links a second home by the code its add-on shows, on the link page;
* the owner invites someone by email, who accepts in their own browser.

Keyboard and labels as a person would use them; the strict CSP applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import pyotp
import pytest
from email_flows import mail_standin
from playwright.async_api import Page, expect
from relay_process import Home, addon_config
from smtp_sink import SmtpSink

from homeport.addon.client import AddonClient
from homeport.addon.options import parse_options
from homeport.standin import start_standin
from homeport.tls.devca import DevCA

if TYPE_CHECKING:
    from browser import Chromium

pytest_plugins = ("browser",)
pytestmark = pytest.mark.timeout(240)

NEWCOMER = "newcomer@example.com"
NEWCOMER_PASSWORD = "a brand new passphrase of mine"
GUEST = "guest@example.com"
GUEST_PASSWORD = "a visitor with their own phrase"


async def _password_sign_in(page: Page, email: str, password: str) -> None:
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in", exact=True).click()


async def _type_mailed_code(page: Page, sink: SmtpSink, email: str, before: int) -> None:
    await expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    code = (await sink.wait_for(email, before + 1)).code()
    await page.get_by_label("Code from the email").fill(code)
    await page.keyboard.press("Enter")


async def test_sign_up_confirm_and_sign_in(
    tmp_path: Path, chromium: Chromium, dev_ca: DevCA
) -> None:
    async with (
        mail_standin(tmp_path, "--signup", "open", ca=dev_ca) as (home, sink),
        chromium.person() as person,
    ):
        page = person.page
        await page.goto(home.account_origin + "/signin")
        await page.get_by_role("link", name="Create an account").click()
        await expect(page.get_by_role("heading", name="Create an account")).to_be_visible()
        await page.get_by_label("Email").fill(NEWCOMER)
        await page.get_by_label("Password").fill(NEWCOMER_PASSWORD)
        await page.get_by_role("button", name="Create the account").click()
        await expect(page.get_by_role("status")).to_contain_text("Check your email")

        mail = await sink.wait_for(NEWCOMER)
        link = re.search(r"https://\S+/signup/verify\S*", mail.text)
        assert link is not None, mail.text
        await page.goto(link.group(0))
        await expect(page.get_by_role("heading", name="Confirm your account")).to_be_visible()
        await page.get_by_role("button", name="Create the account").click()

        await page.goto(home.account_origin + "/signin")
        before = len(sink.to(NEWCOMER))
        await _password_sign_in(page, NEWCOMER, NEWCOMER_PASSWORD)
        await _type_mailed_code(page, sink, NEWCOMER, before)
        await expect(page.get_by_role("heading", name="Your homes")).to_be_visible()
        assert person.csp_errors() == []
        assert person.page_errors == []


async def test_owner_pages_two_step_audit_link_and_invite(
    tmp_path: Path, chromium: Chromium, dev_ca: DevCA
) -> None:
    async with mail_standin(tmp_path, ca=dev_ca) as (home, sink):
        await home.relay.admin("admin", "user", "create", GUEST, stdin=GUEST_PASSWORD + "\n")
        async with chromium.person() as person:
            page = person.page
            await page.goto(home.account_origin + "/signin")
            await _password_sign_in(page, home.email, home.password)
            await _type_mailed_code(page, sink, home.email, 0)
            await expect(page.get_by_role("heading", name="Your homes")).to_be_visible()

            # Two-step verification, turned on from the page.
            await page.goto(home.account_origin + "/security")
            await page.get_by_role("button", name="Set up an authenticator app").click()
            secret = (await page.locator("#totp-key").inner_text()).replace(" ", "")
            totp = pyotp.TOTP(secret)
            await page.get_by_label("Authentication code").fill(totp.now())
            await page.get_by_role("button", name="Turn on").click()
            await expect(page.get_by_role("heading", name="Your recovery codes")).to_be_visible()

            # Sign out, then in again: password, then the code from the app.
            await page.goto(home.account_origin + "/")
            await page.get_by_role("button", name="Sign out").click()
            await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
            await _password_sign_in(page, home.email, home.password)
            await expect(page.get_by_role("heading", name="Two-step verification")).to_be_visible()
            field = page.get_by_label("Authentication code")
            await field.fill("000000" if totp.now() != "000000" else "111111")
            await page.keyboard.press("Enter")
            await expect(page.get_by_role("alert")).to_contain_text("not right")
            # The enrolment used this time step's code, and a code is good once (replay):
            # type the next step's code, as an app whose clock runs a little ahead shows
            # it (the relay accepts T-1..T+1; tests/accounts/test_totp.py covers the rules).
            enrolled = totp.timecode(datetime.now(UTC))
            fresh = totp.generate_otp(enrolled + 1)
            await page.get_by_label("Authentication code").fill(fresh)
            await page.keyboard.press("Enter")
            await expect(page.get_by_role("heading", name="Your homes")).to_be_visible()

            # The activity page lists it, and its CSV downloads.
            await page.goto(home.account_origin + "/security/audit")
            await expect(page.get_by_role("heading", name="Account activity")).to_be_visible()
            await expect(page.get_by_text("Authenticator app turned on").first).to_be_visible()
            async with page.expect_download() as download_info:
                await page.get_by_role("link", name="Download as CSV").click()
            csv_path = await (await download_info.value).path()
            assert "signin.succeeded" in Path(csv_path).read_text()

            # Add a second home: its add-on gets only the pairing string from "Add a home",
            # and the panel's link (/link?code=) brings its code to the form.
            await page.get_by_role("link", name="Add a home").first.click()
            pairing = (await page.locator("#pairing").inner_text()).strip()
            async with _unlinked_addon(home, tmp_path, pairing) as code:
                await page.goto(home.account_origin + "/link?" + urlencode({"code": code}))
                await expect(page.get_by_label("Link code")).to_have_value(code)
                await page.get_by_label("Name of this home").fill("Cabin")
                await page.get_by_role("button", name="Link").click()
                await page.goto(home.account_origin + "/")
                await expect(page.get_by_role("heading", name="Cabin")).to_be_visible()

            # Invite someone by email, from the first home's page.
            await page.goto(f"{home.account_origin}/instances/{home.instance_id}")
            await page.get_by_label("Invite by email address").fill(GUEST)
            await page.get_by_role("button", name="Invite").click()
            await expect(page.get_by_text(f"We have mailed this link to {GUEST}")).to_be_visible()
            assert person.csp_errors() == []
            assert person.page_errors == []

        invitation = await sink.wait_for(GUEST)
        accept = re.search(r"https://\S+/invitations/accept\?token=\S+", invitation.text)
        assert accept is not None, invitation.text
        async with chromium.person() as guest:
            page = guest.page
            await page.goto(accept.group(0))
            # Signed out: the invitation's own page, then sign in, keeping the invitation.
            await page.get_by_role("link", name="Sign in to accept").click()
            await expect(page.get_by_text("invited guest@example.com")).to_be_visible()
            before = len(sink.to(GUEST))
            await _password_sign_in(page, GUEST, GUEST_PASSWORD)
            await _type_mailed_code(page, sink, GUEST, before)
            await expect(
                page.get_by_role("heading", name=re.compile("Invitation to"))
            ).to_be_visible()
            await page.get_by_role("button", name=re.compile("^Accept")).click()
            await expect(page.get_by_role("status")).to_contain_text("You joined Home")
            assert guest.csp_errors() == []


@contextlib.asynccontextmanager
async def _unlinked_addon(home: Home, tmp_path: Path, pairing: str) -> AsyncIterator[str]:
    """A second add-on dialling the same relay, set up from the pairing string alone (as
    its options would give it), not linked yet; yields its link code."""
    standin, url = await start_standin()
    paired = parse_options({"pairing": pairing})
    config = dataclasses.replace(
        addon_config(home.relay, url, tmp_path / "second-addon", paired.pinned_keys[0]),
        relay_url=paired.relay_url,
        pinned_keys=paired.pinned_keys,
    )
    assert config.relay_url == home.relay.relay_url
    addon = AddonClient(config)
    await addon.__aenter__()
    task = asyncio.create_task(addon.run_forever())
    try:
        async with asyncio.timeout(20):
            while addon.status.link_code is None:
                await asyncio.sleep(0.05)
        yield addon.status.link_code
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await addon.__aexit__(None, None, None)
        await standin.cleanup()
