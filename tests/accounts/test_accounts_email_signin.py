"""Emailed sign-in codes for new networks (R-EML-02/03, R-RATE-02), on a fake clock."""

from __future__ import annotations

import pytest
from accounts_support import Clock
from sqlalchemy import select

from homeport.accounts import Accounts, Database, User
from homeport.accounts.email_signin import (
    CODE_DIGITS,
    MAX_FAILURES,
    MAX_SENDS,
    EmailSignins,
    new_code,
)
from homeport.accounts.identifiers import sha256_hex
from homeport.accounts.models import EmailSignin, KnownDevice, SigninAlert

IP = "198.51.100.7"


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**CODE_DIGITS:0{CODE_DIGITS}d}"


@pytest.fixture
def signins(accounts: Accounts) -> EmailSignins:
    return accounts.email_signins


def test_codes_are_six_random_digits() -> None:
    codes = {new_code() for _ in range(200)}
    assert all(len(c) == CODE_DIGITS and c.isdigit() for c in codes)
    assert len(codes) > 190  # from secrets, not a counter or a constant


async def test_new_means_unknown_device_and_unseen_network(
    signins: EmailSignins, alice: User, bob: User
) -> None:
    assert not await signins.is_known(alice.id, None, IP)
    device = await signins.remember(alice.id, None, IP)
    assert await signins.is_known(alice.id, None, IP)  # same network, no cookie
    assert await signins.is_known(alice.id, device, "203.0.113.9")  # known cookie elsewhere
    assert not await signins.is_known(alice.id, None, "203.0.113.9")
    assert not await signins.is_known(bob.id, device, IP)  # per account
    assert not await signins.is_known(alice.id, "forged-value", "203.0.113.9")


async def test_ipv6_counts_per_64(signins: EmailSignins, alice: User) -> None:
    await signins.remember(alice.id, None, "2001:db8:1:2::10")
    assert await signins.is_known(alice.id, None, "2001:db8:1:2:aaaa:bbbb:cccc:dddd")
    assert not await signins.is_known(alice.id, None, "2001:db8:1:3::10")


async def test_device_token_is_minted_not_chosen_and_hashed(
    signins: EmailSignins, alice: User, bob: User, db: Database
) -> None:
    chosen = "attacker-chosen-device-token"
    device = await signins.remember(alice.id, chosen, IP)
    assert device != chosen
    assert await signins.remember(bob.id, device, IP) == device  # one browser, two accounts
    async with db.session() as s:
        hashes = set(await s.scalars(select(KnownDevice.token_hash)))
    assert hashes == {sha256_hex(device)}


async def test_known_places_expire(signins: EmailSignins, alice: User, clock: Clock) -> None:
    device = await signins.remember(alice.id, None, IP)
    clock.advance(days=181)
    assert not await signins.is_known(alice.id, device, IP)


async def test_right_code_once(signins: EmailSignins, alice: User, db: Database) -> None:
    issued = await signins.start(alice.id, "/next")
    assert await signins.pending_user(issued.token) == alice.id
    outcome = await signins.verify(issued.token, issued.code, ip=IP)
    assert outcome.ok
    assert outcome.user_id == alice.id
    assert outcome.next_path == "/next"
    replay = await signins.verify(issued.token, issued.code, ip=IP)
    assert not replay.ok
    assert replay.ended
    async with db.session() as s:
        row = await s.get_one(EmailSignin, sha256_hex(issued.token))
    # Neither the token nor the code is stored; the hash needs both.
    assert issued.code not in row.code_hash
    assert row.code_hash not in (sha256_hex(issued.code), sha256_hex(issued.token))


async def test_code_with_spaces_is_accepted(signins: EmailSignins, alice: User) -> None:
    issued = await signins.start(alice.id, "/")
    spaced = f"{issued.code[:3]} {issued.code[3:]}"
    assert (await signins.verify(issued.token, spaced, ip=IP)).ok


async def test_expired_code_is_refused(signins: EmailSignins, alice: User, clock: Clock) -> None:
    issued = await signins.start(alice.id, "/")
    clock.advance(minutes=10, seconds=1)
    outcome = await signins.verify(issued.token, issued.code, ip=IP)
    assert not outcome.ok
    assert not outcome.ended  # a resend can still help within the pending lifetime


async def test_code_is_bound_to_its_pending_signin(signins: EmailSignins, alice: User) -> None:
    first = await signins.start(alice.id, "/")
    second = await signins.start(alice.id, "/")
    assert not (await signins.verify(second.token, first.code, ip=IP)).ok or (
        first.code == second.code  # one in a million: same digits, still its own binding
    )
    assert (await signins.verify(first.token, first.code, ip=IP)).ok


async def test_five_wrong_codes_end_the_pending_signin(
    signins: EmailSignins, alice: User, clock: Clock
) -> None:
    issued = await signins.start(alice.id, "/")
    outcomes = []
    for _ in range(MAX_FAILURES):
        outcomes.append(await signins.verify(issued.token, wrong(issued.code), ip=IP))
        clock.advance(seconds=20)  # past the account delay that starts at the 5th failure
    assert [o.ended for o in outcomes] == [False] * (MAX_FAILURES - 1) + [True]
    assert await signins.pending_user(issued.token) is None
    assert not (await signins.verify(issued.token, issued.code, ip=IP)).ok


async def test_resend_never_resets_the_failure_count(
    signins: EmailSignins, alice: User, clock: Clock
) -> None:
    issued = await signins.start(alice.id, "/")
    for _ in range(MAX_FAILURES - 1):
        assert not (await signins.verify(issued.token, wrong(issued.code), ip=IP)).ok
    clock.advance(seconds=31)
    again = await signins.resend(issued.token)
    assert again is not None
    assert again.wait == 0
    assert again.token == issued.token
    last = await signins.verify(issued.token, wrong(again.code), ip=IP)
    assert last.ended
    assert not (await signins.verify(issued.token, again.code, ip=IP)).ok


async def test_resend_replaces_the_code_and_is_limited(
    signins: EmailSignins, alice: User, clock: Clock
) -> None:
    issued = await signins.start(alice.id, "/")
    too_soon = await signins.resend(issued.token)
    assert too_soon is not None
    assert too_soon.wait > 0
    codes = [issued.code]
    for _ in range(MAX_SENDS - 1):
        clock.advance(seconds=31)
        again = await signins.resend(issued.token)
        assert again is not None
        assert again.wait == 0
        codes.append(again.code)
    clock.advance(seconds=31)
    spent = await signins.resend(issued.token)
    assert spent is not None
    assert spent.wait > 0
    if codes[0] != codes[-1]:
        assert not (await signins.verify(issued.token, codes[0], ip=IP)).ok
    assert (await signins.verify(issued.token, codes[-1], ip=IP)).ok


async def test_wrong_codes_are_throttled_per_account(
    signins: EmailSignins, alice: User, clock: Clock
) -> None:
    waits = []
    for _ in range(2):  # two pending sign-ins: the account counter spans both
        issued = await signins.start(alice.id, "/")
        for _ in range(4):
            outcome = await signins.verify(issued.token, wrong(issued.code), ip=IP)
            waits.append(outcome.wait)
    assert waits[:5] == [0.0] * 5
    assert waits[5] > 0  # the 6th check waits (growing delay from the 5th failure)


async def test_mails_per_account_are_capped(signins: EmailSignins, alice: User) -> None:
    issued = [await signins.start(alice.id, "/") for _ in range(11)]
    assert [i.wait > 0 for i in issued] == [False] * 10 + [True]


async def test_not_me_link_is_single_use_and_ends_pending(
    signins: EmailSignins, alice: User, db: Database, clock: Clock
) -> None:
    device = await signins.remember(alice.id, None, IP)
    issued = await signins.start(alice.id, "/")
    assert await signins.alert_user(issued.alert_token) == alice.id
    assert await signins.deny(issued.alert_token) == alice.id
    assert await signins.deny(issued.alert_token) is None
    assert await signins.pending_user(issued.token) is None
    assert not await signins.is_known(alice.id, device, IP)  # every device re-proves itself
    async with db.session() as s:
        stored = set(await s.scalars(select(SigninAlert.token_hash)))
    assert issued.alert_token not in stored
    other = await signins.start(alice.id, "/")
    clock.advance(days=7, seconds=1)
    assert await signins.deny(other.alert_token) is None


async def test_purge_keeps_live_rows(signins: EmailSignins, alice: User, clock: Clock) -> None:
    issued = await signins.start(alice.id, "/")
    assert await signins.purge() == 0
    clock.advance(days=8)
    assert await signins.purge() == 2  # the pending sign-in and its alert link
    assert await signins.pending_user(issued.token) is None


async def test_device_known_ignores_the_network(
    signins: EmailSignins, alice: User, bob: User
) -> None:
    device = await signins.remember(alice.id, None, IP)
    assert await signins.device_known(alice.id, device)
    assert not await signins.device_known(alice.id, None)  # the known network does not count
    assert not await signins.device_known(bob.id, device)


async def test_alert_for_a_notice_mail_works_once(signins: EmailSignins, alice: User) -> None:
    token = await signins.new_alert(alice.id)
    assert await signins.deny(token) == alice.id
    assert await signins.deny(token) is None


async def test_concurrent_sign_ins_of_one_browser_are_remembered(
    signins: EmailSignins, alice: User
) -> None:
    import asyncio

    device = await signins.remember(alice.id, None, IP)
    tokens = await asyncio.gather(
        *(signins.remember(alice.id, device, f"203.0.113.{n % 2}") for n in range(6))
    )
    assert set(tokens) == {device}
    assert await signins.is_known(alice.id, None, "203.0.113.1")
