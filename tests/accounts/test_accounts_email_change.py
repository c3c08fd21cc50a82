"""Changing an account's email address, and undoing it from the old address (issue 16)."""

from __future__ import annotations

import pytest
from accounts_support import PASSWORD, Clock
from sqlalchemy import select

from homeport.accounts import Accounts, Database, User
from homeport.accounts.email_change import MAILS_ACCOUNT, MAX_FAILURES, UNDO_LIFETIME
from homeport.accounts.errors import InvalidEmail
from homeport.accounts.models import EmailChange, KnownDevice
from homeport.accounts.oidc_tokens import VerifiedIdentity

IP = "198.51.100.7"
NEW = "alice.new@example.org"


async def _session(accounts: Accounts, user: User) -> int:
    _token, row = await accounts.create_session(user, "account", user_agent="t", ip=IP)
    return row.id


async def _change(accounts: Accounts, user: User, keep: int | None = None) -> str:
    """Change ``user``'s address to :data:`NEW`; the undo token."""
    started = await accounts.email_changes.start(user.id, NEW)
    assert started.mail == "code"
    done = await accounts.email_changes.confirm(
        started.token, started.code, user_id=user.id, keep_session_id=keep, ip=IP
    )
    assert done.ok
    return done.undo_token


async def test_the_code_mailed_to_the_new_address_changes_it(
    accounts: Accounts, alice: User
) -> None:
    here = await _session(accounts, alice)
    elsewhere = await _session(accounts, alice)
    reset = await accounts.password_resets.issue(alice.email, alice.email)
    assert reset.token is not None
    started = await accounts.email_changes.start(alice.id, "  Alice.New@Example.ORG ")
    assert (started.new_email, started.mail) == (NEW, "code")
    assert started.token
    assert len(started.code) == 6
    # Nothing changes before the code.
    assert (await accounts.get_user(alice.id)).email == "alice@example.com"  # type: ignore[union-attr]
    assert await accounts.email_changes.pending(started.token, alice.id) == NEW

    done = await accounts.email_changes.confirm(
        started.token, started.code, user_id=alice.id, keep_session_id=here, ip=IP
    )
    assert done.ok
    assert (done.old_email, done.new_email) == ("alice@example.com", NEW)
    assert done.undo_token
    assert done.ended == (elsewhere,)
    assert await accounts.live_session_ids([here, elsewhere]) == {here}
    assert (await accounts.get_user(alice.id)).email == NEW  # type: ignore[union-attr]
    assert await accounts.authenticate(NEW, PASSWORD) is not None
    assert await accounts.authenticate("alice@example.com", PASSWORD) is None
    # A reset link mailed to the old address died with it; the code is used up.
    assert await accounts.password_resets.consume(reset.token) is None
    again = await accounts.email_changes.confirm(
        started.token, started.code, user_id=alice.id, keep_session_id=here, ip=IP
    )
    assert again.gone


async def test_wrong_codes_end_the_change(accounts: Accounts, alice: User) -> None:
    started = await accounts.email_changes.start(alice.id, NEW)
    wrong = "000000" if started.code != "000000" else "111111"
    for attempt in range(1, MAX_FAILURES + 1):
        outcome = await accounts.email_changes.confirm(
            started.token, wrong, user_id=alice.id, keep_session_id=None, ip=IP
        )
        assert not outcome.ok
        assert outcome.gone == (attempt == MAX_FAILURES)
    outcome = await accounts.email_changes.confirm(
        started.token, started.code, user_id=alice.id, keep_session_id=None, ip=IP
    )
    assert outcome.gone
    assert (await accounts.get_user(alice.id)).email == "alice@example.com"  # type: ignore[union-attr]


async def test_the_code_is_bound_to_its_browser_and_account(
    accounts: Accounts, alice: User, bob: User
) -> None:
    first = await accounts.email_changes.start(alice.id, NEW)
    # Bob cannot use Alice's pending change, even with her cookie and code.
    outcome = await accounts.email_changes.confirm(
        first.token, first.code, user_id=bob.id, keep_session_id=None, ip=IP
    )
    assert outcome.gone
    # A new request voids the earlier one; its code does not fit the new cookie either.
    second = await accounts.email_changes.start(alice.id, NEW)
    outcome = await accounts.email_changes.confirm(
        first.token, first.code, user_id=alice.id, keep_session_id=None, ip=IP
    )
    assert outcome.gone
    if first.code != second.code:
        outcome = await accounts.email_changes.confirm(
            second.token, first.code, user_id=alice.id, keep_session_id=None, ip=IP
        )
        assert not outcome.ok
    async with accounts._db.session() as s:
        stored = list(await s.scalars(select(EmailChange)))
    assert [row.code_hash for row in stored] != [second.code]  # hashed, with the token
    assert second.code not in str([vars(row) for row in stored])


async def test_the_code_expires(accounts: Accounts, alice: User, clock: Clock) -> None:
    started = await accounts.email_changes.start(alice.id, NEW)
    clock.advance(minutes=16)
    outcome = await accounts.email_changes.confirm(
        started.token, started.code, user_id=alice.id, keep_session_id=None, ip=IP
    )
    assert outcome.gone
    assert await accounts.email_changes.pending(started.token, alice.id) is None


async def test_an_address_with_an_account_gets_a_note_and_no_working_code(
    accounts: Accounts, alice: User, bob: User
) -> None:
    started = await accounts.email_changes.start(alice.id, "BOB@example.com")
    assert started.mail == "exists"
    assert started.token  # the browser is answered the same way
    assert started.code == ""
    for guess in ("000000", "123456"):
        outcome = await accounts.email_changes.confirm(
            started.token, guess, user_id=alice.id, keep_session_id=None, ip=IP
        )
        assert not outcome.ok
    assert (await accounts.get_user(alice.id)).email == "alice@example.com"  # type: ignore[union-attr]


async def test_an_address_taken_meanwhile_is_refused(accounts: Accounts, alice: User) -> None:
    started = await accounts.email_changes.start(alice.id, NEW)
    await accounts.create_user(NEW, PASSWORD)
    outcome = await accounts.email_changes.confirm(
        started.token, started.code, user_id=alice.id, keep_session_id=None, ip=IP
    )
    assert (outcome.ok, outcome.taken, outcome.gone) == (False, True, True)
    assert (await accounts.get_user(alice.id)).email == "alice@example.com"  # type: ignore[union-attr]
    assert await accounts.email_changes.pending(started.token, alice.id) is None


async def test_bad_addresses(accounts: Accounts, alice: User) -> None:
    with pytest.raises(InvalidEmail):
        await accounts.email_changes.start(alice.id, "not an address")
    with pytest.raises(ValueError, match="already"):
        await accounts.email_changes.start(alice.id, "ALICE@example.com")


async def test_mails_per_account_are_capped(accounts: Accounts, alice: User) -> None:
    for _ in range(MAILS_ACCOUNT.limit):
        assert (await accounts.email_changes.start(alice.id, NEW)).wait == 0
    capped = await accounts.email_changes.start(alice.id, NEW)
    assert capped.wait > 0
    assert capped.token == ""


async def test_wrong_codes_are_throttled_per_account(accounts: Accounts, alice: User) -> None:
    first = await accounts.email_changes.start(alice.id, NEW)
    wrong = "999999" if first.code != "999999" else "888888"
    for _ in range(MAX_FAILURES):
        await accounts.email_changes.confirm(
            first.token, wrong, user_id=alice.id, keep_session_id=None, ip=IP
        )
    # A fresh pending change is no way around the account's growing delay.
    second = await accounts.email_changes.start(alice.id, NEW)
    outcome = await accounts.email_changes.confirm(
        second.token, second.code, user_id=alice.id, keep_session_id=None, ip=IP
    )
    assert not outcome.ok
    assert outcome.wait > 0


async def test_undo_puts_the_old_address_back_and_ends_everything(
    accounts: Accounts, alice: User, clock: Clock
) -> None:
    here = await _session(accounts, alice)
    await accounts.email_signins.remember(alice.id, None, IP)
    undo = await _change(accounts, alice, keep=here)
    # A second change by the same hand: the first undo link still wins.
    second_undo = await _change_again(accounts, alice, "thief@example.net", keep=here)
    assert await accounts.email_changes.undo_view(undo) == ("alice@example.com", NEW)
    clock.advance(days=6)
    undone = await accounts.email_changes.undo(undo)
    assert undone is not None
    assert (undone.user_id, undone.email, undone.restored) == (alice.id, alice.email, True)
    assert (await accounts.get_user(alice.id)).email == "alice@example.com"  # type: ignore[union-attr]
    assert await accounts.live_session_ids([here]) == set()
    assert await accounts.email_changes.undo(undo) is None  # single use
    assert await accounts.email_changes.undo(second_undo) is None  # voided with it
    async with accounts._db.session() as s:
        assert list(await s.scalars(select(KnownDevice))) == []  # every browser proves itself


async def _change_again(accounts: Accounts, user: User, to: str, *, keep: int) -> str:
    started = await accounts.email_changes.start(user.id, to)
    done = await accounts.email_changes.confirm(
        started.token, started.code, user_id=user.id, keep_session_id=keep, ip=IP
    )
    assert done.ok
    return done.undo_token


async def test_undo_links_expire_after_seven_days(
    accounts: Accounts, alice: User, clock: Clock
) -> None:
    undo = await _change(accounts, alice)
    clock.advance(seconds=UNDO_LIFETIME.total_seconds() + 1)
    assert await accounts.email_changes.undo_view(undo) is None
    assert await accounts.email_changes.undo(undo) is None
    assert (await accounts.get_user(alice.id)).email == NEW  # type: ignore[union-attr]
    assert await accounts.purge_expired() >= 1


async def test_undo_when_the_old_address_was_taken_still_ends_the_sessions(
    accounts: Accounts, alice: User
) -> None:
    here = await _session(accounts, alice)
    undo = await _change(accounts, alice, keep=here)
    await accounts.create_user("alice@example.com", PASSWORD)  # someone took it meanwhile
    undone = await accounts.email_changes.undo(undo)
    assert undone is not None
    assert (undone.email, undone.restored) == (NEW, False)
    assert await accounts.live_session_ids([here]) == set()


async def test_provider_identities_keep_working(accounts: Accounts, alice: User) -> None:
    identity = VerifiedIdentity("https://idp.example", "sub-123", alice.email, True)
    await accounts.oidc.link(alice.id, "idp", identity)
    await _change(accounts, alice)
    found = await accounts.oidc.identity("https://idp.example", "sub-123")
    assert found is not None
    assert found.user_id == alice.id


async def test_the_audit_log_knows_the_events(db: Database) -> None:
    from homeport.accounts.audit import EventType, describe_event

    for kind in (
        EventType.EMAIL_CHANGE_REQUESTED,
        EventType.EMAIL_CHANGED,
        EventType.EMAIL_CHANGE_UNDONE,
    ):
        assert describe_event(kind) != str(kind)
