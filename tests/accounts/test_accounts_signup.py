"""Public sign-up with email verification, on a fake clock."""

from __future__ import annotations

import pytest
from accounts_support import PASSWORD, Clock
from sqlalchemy import select

from homeport.accounts import Accounts, Database, User
from homeport.accounts.errors import InvalidEmail
from homeport.accounts.identifiers import sha256_hex
from homeport.accounts.models import PendingSignup
from homeport.accounts.passwords import PasswordPolicyError

IP = "198.51.100.7"
MINE = "my own long passphrase for homeport"
THEIRS = "a squatter's long passphrase, not mine"


async def test_account_exists_only_after_the_link(accounts: Accounts, db: Database) -> None:
    outcome = await accounts.signups.sign_up("New@Example.com", MINE, ip=IP)
    assert outcome.mail == "verify"
    assert outcome.email == "new@example.com"
    assert outcome.token
    assert await accounts.get_user_by_email("new@example.com") is None
    assert await accounts.authenticate("new@example.com", MINE) is None  # cannot sign in
    async with db.session() as s:
        assert list(await s.scalars(select(PendingSignup.token_hash))) == [
            sha256_hex(outcome.token)
        ]
    assert await accounts.signups.pending_email(outcome.token) == "new@example.com"
    user = await accounts.signups.verify(outcome.token)
    assert user is not None
    assert await accounts.authenticate("new@example.com", MINE) is not None
    assert await accounts.signups.verify(outcome.token) is None  # single use


async def test_each_link_carries_its_own_password(accounts: Accounts) -> None:
    squatter = await accounts.signups.sign_up("owner@example.com", THEIRS, ip="203.0.113.5")
    owner = await accounts.signups.sign_up("owner@example.com", MINE, ip=IP)
    assert squatter.token
    assert owner.token
    assert await accounts.signups.verify(owner.token) is not None
    assert await accounts.authenticate("owner@example.com", MINE) is not None
    assert await accounts.authenticate("owner@example.com", THEIRS) is None
    assert await accounts.signups.verify(squatter.token) is None  # the other links died


async def test_existing_account_gets_a_note_not_a_link(accounts: Accounts, alice: User) -> None:
    outcome = await accounts.signups.sign_up(alice.email, MINE, ip=IP)
    assert outcome.mail == "exists"
    assert outcome.token is None
    assert await accounts.authenticate(alice.email, PASSWORD) is not None  # unchanged


async def test_links_expire(accounts: Accounts, clock: Clock) -> None:
    outcome = await accounts.signups.sign_up("late@example.com", MINE, ip=IP)
    assert outcome.token
    clock.advance(hours=24, seconds=1)
    assert await accounts.signups.verify(outcome.token) is None
    assert await accounts.signups.purge() == 1


async def test_bad_input_is_refused(accounts: Accounts) -> None:
    with pytest.raises(InvalidEmail):
        await accounts.signups.sign_up("not an address", MINE, ip=IP)
    with pytest.raises(PasswordPolicyError):
        await accounts.signups.sign_up("short@example.com", "too short", ip=IP)
    with pytest.raises(PasswordPolicyError):
        await accounts.signups.sign_up("someone@example.com", "someone@example.com x y z", ip=IP)


async def test_throttled_per_network_and_mails_per_address(accounts: Accounts) -> None:
    signups = accounts.signups
    mails = [(await signups.sign_up("a@example.com", MINE, ip=IP)).mail for _ in range(4)]
    assert mails == ["verify"] * 3 + [None]  # same answer, no more mail
    assert (await signups.sign_up("b@example.com", MINE, ip=IP)).wait == 0
    assert (await signups.sign_up("c@example.com", MINE, ip=IP)).wait > 0  # 6th per network
    assert (await signups.sign_up("c@example.com", MINE, ip="203.0.113.5")).wait == 0
