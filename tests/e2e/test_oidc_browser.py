"""A person signs in with "Apple" in a real headless Chromium.

The provider is the loopback stand-in in ``form_post`` mode, so the callback is a
real cross-site POST from the provider's page: Chromium does not send the
SameSite=Lax binding cookie on it, and the sign-in must still finish, in that
browser and only there (see ``homeport.relay.site_oidc``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from oidc_idp import AppleTeam, stand_in_idp
from playwright.async_api import expect
from test_oidc_providers import SERVICES_ID, apple_stack

from homeport.relay.account_site import ACCOUNT_COOKIE
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
            assert "__Host-homeport_oidc" not in sent
            await expect(page.locator(".who")).to_have_text("b8c2@privaterelay.appleid.com")
            cookies = {c["name"]: c for c in await page.context.cookies()}
            assert cookies[ACCOUNT_COOKIE]["secure"]
            assert cookies[ACCOUNT_COOKIE]["httpOnly"]
            assert "__Host-homeport_oidc" not in cookies  # spent
            # The settings page lists Apple as the way this account signs in.
            await page.goto(stack.account_origin + "/security/signin-methods")
            await expect(page.get_by_text(re.compile("Apple · b8c2@"))).to_be_visible()
            assert person.csp_errors() == []
            assert person.page_errors == []
    assert idp.token_errors == []
