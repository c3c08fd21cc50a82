"""A person signs in with, and links, "Apple" in a real headless Chromium.

The provider is the loopback stand-in in ``form_post`` mode, so the callback is a
real cross-site POST from the provider's page: Chromium does not send the
SameSite=Lax binding cookie on it, and the sign-in must still finish, in that
browser and only there (see ``homeport.relay.site.oidc``): a flow started in one
browser context and completed in another finishes in neither (issue #9).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from oidc_idp import AppleTeam, stand_in_idp
from playwright.async_api import expect
from test_oidc_providers import SERVICES_ID, apple_stack

from homeport.relay.site.oidc import BINDING_COOKIE
from homeport.relay.site.signin_flow import ACCOUNT_COOKIE
from homeport.tls.devca import DevCA

if TYPE_CHECKING:
    from browser import Chromium
    from playwright.async_api import Request

pytest_plugins = ("browser",)
pytestmark = pytest.mark.timeout(120)


async def test_sign_in_with_apple_in_chromium(
    tmp_path: Path, chromium: Chromium, dev_ca: DevCA
) -> None:
    team = AppleTeam()
    async with stand_in_idp(client_id=SERVICES_ID, apple=team, form_post=True) as idp:
        idp.user.email = "b8c2@privaterelay.appleid.com"
        idp.user.email_verified = "true"
        async with (
            apple_stack(tmp_path, idp, team, ca=dev_ca) as stack,
            chromium.person() as person,
        ):
            page = person.page
            callbacks: list[Request] = []
            page.on(
                "request",
                lambda r: callbacks.append(r) if r.url.endswith("/callback") else None,
            )
            await page.goto(stack.account_origin + "/signin")
            button = page.get_by_role("link", name="Sign in with Apple")
            await button.focus()
            await page.keyboard.press("Enter")  # keyboard only
            await expect(page.get_by_role("button", name="Continue")).to_be_visible()
            assert page.url.startswith(idp.issuer + "/authorize")
            await page.get_by_role("button", name="Continue").click()
            await expect(page.get_by_role("heading", name="Your homes")).to_be_visible()
            assert page.url == stack.account_origin + "/"
            # The callback really was a POST without the Lax binding cookie.
            [callback] = callbacks
            assert callback.method == "POST"
            sent = await callback.header_value("cookie") or ""
            assert BINDING_COOKIE not in sent
            await expect(page.locator(".who")).to_have_text("b8c2@privaterelay.appleid.com")
            cookies = {c["name"]: c for c in await page.context.cookies()}
            assert cookies[ACCOUNT_COOKIE]["secure"]
            assert cookies[ACCOUNT_COOKIE]["httpOnly"]
            assert BINDING_COOKIE not in cookies  # spent
            # The settings page lists Apple as the way this account signs in.
            await page.goto(stack.account_origin + "/security/signin-methods")
            await expect(page.get_by_text(re.compile("Apple · b8c2@"))).to_be_visible()
            assert person.csp_errors() == []
            assert person.page_errors == []
    assert idp.token_errors == []


async def test_link_apple_in_chromium_only_after_confirming(
    tmp_path: Path, chromium: Chromium, dev_ca: DevCA
) -> None:
    team = AppleTeam()
    async with stand_in_idp(client_id=SERVICES_ID, apple=team, form_post=True) as idp:
        idp.user.sub = "001234.apple-subject"
        idp.user.email = "k3m9@privaterelay.appleid.com"
        idp.user.email_verified = "true"
        async with apple_stack(tmp_path, idp, team, ca=dev_ca) as stack:
            owner = await stack.relay.accounts.get_user_by_email(stack.email)
            assert owner is not None
            async with chromium.person() as person:
                page = person.page
                await page.goto(stack.account_origin + "/signin")
                await page.get_by_label("Email").fill(stack.email)
                await page.get_by_label("Password").fill(stack.password)
                await page.get_by_role("button", name="Sign in", exact=True).click()
                await expect(page.get_by_role("heading", name="Your homes")).to_be_visible()
                await page.goto(stack.account_origin + "/security/signin-methods")
                await page.get_by_role("link", name="Link Apple").click()
                await page.get_by_role("button", name="Continue").click()
                # Back from Apple: the page names what came back; nothing is linked yet.
                await expect(page.get_by_role("heading", name="Link Apple?")).to_be_visible()
                assert page.url == stack.account_origin + "/security/oidc/confirm"
                await expect(page.get_by_text("k3m9@privaterelay.appleid.com")).to_be_visible()
                await expect(page.get_by_text("001234.apple-subject")).to_be_visible()
                assert await stack.relay.accounts.oidc.identities(owner.id) == []
                await page.get_by_role("button", name="Link Apple").click()
                await expect(page.get_by_role("status")).to_have_text(
                    "Apple is now linked to this account."
                )
                await expect(page.get_by_text(re.compile("Apple · k3m9@"))).to_be_visible()
                cookies = {c["name"] for c in await page.context.cookies()}
                assert BINDING_COOKIE not in cookies  # spent
                assert person.csp_errors() == []
                assert person.page_errors == []
            [identity] = await stack.relay.accounts.oidc.identities(owner.id)
            assert identity.subject == "001234.apple-subject"
    assert idp.token_errors == []


async def test_apple_signin_completed_in_another_chromium_context_finishes_nowhere(
    tmp_path: Path, chromium: Chromium, dev_ca: DevCA
) -> None:
    """Issue #9 in a real browser: the attacker's flow, the victim's Apple sign-in."""
    team = AppleTeam()
    async with stand_in_idp(client_id=SERVICES_ID, apple=team, form_post=True) as idp:
        idp.user.email = "victim@example.com"
        idp.user.email_verified = "true"
        async with (
            apple_stack(tmp_path, idp, team, ca=dev_ca) as stack,
            chromium.person() as attacker,
            chromium.person() as victim,
        ):
            await attacker.page.goto(stack.account_origin + "/signin")
            await attacker.page.get_by_role("link", name="Sign in with Apple").click()
            await expect(attacker.page.get_by_role("button", name="Continue")).to_be_visible()
            lure = attacker.page.url
            assert lure.startswith(idp.issuer + "/authorize")
            # The victim opens the provider URL and signs in there.
            await victim.page.goto(lure)
            await victim.page.get_by_role("button", name="Continue").click()
            await expect(victim.page.get_by_role("heading", name="Sign-in stopped")).to_be_visible()
            # The attacker's browser, holding the binding cookie, gets nothing.
            await attacker.page.goto(stack.account_origin + "/signin/oidc/finish")
            await expect(
                attacker.page.get_by_role("heading", name="Sign-in failed")
            ).to_be_visible()
            for person in (attacker, victim):
                names = {c["name"] for c in await person.page.context.cookies()}
                assert ACCOUNT_COOKIE not in names
            # The victim's browser was refused at the finishing GET, with its ticket.
            assert victim.page.url.startswith(stack.account_origin + "/signin/oidc/finish?")
            assert await stack.relay.accounts.get_user_by_email("victim@example.com") is None
