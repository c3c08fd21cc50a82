"""The operator's admin commands, run as real processes on the relay's database.

The account's state is set up and read back in-process through :class:`Accounts`
on the same SQLite file (as a running relay would see it); the commands are the
real ``homeport admin …`` with their one line of output and their exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pyotp
import pytest
from pwned_range import RangeService
from smtp_sink import SmtpSink

from homeport.accounts import Accounts, Database, default_sqlite_url
from homeport.accounts.operator import ACCOUNT_DELETED, FACTOR_RESET
from homeport.accounts.secretbox import KEY_FILE_NAME, SecretBox
from homeport.keys import load_or_create_private_key, public_key_text

HOMEPORT = [sys.executable, "-m", "homeport.cli"]
PASSWORD = "a long enough passphrase for tests"
EMAIL = "ana@example.com"


def admin(data: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEPORT_")}
    return subprocess.run(
        [*HOMEPORT, "admin", *args, "--data-dir", str(data)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@contextlib.asynccontextmanager
async def accounts_on(data: Path) -> AsyncIterator[Accounts]:
    database = Database(default_sqlite_url(data))
    await database.connect()
    try:
        await database.migrate()
        yield Accounts(database, secret_box=SecretBox.load_or_create(data / KEY_FILE_NAME))
    finally:
        await database.close()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    data = tmp_path / "relay"
    created = admin(data, "user", "create", EMAIL, stdin=PASSWORD + "\n")
    assert created.returncode == 0, created.stderr
    return data


async def _link_home(accounts: Accounts, tmp_path: Path, email: str = EMAIL) -> str:
    key = load_or_create_private_key(tmp_path / "addon-key.pem")
    code, _ = await accounts.create_link_code(public_key_text(key.public_key()))
    instance = await accounts.link_instance(code, email)
    return instance.id


async def test_create_refuses_a_breached_password_when_the_check_is_on(tmp_path: Path) -> None:
    leaked = "correct horse battery staple leaked"
    data = tmp_path / "relay"
    async with RangeService(breached={leaked: 7}) as service:
        check = ("--breached-passwords-url", service.url)
        # In a thread: the stand-in answers on this test's event loop meanwhile.
        refused = await asyncio.to_thread(
            admin, data, "user", "create", EMAIL, *check, stdin=leaked + "\n"
        )
        assert refused.returncode == 1
        assert refused.stderr == (
            "error: This password has appeared in a data breach, so attackers try it "
            "first. Choose another one.\n"
        )
        assert len(service.requests) == 1
        created = await asyncio.to_thread(
            admin, data, "user", "create", EMAIL, *check, stdin=PASSWORD + "\n"
        )
        assert (created.returncode, created.stderr) == (0, "")


async def test_disable_and_enable(data: Path) -> None:
    async with accounts_on(data) as accounts:
        user = await accounts.get_user_by_email(EMAIL)
        assert user is not None
        _, session = await accounts.create_session(user, "account", user_agent="t", ip="192.0.2.1")
    disabled = admin(data, "user", "disable", EMAIL)
    assert (disabled.returncode, disabled.stderr) == (0, "")
    assert disabled.stdout == f"Disabled (every session ended): {EMAIL}\n"
    async with accounts_on(data) as accounts:
        assert await accounts.authenticate(EMAIL, PASSWORD) is None
        assert not await accounts.live_session_ids([session.id])
    enabled = admin(data, "user", "enable", EMAIL)
    assert enabled.stdout == f"Enabled: {EMAIL}\n"
    async with accounts_on(data) as accounts:
        assert await accounts.authenticate(EMAIL, PASSWORD) is not None


async def test_reset_second_factor_is_audited_and_mailed(tmp_path: Path, data: Path) -> None:
    async with accounts_on(data) as accounts:
        user = await accounts.get_user_by_email(EMAIL)
        assert user is not None
        enrolment = await accounts.totp.start_enrolment(user.id, EMAIL)
        outcome, codes = await accounts.totp.confirm_enrolment(
            user.id, pyotp.TOTP(enrolment.secret_base32).now(), ip="192.0.2.1"
        )
        assert outcome.ok
        assert len(codes) == 10
        _, session = await accounts.create_session(user, "account", user_agent="t", ip="192.0.2.1")
    with SmtpSink() as sink:
        reset = admin(
            data, "user", "reset-second-factor", EMAIL,
            "--smtp-host", "127.0.0.1", "--smtp-port", str(sink.port),
            "--smtp-security", "none", "--mail-from", "relay@example.com",
        )  # fmt: skip
        assert reset.returncode == 0, reset.stderr
        assert reset.stderr == ""
        assert reset.stdout.splitlines() == [
            f"Reset the second factor of {EMAIL}: authenticator app removed, 0 passkey(s) "
            "removed, 1 session(s) ended",
            f"Mailed {EMAIL}",
        ]
        mail = await sink.wait_for(EMAIL)
    assert mail.message["Subject"] == "Security change on your Homeport account"
    assert "the relay's operator removed your second factor" in mail.text
    async with accounts_on(data) as accounts:
        assert not await accounts.totp.is_enabled(user.id)
        assert await accounts.totp.recovery_codes_left(user.id) == 0
        assert not await accounts.live_session_ids([session.id])
        events = await accounts.audit.export(user.id)
        assert [e.kind for e in events if e.kind == FACTOR_RESET] == [FACTOR_RESET]
    # Without mail, the operator is told to tell the owner.
    again = admin(data, "user", "reset-second-factor", EMAIL)
    assert again.stdout.splitlines()[-1] == "Not mailed: no --smtp-host (tell the owner yourself)"


async def test_delete_needs_yes_and_unlinks_the_homes(tmp_path: Path, data: Path) -> None:
    async with accounts_on(data) as accounts:
        home = await _link_home(accounts, tmp_path)
        user = await accounts.get_user_by_email(EMAIL)
        assert user is not None
    asked = admin(data, "user", "delete", EMAIL)
    assert asked.returncode == 1
    assert asked.stderr == (
        f"error: this deletes {EMAIL} and unlinks the 1 home(s) it owns; run again with --yes\n"
    )
    deleted = admin(data, "user", "delete", EMAIL, "--yes")
    assert (deleted.returncode, deleted.stderr) == (0, "")
    assert deleted.stdout == f"Deleted {EMAIL}; unlinked {home}\n"
    async with accounts_on(data) as accounts:
        assert await accounts.get_user_by_email(EMAIL) is None
        assert await accounts.get_instance(home) is None
        events = await accounts.audit.export(user.id)
        assert ACCOUNT_DELETED in [e.kind for e in events]
    # The address is free again; the home's name is not (retired, R-MT-13).
    assert admin(data, "user", "create", EMAIL, stdin=PASSWORD + "\n").returncode == 0


async def test_unlink_a_home(tmp_path: Path, data: Path) -> None:
    async with accounts_on(data) as accounts:
        home = await _link_home(accounts, tmp_path)
    unlinked = admin(data, "instance", "unlink", home)
    assert (unlinked.returncode, unlinked.stderr) == (0, "")
    assert unlinked.stdout.startswith(f"Unlinked {home}: ")
    async with accounts_on(data) as accounts:
        assert await accounts.get_instance(home) is None
    again = admin(data, "instance", "unlink", home)
    assert (again.returncode, again.stderr) == (1, f"error: no home {home}\n")


@pytest.mark.parametrize(
    "args",
    [
        ("user", "disable", "nobody@example.com"),
        ("user", "enable", "nobody@example.com"),
        ("user", "delete", "nobody@example.com", "--yes"),
        ("user", "reset-second-factor", "nobody@example.com"),
    ],
)
def test_unknown_accounts_get_one_line(data: Path, args: tuple[str, ...]) -> None:
    result = admin(data, *args)
    assert result.returncode == 1
    assert result.stderr == "error: No account nobody@example.com.\n"
    assert result.stdout == ""


async def test_a_bad_cluster_key_stops_the_command_before_it_changes_anything(
    tmp_path: Path, data: Path
) -> None:
    """Checked first: a disable that could not be announced must not half-happen silently."""
    short = tmp_path / "short.key"
    short.write_text("too short")
    done = admin(
        data,
        "user",
        "disable",
        EMAIL,
        "--redis-url",
        "redis://127.0.0.1:9/0",
        "--cluster-key-file",
        str(short),
    )
    assert done.returncode == 1
    assert "at least 32 bytes" in done.stderr
    async with accounts_on(data) as accounts:
        user = await accounts.get_user_by_email(EMAIL)
        assert user is not None
        assert not user.disabled
