"""Accounts: creation, email normalisation, authentication."""

from __future__ import annotations

import time
from datetime import UTC, timedelta, timezone

import pytest
from accounts_support import PASSWORD, Clock
from argon2 import PasswordHasher
from sqlalchemy import update

from homeport.accounts import (
    AccountExists,
    Accounts,
    Database,
    InvalidEmail,
    PasswordPolicyError,
    UnknownUser,
    User,
)


async def test_create_user_normalises_email(accounts: Accounts, clock: Clock) -> None:
    user = await accounts.create_user("  Alice@EXAMPLE.com ", PASSWORD)
    assert user.email == "alice@example.com"
    assert user.created_at == clock.now
    assert user.created_at.tzinfo is not None
    assert not user.disabled
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in repr(user)
    assert user.password_hash not in repr(user)
    fetched = await accounts.get_user(user.id)
    assert fetched is not None
    assert fetched.email == "alice@example.com"
    assert await accounts.get_user(user.id + 1) is None
    assert [u.email for u in await accounts.list_users()] == ["alice@example.com"]


async def test_duplicate_email_rejected_in_any_spelling(accounts: Accounts, alice: User) -> None:
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in "alice") + "@example.com"
    for spelling in ("alice@example.com", "ALICE@example.COM", full_width):
        with pytest.raises(AccountExists):
            await accounts.create_user(spelling, PASSWORD)


@pytest.mark.parametrize("email", ["", "alice", "@example.com", "alice@", "a b@example.com"])
async def test_invalid_email_rejected(accounts: Accounts, email: str) -> None:
    with pytest.raises(InvalidEmail):
        await accounts.create_user(email, PASSWORD)


async def test_weak_password_rejected_at_signup(accounts: Accounts) -> None:
    with pytest.raises(PasswordPolicyError):
        await accounts.create_user("carol@example.com", "fourteen chars")
    with pytest.raises(PasswordPolicyError):
        await accounts.create_user("carol@example.com", "x" * 1025)
    assert await accounts.list_users() == []


async def test_timestamps_round_trip_as_utc(db: Database) -> None:
    plus_two = timezone(timedelta(hours=2))
    clock = Clock()
    clock.now = clock.now.astimezone(plus_two)
    user = await Accounts(db, now=clock).create_user("tz@example.com", PASSWORD)
    stored = await Accounts(db).get_user(user.id)
    assert stored is not None
    assert stored.created_at.tzinfo == UTC
    assert stored.created_at == clock.now


async def test_authenticate_success(accounts: Accounts, alice: User) -> None:
    user = await accounts.authenticate("Alice@Example.com", PASSWORD)
    assert user is not None
    assert user.id == alice.id


async def test_authenticate_failures(accounts: Accounts, alice: User) -> None:
    assert await accounts.authenticate("alice@example.com", PASSWORD + "x") is None
    assert await accounts.authenticate("alice@example.com", "") is None
    assert await accounts.authenticate("nobody@example.com", PASSWORD) is None
    assert await accounts.authenticate("not an email", PASSWORD) is None
    assert await accounts.authenticate("alice@example.com", "x" * 5000) is None


async def test_disabled_user_cannot_authenticate(accounts: Accounts, alice: User) -> None:
    await accounts.set_user_disabled(alice.id, True)
    assert await accounts.authenticate("alice@example.com", PASSWORD) is None
    await accounts.set_user_disabled(alice.id, False)
    assert await accounts.authenticate("alice@example.com", PASSWORD) is not None
    with pytest.raises(UnknownUser):
        await accounts.set_user_disabled(9999, True)


async def test_unknown_user_costs_a_hash(accounts: Accounts, alice: User) -> None:
    """No cheap answer for unknown emails: enumeration by timing is not free."""
    await accounts.authenticate("warmup@example.com", PASSWORD)  # builds the dummy hash

    async def timed(email: str) -> float:
        started = time.perf_counter()
        assert await accounts.authenticate(email, "wrong password here!") is None
        return time.perf_counter() - started

    # The fastest of a few runs is the work itself; slower ones measure a busy machine.
    # Taken in turns, so a busy spell (tests run beside this one) weighs on both alike.
    knowns: list[float] = []
    unknowns: list[float] = []
    for _ in range(5):
        knowns.append(await timed("alice@example.com"))
        unknowns.append(await timed("nobody@example.com"))
    known, unknown = min(knowns), min(unknowns)
    assert unknown > 0.5 * known
    assert known > 0.5 * unknown


async def test_outdated_hash_upgraded_on_login(accounts: Accounts, db: Database) -> None:
    user = await accounts.create_user("old@example.com", PASSWORD)
    weak = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1).hash(PASSWORD)
    async with db.session(write=True) as s, s.begin():
        await s.execute(update(User).where(User.id == user.id).values(password_hash=weak))
    assert await accounts.authenticate("old@example.com", PASSWORD) is not None
    stored = await accounts.get_user(user.id)
    assert stored is not None
    assert stored.password_hash != weak
    assert ",t=2,p=1$" in stored.password_hash
    assert "m=19456," not in stored.password_hash
    assert await accounts.authenticate("old@example.com", PASSWORD) is not None


async def test_wrong_password_does_not_rehash(accounts: Accounts, db: Database) -> None:
    user = await accounts.create_user("old@example.com", PASSWORD)
    weak = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1).hash(PASSWORD)
    async with db.session(write=True) as s, s.begin():
        await s.execute(update(User).where(User.id == user.id).values(password_hash=weak))
    assert await accounts.authenticate("old@example.com", "not the password!") is None
    stored = await accounts.get_user(user.id)
    assert stored is not None
    assert stored.password_hash == weak


async def test_set_password_revokes_other_sessions(accounts: Accounts, alice: User) -> None:
    keep, keep_row = await accounts.create_session(alice, "account", user_agent="a", ip="1")
    other, _ = await accounts.create_session(alice, "account", user_agent="b", ip="2")
    new_password = "an entirely new passphrase"
    await accounts.set_password(alice.id, new_password, keep_session_id=keep_row.id)
    assert await accounts.resolve_session(keep, kind="account") is not None
    assert await accounts.resolve_session(other, kind="account") is None
    assert await accounts.authenticate("alice@example.com", PASSWORD) is None
    assert await accounts.authenticate("alice@example.com", new_password) is not None
    with pytest.raises(PasswordPolicyError):
        await accounts.set_password(alice.id, "too short")
