"""A person adds a passkey in a real Chromium, then signs in with it, without a password.

Chromium's own WebAuthn stack with a virtual platform authenticator (DevTools
``WebAuthn`` domain: resident keys, user verification on), so ``passkeys.js``, the
browser's origin and rp-id checks, the CSP and the ``__Host-`` cookies all run as
they do for a person. The home behind the relay is the stand-in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from playwright.async_api import expect
from stack import Stack

if TYPE_CHECKING:
    from browser import Chromium

pytest_plugins = ("browser",)
pytestmark = pytest.mark.timeout(90)


async def test_add_a_passkey_then_sign_in_with_it(stack: Stack, chromium: Chromium) -> None:
    async with chromium.person() as person:
        page = person.page
        cdp = await page.context.new_cdp_session(page)
        await cdp.send("WebAuthn.enable")
        added = await cdp.send(
            "WebAuthn.addVirtualAuthenticator",
            {
                "options": {
                    "protocol": "ctap2",
                    "transport": "internal",
                    "hasResidentKey": True,
                    "hasUserVerification": True,
                    "isUserVerified": True,
                    "automaticPresenceSimulation": True,
                }
            },
        )

        # Sign in with the password, by keyboard where a person would type.
        await page.goto(stack.tenant_origin + "/")
        await page.get_by_label("Email").fill(stack.email)
        await page.get_by_label("Password").fill(stack.password)
        await page.get_by_role("button", name="Sign in", exact=True).click()
        await expect(page.get_by_text("Home Assistant stand-in")).to_be_visible()

        # Add a passkey on the security page (it asks for the password again).
        await page.goto(stack.account_origin + "/security")
        await page.get_by_label("Name for this passkey").fill("Test laptop")
        await page.get_by_label("Your password, to confirm").fill(stack.password)
        await page.get_by_role("button", name="Add a passkey").click()
        await expect(page.get_by_text("Test laptop added")).to_be_visible()
        credentials = await cdp.send(
            "WebAuthn.getCredentials", {"authenticatorId": added["authenticatorId"]}
        )
        assert len(credentials["credentials"]) == 1
        assert credentials["credentials"][0]["isResidentCredential"]

        # Sign out; sign in again with the passkey alone.
        await page.goto(stack.account_origin + "/")
        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_role("button", name="Sign in", exact=True)).to_be_visible()
        await page.goto(stack.tenant_origin + "/")
        await page.get_by_role("button", name="Use a passkey").click()
        await expect(page.get_by_text("Home Assistant stand-in")).to_be_visible()
        assert page.url.startswith(stack.tenant_origin)

        assert person.csp_errors() == []
        assert person.page_errors == []
