"""The session's one Chromium trusts the session's development CA and nothing else;
``chromium.start(other_ca)`` gives a test a Chromium of its own that trusts another."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from playwright.async_api import Error as PlaywrightError

from homeport.tls.devca import create_independent_ca

if TYPE_CHECKING:  # loaded by pytest_plugins below, so that pytest rewrites its asserts
    from browser import Chromium

pytest_plugins = ("browser",)
pytestmark = pytest.mark.timeout(90)


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="<h1>hello</h1>", content_type="text/html")


async def test_only_the_session_ca_is_trusted_unless_the_test_asks(
    chromium: Chromium, tmp_path: Path
) -> None:
    other = create_independent_ca(tmp_path / "other-ca")
    cert, key = other.issue_server_certificate(["localhost"], tmp_path / "server")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_get("/", _hello)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    url = f"https://localhost:{runner.addresses[0][1]}/"
    try:
        async with chromium.person() as person:
            with pytest.raises(PlaywrightError, match="ERR_CERT_AUTHORITY_INVALID"):
                await person.page.goto(url)
        await chromium.start(other.cert_path)
        async with chromium.person() as person:
            await person.page.goto(url)
            assert await person.page.inner_text("h1") == "hello"
    finally:
        await runner.cleanup()
