"""A real headless Chromium for end-to-end tests, driven by Playwright.

The browser is Debian's ``chromium`` (``scripts/system-deps`` installs it) started
through ``executable_path``: ``playwright install`` downloads a browser build of its
own, which cannot be fetched here, so it is never used.

Trust is real, not switched off: Chromium on Linux reads its trusted roots from the
NSS database in ``$HOME/.pki/nssdb``, so each browser gets a fresh ``HOME`` whose
database holds the relay's development CA (added with ``certutil`` from Debian's
``libnss3-tools``).  Certificate errors therefore fail the tests exactly as they
would fail for a person.  Every name resolves to 127.0.0.1
(``--host-resolver-rules``), so ``*.localhost`` hosts work and nothing leaves the
machine.

Tests take the ``chromium`` fixture (bring it in with ``pytest_plugins = ("browser",)``)
and open a fresh context, with its own cookies, for each person they play::

    async with chromium.person() as page:
        await page.goto(stack.tenant_origin + "/")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Page,
    Playwright,
    async_playwright,
    expect,
)

CHROMIUM = Path("/usr/bin/chromium")
CERTUTIL = Path("/usr/bin/certutil")
CA_NICKNAME = "Homeport development CA"

#: Headless, offline and quiet; every host name goes to loopback.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * 127.0.0.1",
)

LAUNCH_TIMEOUT_MS = 20_000
#: Default for every Playwright action and navigation on a page.
ACTION_TIMEOUT_MS = 20_000
#: Default for ``expect(...)`` (Playwright's own is 5 s, tight on a busy 2-core CI machine).
EXPECT_TIMEOUT_MS = 15_000
expect.set_options(timeout=EXPECT_TIMEOUT_MS)


def missing_tools() -> list[str]:
    """Debian packages the browser tests need that this machine lacks."""
    missing = []
    if not CHROMIUM.exists():
        missing.append("chromium")
    if not CERTUTIL.exists():
        missing.append("libnss3-tools")
    return missing


def make_nss_home(home: Path, ca_path: Path) -> None:
    """Create ``home/.pki/nssdb`` trusting ``ca_path`` for TLS servers."""
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True, exist_ok=True)
    db = f"sql:{nssdb}"
    for command in (
        ["-N", "-d", db, "--empty-password"],
        ["-A", "-d", db, "-n", CA_NICKNAME, "-t", "C,,", "-i", str(ca_path)],
    ):
        subprocess.run([str(CERTUTIL), *command], check=True, capture_output=True, timeout=30)


@dataclass
class Person:
    """One fresh browser context and its page, with what the page reported."""

    page: Page
    console: list[ConsoleMessage] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def csp_errors(self) -> list[str]:
        return [
            m.text
            for m in self.console
            if m.type == "error" and "Content Security Policy" in m.text
        ]


class Chromium:
    """A running Chromium; ``person()`` opens an isolated context (own cookies, cache)."""

    def __init__(self, playwright: Playwright, home: Path) -> None:
        self._playwright = playwright
        self.home = home
        self._browser: Browser | None = None

    async def start(self, ca_path: Path) -> None:
        """Trust ``ca_path`` and launch (once; the CA is the relay's, known after it starts)."""
        assert self._browser is None, "Chromium already started"
        make_nss_home(self.home, ca_path)
        env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
        env["HOME"] = str(self.home)
        self._browser = await self._playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=list(CHROMIUM_FLAGS),
            env=env,
            timeout=LAUNCH_TIMEOUT_MS,
        )

    @contextlib.asynccontextmanager
    async def person(self) -> AsyncIterator[Person]:
        assert self._browser is not None, "call await chromium.start(stack.ca_path) first"
        context = await self._browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        context.set_default_navigation_timeout(ACTION_TIMEOUT_MS)
        try:
            page = await context.new_page()
            person = Person(page)
            page.on("console", lambda message: person.console.append(message))
            page.on("pageerror", lambda exc: person.page_errors.append(str(exc)))
            yield person
        finally:
            await context.close()

    async def close(self) -> None:
        if self._browser is not None:
            await self._browser.close()
            self._browser = None


@pytest_asyncio.fixture
async def chromium(tmp_path: Path) -> AsyncIterator[Chromium]:
    """A headless Debian Chromium in a fresh HOME; ``await chromium.start(ca)`` launches it."""
    missing = missing_tools()
    if missing:
        pytest.fail(
            f"the browser tests need Debian's {' and '.join(missing)}: run scripts/system-deps",
            pytrace=False,
        )
    home = tmp_path / "chromium-home"
    home.mkdir()
    async with async_playwright() as playwright:
        browser = Chromium(playwright, home)
        try:
            yield browser
        finally:
            await browser.close()
    shutil.rmtree(home, ignore_errors=True)
