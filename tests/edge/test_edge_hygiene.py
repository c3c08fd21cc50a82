"""Front-door hygiene (R-OPS-02/03/04, R-MT-11 slow clients): errors, probes, deadlines, secrets.

* a forced 500 shows a generic page: no stack trace, no exception text;
* the paths scanners try first (``/.git/HEAD``, ``/.env``, ...) are 404 on the
  account host, and no directory is ever listed;
* a request head that trickles in byte by byte is cut off at the idle deadline
  counted from the connection's start, not from its last byte (slowloris);
* no private key or well-known token format is committed, outside test
  fixtures that say so.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from edge_checks import assert_relay_page
from ports import listening_socket
from rawhttp import connect, exchange

from homeport.relay import app as relay_app
from homeport.relay.app import Relay
from homeport.relay.config import RelayConfig
from homeport.relay.site.signin_flow import ACCOUNT_COOKIE

ACCOUNT = "homeport.localhost"
REPO = Path(__file__).resolve().parents[2]
SECRET_DETAIL = "boom: /srv/homeport/secret.db password=hunter2"


@pytest_asyncio.fixture
async def relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Relay]:
    monkeypatch.setattr(relay_app, "IDLE_TIMEOUT", 3.0)  # the real one is 75 s
    sock = listening_socket()
    relay = Relay(RelayConfig(data_dir=tmp_path / "relay", listen_port=sock.getsockname()[1]))
    await relay.start(sock=sock)
    try:
        yield relay
    finally:
        await relay.stop()


async def _get(
    relay: Relay, target: str, extra: str = ""
) -> tuple[int, list[tuple[str, str]], bytes]:
    port = relay.config.listen_port
    request = f"GET {target} HTTP/1.1\r\nHost: {ACCOUNT}:{port}\r\n{extra}\r\n".encode()
    ca = relay.config.data_dir / "tls" / "dev-ca.pem"
    answer = await exchange(port, ACCOUNT, ca, request)
    return answer.status, answer.headers, answer.body


async def test_a_crash_shows_a_generic_page(
    relay: Relay, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def crash(request: object) -> None:
        raise RuntimeError(SECRET_DETAIL)

    # The account site's guard looks the session cookie up before any page runs.
    monkeypatch.setattr(relay.accounts.sessions, "resolve", crash)
    status, headers, body = await _get(relay, "/", f"Cookie: {ACCOUNT_COOKIE}=x\r\n")
    assert status == 500
    assert b"Something went wrong" in body
    for leak in (b"Traceback", b"RuntimeError", b"hunter2", b"secret.db", b"relay.site"):
        assert leak not in body, leak
    assert_relay_page(headers, relay.pages.csp, what="500")
    assert any(r.message == "relay.unhandled_error" for r in caplog.records)


@pytest.mark.parametrize(
    "target",
    ["/.git/HEAD", "/.git/config", "/.env", "/static/", "/static/..%2f..%2fetc/passwd", "/.svn/"],
)
async def test_scanner_favourites_are_404(relay: Relay, target: str) -> None:
    status, headers, body = await _get(relay, target)
    assert status == 404, target
    assert b"Index of" not in body
    assert b"ref:" not in body
    assert_relay_page(headers, relay.pages.csp, what=target)


async def test_a_trickling_head_is_cut_off_at_the_deadline(relay: Relay) -> None:
    """Bytes that keep coming do not extend the deadline for a complete request head."""
    port = relay.config.listen_port
    reader, writer = await connect(port, ACCOUNT, relay.config.data_dir / "tls" / "dev-ca.pem")
    started = time.monotonic()
    writer.write(f"GET / HTTP/1.1\r\nHost: {ACCOUNT}:{port}\r\n".encode())
    closed_at = None
    try:
        async with asyncio.timeout(30):
            while closed_at is None:
                try:
                    writer.write(b"X-Slow: a\r\n")
                    await writer.drain()
                    data = await asyncio.wait_for(reader.read(1024), 0.5)
                except TimeoutError:
                    continue
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    closed_at = time.monotonic()
                else:
                    raise AssertionError(f"answered a head that never finished: {data[:80]!r}")
    finally:
        writer.close()
    elapsed = closed_at - started
    assert 2.0 <= elapsed < 20, elapsed  # the 3 s deadline, give or take a loaded machine


async def test_an_idle_connection_is_closed_at_the_deadline(relay: Relay) -> None:
    port = relay.config.listen_port
    reader, writer = await connect(port, ACCOUNT, relay.config.data_dir / "tls" / "dev-ca.pem")
    started = time.monotonic()
    try:
        async with asyncio.timeout(30):
            assert await reader.read(1) == b""
    finally:
        writer.close()
    assert 2.0 <= time.monotonic() - started < 20


def test_the_real_idle_deadline_is_short() -> None:
    assert relay_app.IDLE_TIMEOUT <= 120


# ------------------------------------------------------------------ secrets

#: Built from parts so this file does not match itself.
_BEGIN, _END = "-----" + "BEGIN", "-----" + "END"
SECRET_PATTERNS = {
    "PEM private key": re.compile(
        _BEGIN + r" (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----\s+[A-Za-z0-9+/=:\-,\s]{32,}?" + _END
    ),
    "AWS access key": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b|\bgithub_pat_[A-Za-z0-9_]{60,}"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "Stripe live key": re.compile(r"\b[sr]k_live_[0-9a-zA-Z]{24,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    "private key in JSON": re.compile(r'"private_key"\s*:\s*"' + _BEGIN),
}
#: A committed test fixture that really must hold a key says so on a line of its own.
FIXTURE_MARKER = "homeport: " + "test fixture secret"


def _tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout
    return [REPO / name for name in out.decode().split("\0") if name]


def test_no_secrets_are_committed() -> None:
    files = _tracked_files()
    assert len(files) > 50, "not a git checkout?"
    found = []
    for path in files:
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        for what, pattern in SECRET_PATTERNS.items():
            if pattern.search(text) and not (
                FIXTURE_MARKER in text and path.is_relative_to(REPO / "tests")
            ):
                found.append(f"{path.relative_to(REPO)}: {what}")
    assert found == []


def test_the_secret_scan_finds_what_it_looks_for() -> None:
    body = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg" * 2
    pem = f"{_BEGIN} EC PRIVATE KEY-----\n{body}\n{_END} EC PRIVATE KEY-----\n"
    assert SECRET_PATTERNS["PEM private key"].search(pem)
    assert SECRET_PATTERNS["AWS access key"].search("key = AKIA" + "ABCDEFGHIJKLMNOP")
    assert SECRET_PATTERNS["GitHub token"].search("ghp_" + "a" * 36)
    # A test that only names the header (tests/test_keys.py does) is not a key.
    named_only = f'startswith(b"{_BEGIN} PRIVATE KEY-----\\n")'
    assert not SECRET_PATTERNS["PEM private key"].search(named_only)
