"""Breached passwords (R-PWD-03): the range check against a local stand-in of the range API.

The checker itself (found, not found, padding, timeout, service down, what is sent),
then the stores that use it at sign-up, password change and reset, on SQLite and
PostgreSQL. The real service is never contacted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from accounts_support import PASSWORD, Clock
from ports import reserve_port
from pwned_range import RangeService, sha1_split

from homeport.accounts import Accounts, Database
from homeport.accounts.breached import BREACHED_MESSAGE, BreachedPasswords, check_range_url
from homeport.accounts.passwords import PasswordPolicyError

LEAKED = "correct horse battery staple leaked"
NEVER_SEEN = "an unusual phrase nobody has leaked yet"


@pytest_asyncio.fixture
async def service() -> AsyncIterator[RangeService]:
    async with RangeService(breached={LEAKED: 3861}) as running:
        yield running


def _unavailable(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "accounts.breach_check_unavailable"]


async def test_a_breached_password_is_found(service: RangeService) -> None:
    check = BreachedPasswords(service.url)
    assert await check.times_seen(LEAKED) == 3861
    assert await check.is_breached(LEAKED)
    with pytest.raises(PasswordPolicyError) as refused:
        await check.check(LEAKED)
    assert str(refused.value) == BREACHED_MESSAGE


async def test_only_five_hex_characters_leave_with_padding_asked(service: RangeService) -> None:
    await BreachedPasswords(service.url).is_breached(NEVER_SEEN)
    prefix, suffix = sha1_split(NEVER_SEEN)
    [seen] = service.requests
    assert seen.path == f"/range/{prefix}"
    assert seen.headers["Add-Padding"] == "true"
    assert suffix not in str(seen.headers)
    assert NEVER_SEEN not in str(seen.headers)
    assert "homeport" in seen.headers["User-Agent"]


async def test_a_password_never_seen_passes(service: RangeService) -> None:
    check = BreachedPasswords(service.url)
    assert await check.times_seen(NEVER_SEEN) == 0
    await check.check(NEVER_SEEN)


async def test_padding_lines_are_never_a_match(service: RangeService) -> None:
    # The padding happens to carry this password's own suffix, with count 0.
    service.padding.add(sha1_split(NEVER_SEEN)[1])
    check = BreachedPasswords(service.url)
    assert await check.times_seen(NEVER_SEEN) == 0
    assert not await check.is_breached(NEVER_SEEN)


async def test_no_answer_in_time_fails_open_and_is_logged(
    service: RangeService, caplog: pytest.LogCaptureFixture
) -> None:
    service.delay = 5.0
    check = BreachedPasswords(service.url, timeout=0.3)
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    assert await check.times_seen(LEAKED) is None
    assert time.monotonic() - started < 2.0
    await check.check(LEAKED)  # let through: the service did not answer
    [line, _again] = _unavailable(caplog)
    assert line.reason == "timeout"  # type: ignore[attr-defined]
    prefix, suffix = sha1_split(LEAKED)
    for record in caplog.records:  # metadata only
        text = record.getMessage() + str(record.__dict__)
        assert prefix not in text
        assert suffix not in text
        assert LEAKED not in text


async def test_a_service_that_is_down_fails_open(caplog: pytest.LogCaptureFixture) -> None:
    port = reserve_port()  # reserved for this process, and nobody listens on it
    caplog.set_level(logging.WARNING)
    check = BreachedPasswords(f"http://127.0.0.1:{port}", timeout=2.0)
    assert await check.times_seen(LEAKED) is None
    await check.check(LEAKED)  # let through
    lines = _unavailable(caplog)
    assert [line.reason for line in lines] == ["ConnectError"] * 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_an_error_answer_fails_open(
    service: RangeService, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    service.status = status
    caplog.set_level(logging.WARNING)
    assert await BreachedPasswords(service.url).times_seen(LEAKED) is None
    [line] = _unavailable(caplog)
    assert line.reason == f"status {status}"  # type: ignore[attr-defined]


async def test_an_answer_that_is_no_range_answer_fails_open(
    service: RangeService, caplog: pytest.LogCaptureFixture
) -> None:
    service.body = "<html>Sign in to the hotel Wi-Fi</html>"
    caplog.set_level(logging.WARNING)
    assert await BreachedPasswords(service.url).times_seen(LEAKED) is None
    [line] = _unavailable(caplog)
    assert line.reason == "not a range answer"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://api.pwnedpasswords.com", "https://"),
        ("http://api.pwnedpasswords.com", "loopback"),
        ("https://", "https://"),
        ("https://user:pw@api.pwnedpasswords.com", "credentials"),
        ("https://api.pwnedpasswords.com/?x=1", "query"),
    ],
)
def test_only_https_or_loopback(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_range_url(url)


def test_accepted_urls() -> None:
    assert check_range_url("https://api.pwnedpasswords.com/") == "https://api.pwnedpasswords.com"
    assert check_range_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert check_range_url("http://localhost:8080/mirror") == "http://localhost:8080/mirror"


# ------------------------------------------------------------ the stores using it


@pytest.fixture
def screened(db: Database, clock: Clock, service: RangeService) -> Accounts:
    return Accounts(db, now=clock, breached_passwords=BreachedPasswords(service.url))


async def test_sign_up_refuses_a_breached_password(screened: Accounts) -> None:
    with pytest.raises(PasswordPolicyError, match="data breach"):
        await screened.signups.sign_up("new@example.com", LEAKED, ip="192.0.2.1")
    outcome = await screened.signups.sign_up("new@example.com", NEVER_SEEN, ip="192.0.2.1")
    assert outcome.mail == "verify"


async def test_create_and_password_change_refuse_a_breached_password(
    screened: Accounts,
) -> None:
    with pytest.raises(PasswordPolicyError, match="data breach"):
        await screened.users.create("ana@example.com", LEAKED)
    user = await screened.users.create("ana@example.com", PASSWORD)
    with pytest.raises(PasswordPolicyError, match="data breach"):
        await screened.users.set_password(user.id, LEAKED)
    assert await screened.authenticate("ana@example.com", PASSWORD) is not None
    await screened.users.set_password(user.id, NEVER_SEEN)
    assert await screened.authenticate("ana@example.com", NEVER_SEEN) is not None


async def test_reset_screens_before_the_link_is_used(
    screened: Accounts, service: RangeService
) -> None:
    user = await screened.users.create("ana@example.com", PASSWORD)
    with pytest.raises(PasswordPolicyError, match="data breach"):
        await screened.users.screen(LEAKED, email=user.email)
    await screened.users.screen(NEVER_SEEN, email=user.email)
    asked = len(service.requests)
    await screened.users.set_password(user.id, NEVER_SEEN, screened=True)
    assert len(service.requests) == asked  # not asked twice for one password


async def test_stores_keep_working_when_the_service_is_down(
    screened: Accounts, service: RangeService
) -> None:
    service.status = 503
    user = await screened.users.create("ana@example.com", LEAKED)  # fail open
    await screened.users.set_password(user.id, LEAKED + " again")
    outcome = await screened.signups.sign_up("new@example.com", LEAKED, ip="192.0.2.1")
    assert outcome.mail == "verify"


async def test_off_by_default(accounts: Accounts) -> None:
    # No service configured: nothing is asked, the local policy still applies.
    await accounts.users.create("ana@example.com", LEAKED)
