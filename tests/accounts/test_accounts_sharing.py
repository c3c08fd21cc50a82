"""Sharing: owner actions, invitations, app links, retired names and the 2FA policy."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from pathlib import Path

import pyotp
import pytest
from accounts_support import PASSWORD, Clock, addon_key, link
from sqlalchemy import select

from homeport.accounts import Accounts, Database, User
from homeport.accounts import instances as instances_module
from homeport.accounts.errors import AccessDenied, InvalidEmail, NotOwner, UnknownInstance
from homeport.accounts.identifiers import ROUTING_PREFIX, new_instance_id
from homeport.accounts.models import AppLink, RetiredInstance
from homeport.accounts.secretbox import SecretBox
from homeport.accounts.sharing import (
    MAX_APP_LINKS,
    InvitationInvalid,
    WrongAccount,
    is_app_link_label,
    new_app_link_label,
)

UA, IP = "pytest", "192.0.2.7"


@pytest.fixture
def box_accounts(db: Database, clock: Clock, tmp_path: Path) -> Accounts:
    """Accounts with a secret box, for tests that enrol TOTP."""
    box = SecretBox.load_or_create(tmp_path / "keys" / "secret-box.key")
    return Accounts(db, now=clock, secret_box=box)


async def _tenant_session(accounts: Accounts, user: User, instance_id: str) -> int:
    _token, row = await accounts.create_session(
        user, "tenant", instance_id=instance_id, user_agent=UA, ip=IP
    )
    return row.id


# ------------------------------------------------------------------ ownership


async def test_only_the_owner_manages(accounts: Accounts, alice: User, bob: User) -> None:
    home = await link(accounts, alice)
    await accounts.add_member(home, bob.id)
    assert await accounts.sharing.rename(alice.id, home, "  Beach house ") == "Beach house"
    for action in (
        accounts.sharing.rename(bob.id, home, "Mine now"),
        accounts.sharing.unlink(bob.id, home),
        accounts.sharing.remove_member(bob.id, home, alice.id),
        accounts.sharing.create_app_link(bob.id, home, "phone"),
        accounts.sharing.invite(bob.id, home, "eve@example.com", lifetime=None),
    ):
        with pytest.raises(NotOwner):  # a member: may open it, not manage it
            await action
    stranger = await accounts.create_user("mallory@example.com", PASSWORD)
    for action in (
        accounts.sharing.rename(stranger.id, home, "Mine now"),
        accounts.sharing.owned_instance(stranger.id, home),
        accounts.sharing.owned_instance(bob.id, "a" * 26),  # unknown: the same answer
    ):
        with pytest.raises(UnknownInstance):
            await action
    instance = await accounts.get_instance(home)
    assert instance is not None
    assert instance.name == "Beach house"
    with pytest.raises(ValueError, match="1 to 64"):
        await accounts.sharing.rename(alice.id, home, " ")
    with pytest.raises(ValueError, match="control"):
        await accounts.sharing.rename(alice.id, home, "a\x00b")


async def test_unlink_retires_the_name(
    accounts: Accounts, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = await link(accounts, alice, 1)
    label, _row = await accounts.sharing.create_app_link(alice.id, home, "phone")
    assert await accounts.sharing.unlink(alice.id, home)
    assert await accounts.get_instance(home) is None
    assert await accounts.sharing.resolve_app_link(label) is None
    async with accounts._db.session() as s:
        assert await s.get(RetiredInstance, home) is not None
        assert list(await s.scalars(select(AppLink))) == []
    # Even if the random generator produced the old id again, it is never reissued.
    fresh = "b" * 26
    ids = iter([home, fresh])
    monkeypatch.setattr(instances_module, "new_instance_id", lambda: next(ids))
    again = await link(accounts, alice, 1)
    assert again == fresh


async def test_members_leave_owners_cannot(accounts: Accounts, alice: User, bob: User) -> None:
    home = await link(accounts, alice)
    await accounts.add_member(home, bob.id)
    token, _ = await accounts.create_session(
        alice, "tenant", instance_id=home, user_agent=UA, ip=IP
    )
    assert not await accounts.sharing.leave(alice.id, home)
    # The owner's attempt ended nothing.
    assert await accounts.resolve_session(token, kind="tenant", instance_id=home) is not None
    assert await accounts.sharing.leave(bob.id, home)
    assert not await accounts.can_access(bob.id, home)
    assert not await accounts.sharing.leave(bob.id, home)
    assert not await accounts.sharing.leave(bob.id, "not-an-id")


# ---------------------------------------------------------------- invitations


async def test_invite_accept_by_the_invited_account(
    accounts: Accounts, alice: User, bob: User, clock: Clock
) -> None:
    home = await link(accounts, alice)
    token, row = await accounts.sharing.invite(
        alice.id, home, " Bob@Example.com ", lifetime=timedelta(days=7)
    )
    assert len(token) >= 43
    assert row.email == "bob@example.com"
    view = await accounts.sharing.invitation(token)
    assert view is not None
    assert (view.instance_id, view.inviter_email, view.email) == (
        home,
        "alice@example.com",
        "bob@example.com",
    )
    assert not await accounts.can_access(bob.id, home)
    assert await accounts.sharing.accept(token, bob.id) == home
    assert await accounts.can_access(bob.id, home)
    members = await accounts.sharing.members(home)
    assert [(m.user_id, m.email) for m in members] == [(bob.id, "bob@example.com")]
    (listed,) = await accounts.sharing.invitations(home)
    assert (listed.status, listed.accepted_by_email) == ("accepted", "bob@example.com")
    # Single use.
    with pytest.raises(InvitationInvalid):
        await accounts.sharing.accept(token, bob.id)
    assert await accounts.sharing.invitation(token) is None


async def test_wrong_account_cannot_accept_and_does_not_use_it_up(
    accounts: Accounts, alice: User, bob: User
) -> None:
    home = await link(accounts, alice)
    carol = await accounts.create_user("carol@example.com", PASSWORD)
    token, _ = await accounts.sharing.invite(alice.id, home, "carol@example.com", lifetime=None)
    with pytest.raises(WrongAccount, match=r"carol@example\.com"):
        await accounts.sharing.accept(token, bob.id)
    assert not await accounts.can_access(bob.id, home)
    assert await accounts.sharing.accept(token, carol.id) == home


async def test_revoked_expired_and_unknown_invitations(
    accounts: Accounts, alice: User, bob: User, clock: Clock
) -> None:
    home = await link(accounts, alice)
    revoked, row = await accounts.sharing.invite(alice.id, home, bob.email, lifetime=None)
    with pytest.raises(UnknownInstance):  # only the owner withdraws
        await accounts.sharing.revoke_invitation(bob.id, home, row.id)
    assert await accounts.sharing.revoke_invitation(alice.id, home, row.id)
    assert not await accounts.sharing.revoke_invitation(alice.id, home, row.id)  # once
    expiring, _ = await accounts.sharing.invite(
        alice.id, home, bob.email, lifetime=timedelta(days=1)
    )
    clock.advance(days=1)
    for token in (revoked, expiring, secrets.token_urlsafe(32), "", "x" * 500):
        with pytest.raises(InvitationInvalid):
            await accounts.sharing.accept(token, bob.id)
        assert await accounts.sharing.invitation(token) is None
    assert not await accounts.can_access(bob.id, home)
    statuses = sorted(inv.status for inv in await accounts.sharing.invitations(home))
    assert statuses == ["expired", "revoked"]


async def test_bad_invitations_refused(accounts: Accounts, alice: User, bob: User) -> None:
    home = await link(accounts, alice)
    with pytest.raises(InvalidEmail):
        await accounts.sharing.invite(alice.id, home, "not an address", lifetime=None)
    with pytest.raises(ValueError, match="own this home"):
        await accounts.sharing.invite(alice.id, home, "ALICE@example.com", lifetime=None)
    await accounts.add_member(home, bob.id)
    with pytest.raises(ValueError, match="already open"):
        await accounts.sharing.invite(alice.id, home, bob.email, lifetime=None)
    with pytest.raises(ValueError, match="90 days"):
        await accounts.sharing.invite(alice.id, home, "x@example.com", lifetime=timedelta(days=91))


@pytest.mark.sqlite_only  # reads the database file itself
async def test_accept_token_is_stored_hashed(
    accounts: Accounts, alice: User, data_dir: Path, db: Database
) -> None:
    home = await link(accounts, alice)
    token, _ = await accounts.sharing.invite(alice.id, home, "bob@example.com", lifetime=None)
    label, _ = await accounts.sharing.create_app_link(alice.id, home, "phone")
    await db.close()  # checkpoint the WAL into the main file
    blob = b"".join(p.read_bytes() for p in data_dir.iterdir() if p.is_file())
    assert hashlib.sha256(token.encode()).hexdigest().encode() in blob  # the scan sees rows
    assert token.encode() not in blob
    assert label.encode() not in blob


async def test_removing_a_member_ends_their_sessions(
    accounts: Accounts, alice: User, bob: User
) -> None:
    home = await link(accounts, alice)
    await accounts.add_member(home, bob.id)
    token, _ = await accounts.create_session(bob, "tenant", instance_id=home, user_agent=UA, ip=IP)
    assert await accounts.resolve_session(token, kind="tenant", instance_id=home) is not None
    assert await accounts.sharing.remove_member(alice.id, home, bob.id)
    assert await accounts.resolve_session(token, kind="tenant", instance_id=home) is None
    assert not await accounts.can_access(bob.id, home)


# ------------------------------------------------------------------ app links


def test_app_link_labels_are_one_dns_label_with_the_homes_prefix_and_120_secret_bits() -> None:
    home = new_instance_id()
    labels = {new_app_link_label(home) for _ in range(200)}
    assert len(labels) == 200
    for label in labels:
        assert is_app_link_label(label)
        assert len(label) == 32  # <= 63 characters
        # The home's first characters choose its node in a cluster (HAProxy hashes them).
        assert label[:ROUTING_PREFIX] == home[:ROUTING_PREFIX]
    # The rest is the secret: 24 base32 characters, 120 bits, different every time.
    secrets_seen = {label[ROUTING_PREFIX:] for label in labels}
    assert len(secrets_seen) == 200
    assert all(len(secret) == 24 for secret in secrets_seen)
    for bad in ("", "a" * 31, "a" * 33, "A" * 32, "a" * 26, "a" * 31 + "1", "a" * 31 + "."):
        assert not is_app_link_label(bad)


async def test_app_links_resolve_to_their_own_instance_only(
    accounts: Accounts, alice: User, bob: User
) -> None:
    home_a = await link(accounts, alice, 1)
    home_b = await link(accounts, bob, 2)
    label_a, row_a = await accounts.sharing.create_app_link(alice.id, home_a, "Alice's phone")
    label_b, _ = await accounts.sharing.create_app_link(bob.id, home_b, "Bob's tablet")
    found = await accounts.sharing.resolve_app_link(label_a)
    assert found is not None
    assert (found.link_id, found.instance_id) == (row_a.id, home_a)
    found_b = await accounts.sharing.resolve_app_link(label_b)
    assert found_b is not None
    assert found_b.instance_id == home_b
    assert await accounts.sharing.resolve_app_link(new_app_link_label(home_a)) is None
    assert await accounts.sharing.resolve_app_link(label_a[:-1]) is None
    assert await accounts.sharing.resolve_app_link(label_a.upper()) is None
    # Bob cannot revoke Alice's link through his own home or hers.
    with pytest.raises(UnknownInstance):
        await accounts.sharing.revoke_app_link(bob.id, home_a, row_a.id)
    assert not await accounts.sharing.revoke_app_link(bob.id, home_b, row_a.id)
    assert await accounts.sharing.resolve_app_link(label_a) is not None
    assert await accounts.sharing.revoke_app_link(alice.id, home_a, row_a.id)
    assert await accounts.sharing.resolve_app_link(label_a) is None
    assert await accounts.sharing.resolve_app_link(label_b) is not None


async def test_app_link_dies_with_the_owner_account(accounts: Accounts, alice: User) -> None:
    home = await link(accounts, alice)
    label, _ = await accounts.sharing.create_app_link(alice.id, home, "phone")
    await accounts.set_user_disabled(alice.id, True)
    assert await accounts.sharing.resolve_app_link(label) is None
    await accounts.set_user_disabled(alice.id, False)
    assert await accounts.sharing.resolve_app_link(label) is not None


async def test_app_link_last_use_written_at_most_once_a_minute(
    accounts: Accounts, alice: User, clock: Clock
) -> None:
    home = await link(accounts, alice)
    _label, row = await accounts.sharing.create_app_link(alice.id, home, "phone")
    first = clock.now
    await accounts.sharing.touch_app_link(row.id)
    clock.advance(seconds=30)
    await accounts.sharing.touch_app_link(row.id)
    (listed,) = await accounts.sharing.app_links(home)
    assert listed.last_used_at == first
    clock.advance(seconds=31)
    await accounts.sharing.touch_app_link(row.id)
    (listed,) = await accounts.sharing.app_links(home)
    assert listed.last_used_at == clock.now


async def test_app_link_limits(accounts: Accounts, alice: User) -> None:
    home = await link(accounts, alice)
    with pytest.raises(ValueError, match="1 to 64"):
        await accounts.sharing.create_app_link(alice.id, home, "")
    for n in range(MAX_APP_LINKS):
        await accounts.sharing.create_app_link(alice.id, home, f"device {n}")
    with pytest.raises(ValueError, match="at most"):
        await accounts.sharing.create_app_link(alice.id, home, "one too many")


# ------------------------------------------------------------ 2FA policy


async def _enrol(accounts: Accounts, user: User, clock: Clock) -> None:
    enrolment = await accounts.totp.start_enrolment(user.id, user.email)
    code = pyotp.TOTP(enrolment.secret_base32).at(clock.now.timestamp())
    outcome, _codes = await accounts.totp.confirm_enrolment(user.id, code, ip=IP)
    assert outcome.ok


async def test_requiring_a_second_factor(box_accounts: Accounts, clock: Clock) -> None:
    accounts = box_accounts
    alice = await accounts.create_user("alice@example.com", PASSWORD)
    bob = await accounts.create_user("bob@example.com", PASSWORD)
    code, _ = await accounts.create_link_code(addon_key(1))
    home = (await accounts.link_instance(code, alice.email)).id
    await accounts.add_member(home, bob.id)
    _t, weak_owner = await accounts.create_session(alice, "account", user_agent=UA, ip=IP)
    # Not without an owner's own second factor (no lock-out by accident).
    with pytest.raises(AccessDenied):
        await accounts.sharing.set_require_second_factor(
            alice.id, home, True, session_id=weak_owner.id
        )
    await _enrol(accounts, alice, clock)
    with pytest.raises(AccessDenied):  # enrolled, but this session did not use it
        await accounts.sharing.set_require_second_factor(
            alice.id, home, True, session_id=weak_owner.id
        )
    _t, strong_owner = await accounts.create_session(
        alice, "account", user_agent=UA, ip=IP, second_factor=True
    )
    _t, bob_account = await accounts.create_session(bob, "account", user_agent=UA, ip=IP)
    bob_tenant = await _tenant_session(accounts, bob, home)
    assert await accounts.sharing.second_factor_ok(bob.id, home, bob_account.id)

    ended = await accounts.sharing.set_require_second_factor(
        alice.id, home, True, session_id=strong_owner.id
    )
    assert bob_tenant in ended
    assert await accounts.sharing.requires_second_factor(home)
    assert not await accounts.sharing.second_factor_ok(bob.id, home, bob_account.id)
    assert await accounts.sharing.second_factor_ok(alice.id, home, strong_owner.id)
    assert not await accounts.sharing.second_factor_ok(alice.id, home, weak_owner.id)
    # A session that claims a second factor but whose account has none is refused too.
    _t, odd = await accounts.create_session(
        bob, "account", user_agent=UA, ip=IP, second_factor=True
    )
    assert not await accounts.sharing.second_factor_ok(bob.id, home, odd.id)

    assert (
        await accounts.sharing.set_require_second_factor(
            alice.id, home, False, session_id=weak_owner.id
        )
        == []
    )
    assert await accounts.sharing.second_factor_ok(bob.id, home, bob_account.id)


async def test_tenant_session_inherits_second_factor(accounts: Accounts, alice: User) -> None:
    home = await link(accounts, alice)
    for used in (False, True):
        _t, parent = await accounts.create_session(
            alice, "account", user_agent=UA, ip=IP, second_factor=used
        )
        binding = secrets.token_urlsafe(24)
        code = await accounts.create_handoff(alice.id, home, binding, session_id=parent.id)
        assert await accounts.consume_handoff(code, home, binding) == alice.id
        _t, tenant = await accounts.create_session(
            alice, "tenant", instance_id=home, user_agent=UA, ip=IP, handoff_code=code
        )
        assert tenant.second_factor is used
    # A tenant session cannot claim it directly.
    _t, direct = await accounts.create_session(
        alice, "tenant", instance_id=home, user_agent=UA, ip=IP, second_factor=True
    )
    assert direct.second_factor is False


async def test_no_token_or_label_in_logs(
    accounts: Accounts, alice: User, bob: User, caplog: pytest.LogCaptureFixture
) -> None:
    # Our own loggers (the relay keeps the database drivers' at WARNING: they print values).
    caplog.set_level("DEBUG", logger="homeport")
    home = await link(accounts, alice)
    token, _ = await accounts.sharing.invite(alice.id, home, bob.email, lifetime=None)
    await accounts.sharing.invitation(token)
    await accounts.sharing.accept(token, bob.id)
    label, row = await accounts.sharing.create_app_link(alice.id, home, "phone")
    await accounts.sharing.resolve_app_link(label)
    await accounts.sharing.touch_app_link(row.id)
    await accounts.sharing.revoke_app_link(alice.id, home, row.id)
    assert "invitation" in caplog.text
    assert "app link" in caplog.text
    assert token not in caplog.text
    assert label not in caplog.text
    assert bob.email not in caplog.text  # ids only
