"""TOTP second factor: RFC 6238 vectors, window, replay, recovery codes, sealing at rest."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyotp
import pytest
from accounts_support import Clock

from homeport.accounts import Accounts, Database, User
from homeport.accounts.secretbox import SecretBox, SecretBoxError
from homeport.accounts.totp import (
    RECOVERY_CODE_COUNT,
    Totp,
    match_step,
)

# RFC 6238 Appendix B, SHA1 rows (seed "12345678901234567890", 8 digits). A
# 6-digit code is the last 6 digits of the 8-digit one (HOTP is mod 10^d).
RFC6238_SHA1 = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]
RFC_SEED = b"12345678901234567890"


@pytest.fixture
def box(tmp_path: Path) -> SecretBox:
    return SecretBox.load_or_create(tmp_path / "keys" / "secret-box.key")


@pytest.fixture
def totp_accounts(db: Database, clock: Clock, box: SecretBox) -> Accounts:
    return Accounts(db, now=clock, secret_box=box)


def at(clock: Clock, unix: float) -> None:
    clock.now = datetime.fromtimestamp(unix, UTC)


def code_for(secret_b32: str, unix: float) -> str:
    return pyotp.TOTP(secret_b32).at(unix)


async def enrol(accounts: Accounts, alice: User, clock: Clock) -> tuple[str, list[str]]:
    enrolment = await accounts.totp.start_enrolment(alice.id, alice.email)
    outcome, codes = await accounts.totp.confirm_enrolment(
        alice.id, code_for(enrolment.secret_base32, clock.now.timestamp()), ip="192.0.2.1"
    )
    assert outcome.ok
    return enrolment.secret_base32, codes


@pytest.mark.parametrize(("unix", "expected"), RFC6238_SHA1)
def test_rfc6238_sha1_vectors(unix: int, expected: str) -> None:
    step = unix // 30
    assert match_step(RFC_SEED, expected[-6:], unix) == step
    assert match_step(RFC_SEED, expected[-6:], unix + 30) == step  # T-1 accepted
    assert match_step(RFC_SEED, expected[-6:], unix + 60) is None
    assert match_step(RFC_SEED, expected[-6:], unix - 60) is None
    wrong = f"{(int(expected[-6:]) + 1) % 1_000_000:06d}"
    assert match_step(RFC_SEED, wrong, unix) != step


def test_malformed_codes_never_match() -> None:
    for bad in ("", "12345", "1234567", "abcdef", "١٢٣٤٥٦", "082 "):
        assert match_step(RFC_SEED, bad, 59) is None


async def test_enrolment_and_uri(totp_accounts: Accounts, alice: User, clock: Clock) -> None:
    enrolment = await totp_accounts.totp.start_enrolment(alice.id, alice.email)
    assert len(base64.b32decode(enrolment.secret_base32)) == 20  # 160 bits
    assert enrolment.uri.startswith("otpauth://totp/")
    assert f"secret={enrolment.secret_base32}" in enrolment.uri
    assert not await totp_accounts.totp.is_enabled(alice.id)
    outcome, codes = await totp_accounts.totp.confirm_enrolment(alice.id, "000000", ip=None)
    if outcome.ok:  # 1 in 333 333 chance the fixed code is right: try another
        pytest.skip("fixed wrong code happened to be valid")
    assert codes == []
    assert not await totp_accounts.totp.is_enabled(alice.id)
    outcome, codes = await totp_accounts.totp.confirm_enrolment(
        alice.id, code_for(enrolment.secret_base32, clock.now.timestamp()), ip=None
    )
    assert outcome.ok
    assert await totp_accounts.totp.is_enabled(alice.id)
    assert len(codes) == RECOVERY_CODE_COUNT == len(set(codes))


async def test_window_and_replay(totp_accounts: Accounts, alice: User, clock: Clock) -> None:
    secret, _ = await enrol(totp_accounts, alice, clock)
    verify = totp_accounts.totp.verify
    clock.advance(seconds=300)
    now = clock.now.timestamp()
    assert not (await verify(alice.id, code_for(secret, now + 60), ip=None)).ok
    assert not (await verify(alice.id, code_for(secret, now - 60), ip=None)).ok
    assert (await verify(alice.id, code_for(secret, now - 30), ip=None)).ok  # T-1
    # the same code again: replay
    assert not (await verify(alice.id, code_for(secret, now - 30), ip=None)).ok
    assert (await verify(alice.id, code_for(secret, now), ip=None)).ok
    clock.advance(seconds=30)
    # an older step after a newer one was accepted
    assert not (await verify(alice.id, code_for(secret, now), ip=None)).ok
    assert (await verify(alice.id, code_for(secret, clock.now.timestamp()), ip=None)).ok


async def test_failures_are_throttled(totp_accounts: Accounts, alice: User, clock: Clock) -> None:
    secret, _ = await enrol(totp_accounts, alice, clock)
    clock.advance(seconds=300)
    right = code_for(secret, clock.now.timestamp())
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for _ in range(5):
        outcome = await totp_accounts.totp.verify(alice.id, wrong, ip="192.0.2.1")
        assert not outcome.ok
        assert outcome.wait == 0
    # from the 5th failure on, even the right code is refused unchecked until the delay ends
    outcome = await totp_accounts.totp.verify(alice.id, right, ip="198.51.100.7")
    assert not outcome.ok
    assert outcome.wait > 0
    clock.advance(seconds=2)
    assert (await totp_accounts.totp.verify(alice.id, right, ip="192.0.2.1")).ok


async def test_recovery_codes_single_use(
    totp_accounts: Accounts, alice: User, clock: Clock
) -> None:
    _, codes = await enrol(totp_accounts, alice, clock)
    use = totp_accounts.totp.use_recovery_code
    assert (await use(alice.id, codes[0].upper().replace("-", " "), ip=None)).ok
    assert not (await use(alice.id, codes[0], ip=None)).ok
    assert not (await use(alice.id, "aaaa-bbbb-cccc-dddd-eeee-ffff", ip=None)).ok
    assert await totp_accounts.totp.recovery_codes_left(alice.id) == RECOVERY_CODE_COUNT - 1


@pytest.mark.sqlite_only  # reads the database file itself
async def test_secret_not_in_database_in_clear(
    totp_accounts: Accounts, alice: User, clock: Clock, data_dir: Path, db: Database
) -> None:
    secret, codes = await enrol(totp_accounts, alice, clock)
    await db.close()  # flush the WAL into the main file
    raw = b"".join(p.read_bytes() for p in data_dir.iterdir() if p.is_file())
    assert secret.encode() not in raw
    assert base64.b32decode(secret + "=" * (-len(secret) % 8)) not in raw
    assert codes[0].encode() not in raw


async def test_wrong_key_cannot_decrypt(
    db: Database, clock: Clock, alice: User, box: SecretBox, tmp_path: Path
) -> None:
    accounts = Accounts(db, now=clock, secret_box=box)
    await enrol(accounts, alice, clock)
    other = SecretBox.load_or_create(tmp_path / "other.key")
    stolen = Totp(db, other, accounts.throttle, now=clock)
    with pytest.raises(SecretBoxError, match="wrong secret-box key"):
        await stolen.verify(alice.id, "123456", ip=None)


def test_key_file_mode_and_refusal(tmp_path: Path) -> None:
    path = tmp_path / "k" / "secret-box.key"
    SecretBox.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    sealed = SecretBox.load_or_create(path).seal(b"seed", b"row 1")
    assert SecretBox.load_or_create(path).open(sealed, b"row 1") == b"seed"
    with pytest.raises(SecretBoxError):
        SecretBox.load_or_create(path).open(sealed, b"row 2")  # moved to another row
    os.chmod(path, 0o644)
    with pytest.raises(SecretBoxError, match="readable by others"):
        SecretBox.load_or_create(path)


async def test_pending_login(totp_accounts: Accounts, alice: User, clock: Clock) -> None:
    token = await totp_accounts.totp.start_pending(alice.id, "/x")
    pending = await totp_accounts.totp.pending(token)
    assert pending is not None
    assert pending.user_id == alice.id
    assert pending.next_path == "/x"
    assert await totp_accounts.totp.finish_pending(token)
    assert not await totp_accounts.totp.finish_pending(token)  # single use
    assert await totp_accounts.totp.pending(token) is None
    late = await totp_accounts.totp.start_pending(alice.id, "/")
    clock.advance(seconds=timedelta(minutes=5).total_seconds())
    assert await totp_accounts.totp.pending(late) is None
    assert not await totp_accounts.totp.finish_pending(late)
