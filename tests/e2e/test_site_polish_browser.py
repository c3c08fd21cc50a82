"""The account site as issue #14 and #13 ask, in a real Chromium: every page checked by
axe-core in both themes at a phone's and a desktop's width, and the flows end to end.

The in-process relay sends real mail to an aiosmtpd sink (so the mail features are on:
invitations, offline alerts).  Screenshots of every checked page go to
``.screenshots/site/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import pyotp
import pytest
from axe_core import run_axe, serious
from playwright.async_api import Page, expect
from smtp_sink import SmtpSink
from stack import Stack

from homeport.addon.gate import _OFF_PAGE
from homeport.addon.options import parse_options
from homeport.keys import public_key_text
from homeport.mail.settings import SmtpSettings

if TYPE_CHECKING:
    from browser import Chromium, Person

pytest_plugins = ("browser",)
pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / ".screenshots" / "site"
WIDTHS = (390, 1280)
THEMES = ("light", "dark")
GUEST = "guest@example.com"
GUEST_PASSWORD = "a visitor with a phrase of their own"


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


@pytest.fixture
def stack_options(sink: SmtpSink) -> dict[str, Any]:
    smtp = SmtpSettings(
        host="127.0.0.1", port=sink.port, security="none", mail_from="relay@homeport.example"
    )
    return {"smtp": smtp}


async def sign_in(page: Page, stack: Stack, sink: SmtpSink, email: str, password: str) -> None:
    """Password, then the mailed code if the relay asks for one (a new network)."""
    before = len(sink.to(email))
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in", exact=True).click()
    heading = page.get_by_role("heading", level=1)
    await expect(heading).not_to_have_text("Sign in")
    if await heading.inner_text() == "Check your email":
        code = (await sink.wait_for(email, before + 1)).code()
        await page.get_by_label("Code from the email").fill(code)
        await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", level=1)).not_to_have_text("Check your email")


async def check_page(page: Page, person: Person, name: str) -> None:
    """axe (no serious or critical violation), no sideways scrolling on a phone, no CSP
    error; a screenshot per width and theme."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    for theme in THEMES:
        await page.emulate_media(color_scheme=theme)  # type: ignore[arg-type]
        for width in WIDTHS:
            await page.set_viewport_size({"width": width, "height": 900})
            found = serious(await run_axe(page))
            problems += [f"{name} {theme} {width}px: {line}" for line in found]
            scroll = await page.evaluate("document.scrollingElement.scrollWidth")
            if scroll > width:
                problems.append(f"{name} {theme} {width}px: scrolls sideways ({scroll}px)")
            await page.screenshot(path=SHOTS / f"{name}-{width}-{theme}.png", full_page=True)
    await page.emulate_media(color_scheme="light")
    await page.set_viewport_size({"width": 1280, "height": 900})
    assert problems == [], "\n".join(problems)
    assert person.csp_errors() == []
    assert person.page_errors == []


@contextlib.asynccontextmanager
async def owner_page(
    chromium: Chromium, stack: Stack, sink: SmtpSink
) -> AsyncIterator[tuple[Page, Person]]:
    async with chromium.person() as person:
        page = person.page
        await page.goto(stack.account_origin + "/signin")
        await sign_in(page, stack, sink, stack.email, stack.password)
        await expect(page.get_by_role("heading", name="Your homes")).to_be_visible()
        yield page, person


async def test_every_page_passes_axe_in_both_themes_and_widths(
    stack: Stack, chromium: Chromium, sink: SmtpSink
) -> None:
    origin = stack.account_origin
    home = f"{origin}/instances/{stack.instance_id}"
    async with chromium.person() as stranger:
        page = stranger.page
        await page.goto(origin + "/signin")
        await check_page(page, stranger, "signin")
        # The sign-in page reached from a home's address names that address.
        await page.goto(stack.tenant_origin + "/")
        await expect(page.get_by_text(stack.tenant_origin.removeprefix("https://"))).to_be_visible()
        await check_page(page, stranger, "signin-home")
        # An unknown home address: a styled page with a way back, not plain text.
        unknown = stack.config.tenant_origin("no-such-home")
        await page.goto(unknown + "/")
        await expect(page.get_by_role("heading", name="No home at this address")).to_be_visible()
        await check_page(page, stranger, "unknown-home")
        # The add-on's "remote access is switched off" answer, as the add-on sends it
        # (its delivery is tests/e2e/test_remote_access_switch.py's).
        await page.goto("about:blank")
        await page.set_content(_OFF_PAGE.decode("utf-8"))
        await check_page(page, stranger, "remote-access-off")

    async with owner_page(chromium, stack, sink) as (page, person):
        await check_page(page, person, "homes")
        for path, name, heading in [
            ("/add", "add-home", "Add a home"),
            ("/link?code=ABCDE-12345", "link", "Link a home"),
            (f"/instances/{stack.instance_id}", "instance", "Home"),
            ("/security", "security", "Security"),
            ("/security/sessions", "sessions", None),
            ("/security/audit", "audit", None),
            ("/security/password", "password", None),
            (f"/instances/{stack.instance_id}/access", "access", "Access to Home"),
            ("/account/privacy", "privacy", "Your data"),
            ("/account/email", "email-change", "Change your email address"),
            ("/no-such-page", "not-found", "Page not found"),
            (
                f"/instances/{stack.instance_id}/rename",
                "form-address",
                "This address is for a form",
            ),
        ]:
            await page.goto(origin + path)
            if heading is not None:
                await expect(page.get_by_role("heading", level=1)).to_have_text(heading)
            await check_page(page, person, name)
            if name == "audit":
                # The table uses the width it has (nothing cut off at 1280 px), with the
                # filter inside its card, and times in the viewer's zone, UTC on hover.
                wrap = page.locator(".table-wrap")
                overflow = await wrap.evaluate("e => e.scrollWidth - e.clientWidth")
                assert overflow <= 0
                assert await page.locator(".card form select#home").count() == 1
                when = page.locator("table.audit time").first
                assert (await when.get_attribute("title") or "").endswith(" UTC")
                assert not (await when.inner_text()).endswith("UTC")  # rewritten by site.js

        # One-time secrets, each on the page the form's redirect leads to.
        await page.goto(home)
        await page.get_by_label("Device name").fill("Anna's phone")
        await page.get_by_role("button", name="Create app link").click()
        await expect(page.get_by_role("heading", name="App link for Anna's phone")).to_be_visible()
        await check_page(page, person, "app-link-shown")
        await page.get_by_label("Invite by email address").fill(GUEST)
        await page.get_by_role("button", name="Invite").click()
        await expect(page.get_by_role("heading", name=f"Invitation for {GUEST}")).to_be_visible()
        await check_page(page, person, "invitation-shown")

        await page.goto(origin + "/security")
        await page.get_by_role("button", name="Set up an authenticator app").click()
        await expect(page).to_have_url(origin + "/security/totp")
        await check_page(page, person, "totp-setup")
        key = (await page.locator("#totp-key-plain").text_content() or "").strip()
        await page.get_by_label("Authentication code").fill(pyotp.TOTP(key).now())
        await page.get_by_role("button", name="Turn on").click()
        await expect(page.get_by_role("heading", name="Your recovery codes")).to_be_visible()
        await check_page(page, person, "recovery-codes")
        await page.goto(origin + "/security")
        await check_page(page, person, "security-on")
        await page.get_by_role("link", name="Turn off two-step verification").click()
        await check_page(page, person, "turn-off")


async def test_secrets_are_shown_once_after_a_redirect(
    stack: Stack, chromium: Chromium, sink: SmtpSink
) -> None:
    """Reload and Back create nothing and show nothing again (post/redirect/get)."""
    sharing = stack.relay.accounts.sharing
    async with owner_page(chromium, stack, sink) as (page, _person):
        await page.goto(f"{stack.account_origin}/instances/{stack.instance_id}")
        await page.get_by_label("Device name").fill("Anna's phone")
        await page.get_by_role("button", name="Create app link").click()
        field = page.get_by_label("Server address for the Home Assistant app")
        url = await field.input_value()
        assert url.startswith("https://")
        assert "shown=" in page.url
        assert url not in page.url
        await page.reload()
        await expect(page.get_by_role("status")).to_contain_text("shown once already")
        assert url not in await page.content()
        assert len(await sharing.app_links(stack.instance_id)) == 1  # no second link
        await page.go_back()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Home")

        # Recovery codes: copy, download, print offered; a reload does not show them again.
        await page.goto(stack.account_origin + "/security")
        await page.get_by_role("button", name="Set up an authenticator app").click()
        # The set-up page must have loaded before the reload: reloading while the
        # click's navigation is still under way races it in Chromium.
        key_plain = page.locator("#totp-key-plain")
        await expect(key_plain).to_have_count(1)
        pending = (await key_plain.text_content() or "").strip()
        await page.reload()  # the set-up page again, the same pending key
        key = (await key_plain.text_content() or "").strip()
        assert key == pending
        groups = (await page.locator("#totp-key").text_content() or "").split()
        assert "".join(groups) == key
        assert all(len(g) == 4 for g in groups[:-1])
        await page.get_by_label("Authentication code").fill(pyotp.TOTP(key).now())
        await page.get_by_role("button", name="Turn on").click()
        codes = await page.locator(".recovery-codes code").all_inner_texts()
        assert len(codes) == 10
        await expect(page.get_by_role("button", name="Copy the codes")).to_be_visible()
        await expect(page.get_by_role("button", name="Print")).to_be_visible()
        async with page.expect_download() as download:
            await page.get_by_role("link", name="Download as a text file").click()
        saved = Path(await (await download.value).path()).read_text()
        assert all(code in saved for code in codes)
        await page.reload()
        await expect(page.get_by_role("heading", level=1)).to_have_text(
            "Recovery codes are shown only once"
        )
        assert codes[0] not in await page.content()


async def test_invitee_creates_the_account_from_the_link_with_signup_closed(
    stack: Stack, chromium: Chromium, sink: SmtpSink
) -> None:
    """The invitation link proves the mailbox: sign-up (closed to the public) is offered,
    the invitation is kept through every step, no further mail or code is asked."""
    async with owner_page(chromium, stack, sink) as (page, _person):
        await page.goto(f"{stack.account_origin}/instances/{stack.instance_id}")
        await page.get_by_label("Invite by email address").fill(GUEST)
        await page.get_by_role("button", name="Invite").click()
        link = await page.get_by_role("textbox", name="Invitation link").input_value()
    mails_before = len(sink.to(GUEST))
    async with chromium.person() as guest:
        page = guest.page
        await page.goto(link)
        await expect(page.get_by_role("heading", level=1)).to_have_text("Invitation to Home")
        await page.get_by_role("link", name="Create your account to join Home").click()
        await expect(page.get_by_label("Email")).to_have_value(GUEST)
        password = page.get_by_label("Password", exact=True)
        # The browser holds the 15-character rule itself (minlength matches it).
        assert await password.get_attribute("minlength") == "15"
        await password.fill(GUEST_PASSWORD)
        await page.get_by_label("Password again").fill(GUEST_PASSWORD + " but different")
        await page.get_by_role("button", name="Create the account and join").click()
        again = page.get_by_label("Password again")
        await expect(again).to_have_attribute("aria-invalid", "true")
        await expect(again).to_have_accessible_description(re.compile("passwords differ"))
        await check_page(page, guest, "invited-signup-error")
        await password.fill(GUEST_PASSWORD)
        await page.get_by_label("Password again").fill(GUEST_PASSWORD)
        await page.get_by_role("button", name="Create the account and join").click()
        await expect(page.get_by_role("status")).to_contain_text("You joined Home")
        await expect(page.get_by_role("link", name="Open Home Assistant")).to_be_visible()
        await check_page(page, guest, "joined")
    assert len(sink.to(GUEST)) == mails_before  # no confirmation mail, no sign-in code
    assert not stack.config.signup  # public sign-up is closed (the default)
    (member,) = await stack.relay.accounts.sharing.members(stack.instance_id)
    assert member.email == GUEST


async def test_add_a_home_with_the_pairing_string_and_the_code_filled_in(
    stack: Stack, chromium: Chromium, sink: SmtpSink
) -> None:
    """The "Add a home" page's one string is what the add-on needs; ``/link?code=`` fills
    the form in and linking is still the person's own click."""
    async with owner_page(chromium, stack, sink) as (page, person):
        await page.get_by_role("link", name="Add a home").first.click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Add a home")
        pairing = (await page.locator("#pairing").text_content() or "").strip()
        options = parse_options({"pairing": pairing})
        assert options.relay_url == (
            f"wss://{stack.config.account_host}{stack.config.port_suffix}/v1/tunnel"
        )
        assert [public_key_text(k) for k in options.pinned_keys] == [
            public_key_text(stack.relay.server_key.public_key())
        ]
        await page.locator("details summary", has_text="QR code").click()
        await expect(page.locator(".qr svg")).to_be_visible()
        store = page.get_by_role("link", name="Open the add-on store in my Home Assistant")
        assert "supervisor_add_addon_repository" in (await store.get_attribute("href") or "")

        # A link code the add-on would carry in: filled in, nothing linked by the GET.
        await page.goto(stack.account_origin + "/link?" + urlencode({"code": "abcde-12345"}))
        await expect(page.get_by_label("Link code")).to_have_value("ABCDE-12345")
        homes = await stack.relay.accounts.instances.find(user_id=None)
        await page.goto(stack.account_origin + "/link?" + urlencode({"code": "<script>"}))
        await expect(page.get_by_label("Link code")).to_have_value("")
        assert await stack.relay.accounts.instances.find(user_id=None) == homes
        assert person.page_errors == []


async def test_offline_since_and_alert_choice_on_the_pages(
    stack: Stack, chromium: Chromium, sink: SmtpSink
) -> None:
    async with owner_page(chromium, stack, sink) as (page, person):
        await page.goto(f"{stack.account_origin}/instances/{stack.instance_id}")
        await page.get_by_label("Email me when this home has been offline").check()
        await page.get_by_label("Offline for longer than").select_option("15")
        await page.get_by_role("button", name="Save").first.click()
        await expect(page.get_by_role("status")).to_contain_text("offline alerts")
        assert await stack.relay.accounts.offline_alerts.after(stack.instance_id) == 15

        stack.addon_task.cancel()
        await stack.addon.__aexit__(None, None, None)
        for _ in range(200):
            if stack.relay.hub.tunnel_for(stack.instance_id) is None:
                (row,) = await stack.relay.accounts.instances.find(user_id=None)
                if row.last_disconnected_at is not None and not row.connected:
                    break
            await asyncio.sleep(0.05)
        await page.goto(stack.account_origin + "/")
        state = page.locator(".state.offline")
        await expect(state).to_contain_text(re.compile(r"Offline since \w"))
        # The time is the viewer's own; UTC stays on hover.
        title = await state.locator("time").get_attribute("title")
        assert title is not None
        assert title.endswith("UTC")
        await check_page(page, person, "homes-offline")


async def test_the_accessibility_check_can_fail(chromium: Chromium) -> None:
    """The check above is real: low-contrast text and an unlabelled field are found."""
    async with chromium.person() as person:
        await person.page.goto("about:blank")
        await person.page.set_content(
            '<html lang="en"><title>t</title><main><p style="color:#999;background:#aaa">'
            'grey on grey</p><input type="text"></main></html>'
        )
        found = serious(await run_axe(person.page))
        assert any(line.startswith("color-contrast ") for line in found), found
        assert any(line.startswith("label ") for line in found), found


async def _field_error(page: Page, label: str, words: str, *, exact: bool = False) -> None:
    """The field is marked invalid and its accessible description carries the error."""
    field = page.get_by_label(label, exact=exact)
    await expect(field).to_have_attribute("aria-invalid", "true")
    await expect(field).to_have_accessible_description(re.compile(words))


@pytest.mark.stack(signup=True)
async def test_errors_are_tied_to_their_fields_on_the_password_pages(
    stack: Stack, chromium: Chromium, sink: SmtpSink
) -> None:
    origin = stack.account_origin
    # Changing the password: each mistake on the field it is about.
    async with owner_page(chromium, stack, sink) as (page, person):
        await page.goto(origin + "/security/password")
        await page.get_by_label("Current password").fill("not the password at all")
        await page.get_by_label("New password", exact=True).fill(GUEST_PASSWORD)
        await page.get_by_label("New password again").fill(GUEST_PASSWORD)
        await page.get_by_role("button", name="Change password").click()
        await _field_error(page, "Current password", "not right")
        await check_page(page, person, "password-error")
        await page.get_by_label("Current password").fill(stack.password)
        await page.get_by_label("New password", exact=True).fill(GUEST_PASSWORD)
        await page.get_by_label("New password again").fill(GUEST_PASSWORD + " but different")
        await page.get_by_role("button", name="Change password").click()
        await _field_error(page, "New password again", "differ")
        assert person.csp_errors() == []
    async with chromium.person() as visitor:
        page = visitor.page
        # Sign-up: the password rule on the password field.
        await page.goto(origin + "/signup")
        await page.get_by_label("Email").fill("new@example.com")
        password = page.get_by_label("Password", exact=True)
        await password.evaluate("e => e.removeAttribute('minlength')")  # the server's rule
        await password.fill("password")
        await page.get_by_role("button", name="Create the account").click()
        await _field_error(page, "Password", "15", exact=True)
        await check_page(page, visitor, "signup-error")
        # Reset by mail: the link's page holds the same rule as the other forms.
        issued = await stack.relay.accounts.password_resets.issue(stack.email, stack.email)
        assert issued.token is not None
        await page.goto(origin + "/signin/reset?" + urlencode({"t": issued.token}))
        new = page.get_by_label("New password", exact=True)
        assert await new.get_attribute("minlength") == "15"
        await new.fill(GUEST_PASSWORD)
        await page.get_by_label("New password again").fill(GUEST_PASSWORD + " but different")
        await page.get_by_role("button", name="Set the password").click()
        await _field_error(page, "New password again", "differ")
        await check_page(page, visitor, "reset-error")
