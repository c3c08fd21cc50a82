"""End to end: an owner's invitation is mailed to the invited address (real SMTP to an
aiosmtpd sink), the invited person accepts it with their own account, and both steps
land in the audit log.

The relay runs as its own process with mail configured (``email_flows.mail_standin``);
the invited person connects from another loopback address, as another network.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from email_flows import browser_from, get, mail_standin, post, sign_in
from relay_process import Home
from smtp_sink import SmtpSink

pytestmark = pytest.mark.timeout(120)

BOB = "bob@example.com"
BOB_PASSWORD = "bob's own long passphrase here"


async def test_invitation_is_mailed_and_accepted(tmp_path: Path) -> None:
    async with mail_standin(tmp_path) as (home, sink):
        await home.relay.admin("admin", "user", "create", BOB, stdin=BOB_PASSWORD + "\n")
        home_id = home.instance_id
        async with browser_from(home, "127.0.0.1") as owner:
            await sign_in(owner, home, sink)
            status, page, location = await post(
                owner, home, f"/instances/{home_id}/invitations", {"email": BOB, "days": "7"}
            )
            assert status == 303, page  # post/redirect/get: the link is on the next page
            status, page, _ = await get(owner, home.account_origin + location)
            assert status == 200, page
            assert "We have mailed this link to bob@example.com" in page
            shown = re.search(r'id="invite-url"[^>]*value="([^"]+)"', page)
            assert shown is not None
            accept_url = shown.group(1).replace("&amp;", "&")

            mail = await sink.wait_for(BOB)
            assert mail.message["Subject"] == f"{home.email} invites you to a home on Homeport"
            assert accept_url in mail.text  # the same single-use link, nothing else
            assert home.email in mail.text  # who invites
            assert "valid until" in mail.text

        async with browser_from(home, "127.0.0.3") as bob:
            await _bob_signs_in(bob, home, sink)
            status, page, _ = await get(bob, accept_url)
            assert status == 200, page
            token = re.search(r'name="token" value="([^"]+)"', page)
            assert token is not None
            status, page, location = await post(
                bob, home, "/invitations/accept", {"token": token.group(1)}
            )
            assert status == 303, page
            status, page, _ = await get(bob, home.account_origin + location)
            assert "You joined Home." in page

        async with browser_from(home, "127.0.0.1") as owner:
            await sign_in(owner, home, sink)
            status, page, _ = await get(owner, home.account_origin + "/security/audit")
            assert status == 200
            assert "Invitation sent" in page
            status, page, _ = await get(owner, home.account_origin + f"/instances/{home_id}")
            assert BOB in page  # a member now


async def _bob_signs_in(bob: object, home: Home, sink: SmtpSink) -> None:
    """Bob's own password sign-in from a new network: the relay mails him a code."""
    before = len(sink.to(BOB))
    status, body, location = await post(
        bob,  # type: ignore[arg-type]
        home,
        "/signin",
        {"email": BOB, "password": BOB_PASSWORD, "next": "/"},
    )
    assert status == 303, body
    if location == "/signin/email-code":
        mail = await sink.wait_for(BOB, before + 1)
        status, body, _ = await post(
            bob,  # type: ignore[arg-type]
            home,
            "/signin/email-code",
            {"code": mail.code()},
        )
        assert status == 303, body
