"""End to end: public sign-up with email verification (``--signup open``)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from email_flows import browser_from, get, mail_standin, post
from relay_process import HOMEPORT, Home, RelayProcess
from smtp_sink import SmtpSink

from homeport.addon.client import LocalhostResolver

pytestmark = pytest.mark.timeout(240)

NEWCOMER = "newcomer@example.com"
PASSPHRASE = "ninety nine red balloons drifting"


@pytest_asyncio.fixture
async def mailed(tmp_path: Path) -> AsyncIterator[tuple[Home, SmtpSink]]:
    async with mail_standin(tmp_path, "--signup", "open") as running:
        yield running


async def test_sign_up_verify_then_sign_in(mailed: tuple[Home, SmtpSink]) -> None:
    home, sink = mailed
    async with browser_from(home, "127.0.0.30") as browser:
        status, body, _ = await get(browser, home.account_origin + "/signin")
        assert 'href="/signup"' in body
        new = await post(browser, home, "/signup", {"email": NEWCOMER, "password": PASSPHRASE})
        existing = await post(
            browser, home, "/signup", {"email": home.email, "password": PASSPHRASE}
        )
        assert new == existing  # nothing says whether the address has an account
        assert new[0] == 200
        assert "Check your email" in new[1]
        note = await sink.wait_for(home.email)
        assert "already has an account" in note.text
        assert "/signup/verify" not in note.text
        mail = await sink.wait_for(NEWCOMER)
        assert "127.0.0.30" in mail.text
        link = mail.link("/signup/verify")
        # no account before the link is used
        status, _, _ = await post(
            browser, home, "/signin", {"email": NEWCOMER, "password": PASSPHRASE, "next": "/"}
        )
        assert status == 401
        status, body, _ = await get(browser, link)  # a mail scanner would: nothing happens
        assert status == 200
        assert NEWCOMER in body
        token = link.rsplit("t=", 1)[1]
        status, _, _ = await post(
            browser, home, "/signup/verify", {"t": token}, origin=home.tenant_origin
        )
        assert status == 403
        status, body, _ = await post(browser, home, "/signup/verify", {"t": token})
        assert status == 200
        assert "Account created" in body
        status, _, _ = await post(browser, home, "/signup/verify", {"t": token})
        assert status == 400  # single use
        status, _, location = await post(
            browser, home, "/signin", {"email": NEWCOMER, "password": PASSPHRASE, "next": "/"}
        )
        assert (status, location) == (303, "/signin/email-code")  # a new network, as always
        code = (await sink.wait_for(NEWCOMER, 2)).code()
        status, _, location = await post(browser, home, "/signin/email-code", {"code": code})
        assert (status, location) == (303, "/")
        status, body, _ = await get(browser, home.account_origin + "/")
        assert status == 200
        assert NEWCOMER in body


async def test_bad_sign_ups_are_refused(mailed: tuple[Home, SmtpSink]) -> None:
    home, sink = mailed
    async with browser_from(home, "127.0.0.31") as browser:
        status, body, _ = await post(
            browser, home, "/signup", {"email": "x", "password": PASSPHRASE}
        )
        assert status == 400
        assert "email address" in body
        status, body, _ = await post(
            browser, home, "/signup", {"email": NEWCOMER, "password": "short"}
        )
        assert status == 400
        assert "at least 15 characters" in body
        statuses = []
        for n in range(6):
            data = {"email": f"n{n}@example.com", "password": PASSPHRASE}
            statuses.append((await post(browser, home, "/signup", data))[0])
        assert statuses == [200] * 5 + [429]
    assert sink.to(NEWCOMER) == []


async def test_open_sign_up_needs_mail(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay")
    proc = await asyncio.create_subprocess_exec(
        str(HOMEPORT), "relay", "--data-dir", str(relay.data_dir),
        "--listen", f"127.0.0.1:{relay.port}", "--signup", "open",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=relay.env(),
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode != 0
    assert "--signup open needs mail" in err.decode()


async def test_without_smtp_mail_features_are_off_and_said_so(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay")
    try:
        await relay.start()
        out = (relay.log_dir / "relay-1.stdout").read_text()
        assert "Mail: off (no --smtp-host); disabled: email code for sign-ins" in out
        assert "password reset by email; public sign-up" in out
        async with asyncio.timeout(20):
            while '"mail.disabled"' not in relay.log_text():
                await asyncio.sleep(0.05)
        context = ssl.create_default_context(cafile=str(relay.ca_path))
        connector = aiohttp.TCPConnector(ssl=context, resolver=LocalhostResolver())
        async with aiohttp.ClientSession(connector=connector) as client:
            origin = relay.config.account_origin
            for path in ("/signin/forgot", "/signup", "/signin/email-code"):
                async with client.get(origin + path, allow_redirects=False) as r:
                    assert r.status == 404, path
            async with client.get(origin + "/signin") as r:
                body = await r.text()
                assert "/signin/forgot" not in body
                assert "/signup" not in body
    finally:
        await relay.close()
