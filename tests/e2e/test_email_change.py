"""End to end: changing the account's email address, and undoing it from the old address.

The real relay (in this process) with mail to an aiosmtpd sink on loopback, the
real add-on and the stand-in backend; browsers are cookie-keeping aiohttp
clients, and Chromium for the page itself. Covers re-authentication (password
or authenticator code), the code mailed to the new address, the notice with
the undo link mailed to the old one, sessions ending with their live traffic,
the audit log, and a provider sign-in identity that keeps working.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pyotp
import pytest
from email_flows import get, post, sign_in
from oidc_idp import StandInIdp, stand_in_idp, walk
from playwright.async_api import expect
from smtp_sink import SmtpSink
from stack import Browser, Stack, start_stack
from traffic import OpenTraffic
from yarl import URL

from homeport.accounts.audit import EventType
from homeport.accounts.oidc_tokens import VerifiedIdentity
from homeport.mail.settings import SmtpSettings
from homeport.relay.app import Relay
from homeport.relay.live import SESSION_ENDED_CODE
from homeport.relay.oidc_settings import OidcProvider
from homeport.relay.site.signin_flow import ACCOUNT_COOKIE

if TYPE_CHECKING:
    from browser import Chromium

pytest_plugins = ("browser",)
pytestmark = pytest.mark.timeout(180)

NEW = "owner.new@example.org"


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


def _smtp(sink: SmtpSink) -> SmtpSettings:
    return SmtpSettings(
        host="127.0.0.1", port=sink.port, security="none", mail_from="relay@example.com"
    )


@pytest.fixture
async def stack(tmp_path: Path, sink: SmtpSink, dev_ca: object) -> AsyncIterator[Stack]:
    async with start_stack(tmp_path, smtp=_smtp(sink), ca=dev_ca) as running:  # type: ignore[arg-type]
        yield running


async def _kinds(stack: Stack) -> list[str]:
    user = await stack.relay.accounts.get_user_by_email(stack.email)
    user = user or await stack.relay.accounts.get_user_by_email(NEW)
    assert user is not None
    events, _ = await stack.relay.accounts.audit.page(user.id, per_page=500)
    return [e.kind for e in events]


def _cookie(browser: Browser, name: str) -> str | None:
    for morsel in browser.session.cookie_jar:
        if morsel.key == name:
            return morsel.value
    return None


async def test_change_the_address_then_undo_it_from_the_old_one(
    stack: Stack, sink: SmtpSink
) -> None:
    old = stack.email
    async with stack.browser() as owner, stack.browser(source_ip="127.0.0.2") as tablet:
        await sign_in(owner, stack, sink)  # type: ignore[arg-type]
        # The same account on a wall tablet, with a dashboard's WebSocket open.
        await sign_in(tablet, stack, sink)  # type: ignore[arg-type]
        assert (await tablet.sign_in("/")).status == 200
        traffic = OpenTraffic(tablet)
        await traffic.open()

        status, page, _ = await get(owner, stack.account_origin + "/account/email")
        assert status == 200
        assert "Change your email address" in page
        # Without the password nothing happens, and no mail goes anywhere.
        status, page, _ = await post(
            owner, stack, "/account/email", {"email": NEW, "password": "not my password"}
        )  # type: ignore[arg-type]
        assert status == 401
        assert sink.to(NEW) == []
        status, _, location = await post(
            owner, stack, "/account/email", {"email": NEW, "password": stack.password}
        )  # type: ignore[arg-type]
        assert (status, location) == (303, "/account/email/confirm")
        assert _cookie(owner, "__Host-homeport_email_change")
        code_mail = await sink.wait_for(NEW)
        assert "confirm this address" in code_mail.message["Subject"]
        status, page, _ = await get(owner, stack.account_origin + "/account/email/confirm")
        assert status == 200
        assert NEW in page
        # A wrong code changes nothing; the mailed one does.
        wrong = "000000" if code_mail.code() != "000000" else "111111"
        status, _, _ = await post(owner, stack, "/account/email/confirm", {"code": wrong})  # type: ignore[arg-type]
        assert status == 401
        assert await stack.relay.accounts.get_user_by_email(old) is not None
        status, _, location = await post(
            owner, stack, "/account/email/confirm", {"code": code_mail.code()}
        )  # type: ignore[arg-type]
        assert (status, location) == (303, "/account/email?done=changed")
        status, page, _ = await get(owner, stack.account_origin + location)
        assert f"Your email address is now {NEW}" in page
        assert await stack.relay.accounts.get_user_by_email(NEW) is not None
        assert await stack.relay.accounts.get_user_by_email(old) is None

        # The tablet's session ended with the change, and its open traffic with it.
        assert (await traffic.ended(10)).data == SESSION_ENDED_CODE
        await traffic.close()
        async with tablet.request("GET", stack.tenant_origin + "/") as r:
            assert r.status == 401

        # The old address is told, with a link that undoes the change.
        notice = await sink.wait_for(old, len(sink.to(old)))
        assert notice.message["Subject"] == "The email address of your Homeport account was changed"
        assert NEW in notice.text
        undo_url = notice.link("/account/email/undo")
        assert "7 days" in notice.text
        assert EventType.EMAIL_CHANGE_REQUESTED in await _kinds(stack)
        assert EventType.EMAIL_CHANGED in await _kinds(stack)

    async with stack.browser(source_ip="127.0.0.3") as mailbox:
        status, page, _ = await get(mailbox, undo_url)
        assert status == 200
        assert "Undo the change" in page
        token = undo_url.rsplit("=", 1)[1]
        status, _, _ = await post(
            mailbox, stack, "/account/email/undo", {"t": token}, origin="https://evil.example"
        )  # type: ignore[arg-type]
        assert status == 403  # a cross-site POST changes nothing
        status, page, _ = await post(mailbox, stack, "/account/email/undo", {"t": token})  # type: ignore[arg-type]
        assert status == 200, page
        assert f"Your address is {old} again" in page
        status, _, _ = await post(mailbox, stack, "/account/email/undo", {"t": token})  # type: ignore[arg-type]
        assert status == 400  # used up
    user = await stack.relay.accounts.get_user_by_email(old)
    assert user is not None
    assert not await stack.relay.accounts.sessions.of_user(user.id)  # every session ended
    assert EventType.EMAIL_CHANGE_UNDONE in await _kinds(stack)
    # Every browser must confirm itself again by a code mailed to the restored address.
    async with stack.browser() as owner:
        before = len(sink.to(old))
        mail = await sign_in(owner, stack, sink)  # type: ignore[arg-type]
        assert mail is not None
        assert len(sink.to(old)) == before + 1


async def test_an_authenticator_code_can_stand_in_for_the_password(
    stack: Stack, sink: SmtpSink
) -> None:
    accounts = stack.relay.accounts
    user = await accounts.get_user_by_email(stack.email)
    assert user is not None
    async with stack.browser() as owner:
        await sign_in(owner, stack, sink)  # type: ignore[arg-type]
        enrolment = await accounts.totp.start_enrolment(user.id, stack.email)
        totp = pyotp.TOTP(enrolment.secret_base32)
        outcome, _codes = await accounts.totp.confirm_enrolment(user.id, totp.now(), ip="127.0.0.1")
        assert outcome.ok
        # A wrong code is refused like a wrong password.
        status, _, _ = await post(owner, stack, "/account/email", {"email": NEW, "code": "000000"})  # type: ignore[arg-type]
        assert status == 401
        # The next step's code (the current one was used to turn it on: no replay).
        status, _, location = await post(
            owner, stack, "/account/email", {"email": NEW, "code": totp.at(time.time() + 30)}
        )  # type: ignore[arg-type]
        assert (status, location) == (303, "/account/email/confirm")
        await sink.wait_for(NEW)


async def test_a_taken_address_gets_the_same_answer_and_a_note(
    stack: Stack, sink: SmtpSink
) -> None:
    await stack.relay.accounts.create_user(NEW, stack.password + " other")
    async with stack.browser() as owner:
        await sign_in(owner, stack, sink)  # type: ignore[arg-type]
        status, _, location = await post(
            owner, stack, "/account/email", {"email": NEW, "password": stack.password}
        )  # type: ignore[arg-type]
        assert (status, location) == (303, "/account/email/confirm")
        note = await sink.wait_for(NEW)
        assert "already has a Homeport account" in note.text
        assert not re.search(r"^\s+\d{6}\s*$", note.text, re.MULTILINE)  # no code in it


# ------------------------------------------------------------- OpenID sign-in


@pytest.fixture
async def idp() -> AsyncIterator[StandInIdp]:
    async with stand_in_idp() as provider:
        yield provider


async def test_a_provider_identity_keeps_working_after_the_change(
    tmp_path: Path, sink: SmtpSink, idp: StandInIdp
) -> None:
    provider = OidcProvider(
        name="idp",
        label="Test IdP",
        issuer=idp.issuer,
        client_id=idp.client_id,
        client_secret=idp.client_secret,
    )

    async def register_callback(relay: Relay) -> None:
        idp.redirect_uri = relay.config.account_origin + "/signin/oidc/idp/callback"

    async with start_stack(
        tmp_path, smtp=_smtp(sink), oidc_providers=(provider,), before_addon=register_callback
    ) as stack:
        owner_id = (await stack.relay.accounts.get_user_by_email(stack.email)).id  # type: ignore[union-attr]
        await stack.relay.accounts.oidc.link(
            owner_id, "idp", VerifiedIdentity(idp.issuer, idp.user.sub, stack.email, True)
        )
        async with stack.browser() as owner:
            await sign_in(owner, stack, sink)  # type: ignore[arg-type]
            await post(owner, stack, "/account/email", {"email": NEW, "password": stack.password})  # type: ignore[arg-type]
            code = (await sink.wait_for(NEW)).code()
            status, _, _ = await post(owner, stack, "/account/email/confirm", {"code": code})  # type: ignore[arg-type]
            assert status == 303
        # The provider still says the old address; the identity is (issuer, subject).
        async with stack.browser(source_ip="127.0.0.4") as browser:
            url = URL(stack.account_origin + "/signin/oidc/idp").with_query(next="/")
            page = await walk(browser.session, str(url))
            assert page.url.path == "/signin/email-code", page.text
            code_mail = await sink.wait_for(NEW, 2)  # the sign-in code goes to the new address
            status, _, _ = await post(
                browser, stack, "/signin/email-code", {"code": code_mail.code()}
            )  # type: ignore[arg-type]
            assert status == 303
            assert _cookie(browser, ACCOUNT_COOKIE)
            status, page_text, _ = await get(browser, stack.account_origin + "/")
            assert status == 200
            assert NEW in page_text
        assert (await stack.relay.accounts.get_user_by_email(NEW)).id == owner_id  # type: ignore[union-attr]


# ------------------------------------------------------------------ Chromium


async def test_the_page_in_chromium(stack: Stack, sink: SmtpSink, chromium: Chromium) -> None:
    async with chromium.person() as owner:
        page = owner.page
        await page.goto(stack.account_origin + "/signin")
        await page.get_by_label("Email").fill(stack.email)
        await page.get_by_label("Password").fill(stack.password)
        await page.get_by_role("button", name="Sign in", exact=True).click()
        await expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
        code = (await sink.wait_for(stack.email)).code()
        await page.get_by_label("Code from the email").fill(code)
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("heading", name="Your homes")).to_be_visible()

        await page.goto(stack.account_origin + "/security")
        await page.get_by_role("link", name="Change your email address").click()
        await page.get_by_label("New email address").fill(NEW)
        await page.get_by_label("Your password, to confirm it is you").fill(stack.password)
        await page.get_by_role("button", name="Send a code to the new address").click()
        await expect(page.get_by_role("heading", name="Check your new mailbox")).to_be_visible()
        await page.get_by_label("Code from the email").fill((await sink.wait_for(NEW)).code())
        await page.get_by_role("button", name="Change my address").click()
        await expect(page.get_by_role("status")).to_contain_text(f"Your email address is now {NEW}")
        assert owner.csp_errors() == []
        assert owner.page_errors == []
