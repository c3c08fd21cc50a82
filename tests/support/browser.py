"""A real headless Chromium for end-to-end tests, driven by Playwright.

The browser is Debian's ``chromium`` (``scripts/system-deps`` installs it), started
by path: ``playwright install`` downloads a browser build of its own, which cannot
be fetched here, so it is never used.

Trust is real, not switched off: Chromium on Linux reads its trusted roots from the
NSS database in ``$HOME/.pki/nssdb``, so the browser gets a fresh ``HOME`` whose
database holds the test session's development CA (the ``dev_ca`` fixture; added
with ``certutil`` from Debian's ``libnss3-tools``).  Certificate errors therefore
fail the tests exactly as they would fail for a person.  Every name resolves to
127.0.0.1 (``--host-resolver-rules``), so ``*.localhost`` hosts work and nothing
leaves the machine.

One Chromium runs per test session (per xdist worker): each test attaches to it
over DevTools and each person gets a fresh browser context (own cookies, cache,
storage), so tests stay as isolated as with a browser each.  Relays must issue
from ``dev_ca`` for it to trust them: the e2e ``stack`` fixture does,
``start_stack(ca=dev_ca)`` and ``RelayProcess(ca=dev_ca)`` / ``start_home(ca=...)``
do.  ``await chromium.start(other_ca)`` launches a Chromium of the test's own that
trusts another CA (slower).

Tests take the ``chromium`` fixture (bring it in with ``pytest_plugins = ("browser",)``)
and open a fresh context for each person they play::

    async with chromium.person() as person:
        await person.page.goto(stack.tenant_origin + "/")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
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

from homeport.tls.devca import DevCA

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

#: What Playwright's own launch adds and a browser started by hand lacks: timers and
#: renderers of pages in the background are not throttled, and so on.
SESSION_FLAGS = (
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--disable-back-forward-cache",
    "--disable-hang-monitor",
    "--disable-ipc-flooding-protection",
    "--disable-popup-blocking",
    "--disable-prompt-on-repost",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--no-default-browser-check",
    "--no-service-autorun",
    "--password-store=basic",
    "--use-mock-keychain",
    "--metrics-recording-only",
    "--force-color-profile=srgb",
    "--hide-scrollbars",
    "--mute-audio",
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
    """One test's handle on a Chromium; ``person()`` opens an isolated context (own cookies,
    cache, storage) in it."""

    def __init__(self, playwright: Playwright, shared: SharedChromium, home: Path) -> None:
        self._playwright = playwright
        self._shared = shared
        self.home = home
        self._browser: Browser | None = None
        self._own: Browser | None = None

    async def connect(self) -> None:
        """Attach to the session's Chromium (which trusts the session's ``dev_ca``)."""
        self._browser = await self._playwright.chromium.connect_over_cdp(
            self._shared.endpoint, timeout=LAUNCH_TIMEOUT_MS
        )

    async def start(self, ca_path: Path) -> None:
        """Make sure the browser trusts ``ca_path``.

        Nothing to do for the session's ``dev_ca`` (what the e2e ``stack`` fixture,
        ``start_stack(ca=dev_ca)`` and ``RelayProcess(ca=dev_ca)`` use).  Any other
        CA gets a Chromium of this test's own that trusts it (slower: launched per
        test) in place of the shared one."""
        if ca_path.read_bytes() == self._shared.ca_pem:
            return
        assert self._own is None, "Chromium already started with another CA"
        make_nss_home(self.home, ca_path)
        self._own = await self._playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=list(CHROMIUM_FLAGS),
            env=_browser_env(self.home),
            timeout=LAUNCH_TIMEOUT_MS,
        )

    @contextlib.asynccontextmanager
    async def person(self) -> AsyncIterator[Person]:
        browser = self._own or self._browser
        assert browser is not None, "the chromium fixture connects before the test"
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
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
        """Close this test's contexts (and its own Chromium); the shared one stays up."""
        for browser in (self._own, self._browser):
            if browser is not None:
                await browser.close()
        self._own = self._browser = None


def _browser_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["HOME"] = str(home)
    return env


@dataclass
class SharedChromium:
    """The session's Chromium process and its DevTools endpoint (loopback only)."""

    endpoint: str
    ca_pem: bytes


def _start_chromium(home: Path, ca_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Launch Chromium trusting ``ca_path``, with DevTools on a port of the kernel's choosing."""
    make_nss_home(home, ca_path)
    profile = home / "profile"
    log = (home / "chromium.log").open("wb")
    proc = subprocess.Popen(
        [
            str(CHROMIUM),
            *CHROMIUM_FLAGS,
            *SESSION_FLAGS,
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_browser_env(home),
        start_new_session=True,  # its helpers go with it (see _stop_chromium)
    )
    log.close()
    active = profile / "DevToolsActivePort"  # Chromium writes "<port>\n<path>" once listening
    deadline = time.monotonic() + LAUNCH_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Chromium exited: {(home / 'chromium.log').read_text()[-2000:]}")
        lines = active.read_text().split() if active.exists() else []
        if len(lines) >= 2:
            return proc, f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        time.sleep(0.05)
    _stop_chromium(proc)
    raise TimeoutError("Chromium did not open its DevTools port")


def _stop_chromium(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture(scope="session")
def shared_chromium(
    tmp_path_factory: pytest.TempPathFactory, dev_ca: DevCA
) -> Iterator[SharedChromium]:
    """One headless Chromium per test session (per xdist worker), trusting ``dev_ca``.

    Playwright's own objects belong to one event loop, and every test has its
    own, so each test attaches to this process over DevTools (``chromium``)."""
    missing = missing_tools()
    if missing:
        pytest.fail(
            f"the browser tests need Debian's {' and '.join(missing)}: run scripts/system-deps",
            pytrace=False,
        )
    home = tmp_path_factory.mktemp("chromium-home")
    proc, endpoint = _start_chromium(home, dev_ca.cert_path)
    try:
        yield SharedChromium(endpoint, dev_ca.cert_path.read_bytes())
    finally:
        _stop_chromium(proc)
        shutil.rmtree(home, ignore_errors=True)


@pytest_asyncio.fixture
async def chromium(shared_chromium: SharedChromium, tmp_path: Path) -> AsyncIterator[Chromium]:
    """The session's headless Chromium, for this test: ``chromium.person()`` per person."""
    home = tmp_path / "chromium-home"
    home.mkdir()
    async with async_playwright() as playwright:
        browser = Chromium(playwright, shared_chromium, home)
        await browser.connect()
        try:
            yield browser
        finally:
            await browser.close()
