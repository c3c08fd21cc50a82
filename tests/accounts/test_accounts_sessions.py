"""Web sessions: hashed storage, expiry, revocation, tenant isolation (R-SES-02..06)."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from accounts_support import Clock, link
from sqlalchemy import delete

from homeport.accounts import AccessDenied, Accounts, Database, User
from homeport.accounts.models import InstanceMember


async def test_token_is_random_and_resolves(accounts: Accounts, alice: User, clock: Clock) -> None:
    token, row = await accounts.create_session(
        alice, "account", user_agent="Firefox", ip="192.0.2.1"
    )
    token2, _ = await accounts.create_session(alice, "account", user_agent="Firefox", ip="x")
    assert len(token) == 43
    assert token != token2
    info = await accounts.resolve_session(token, kind="account")
    assert info is not None
    assert (info.session_id, info.user_id, info.email) == (row.id, alice.id, alice.email)
    assert info.kind == "account"
    assert info.instance_id is None
    assert info.created_at == clock.now
    assert token not in repr(row)
    assert row.token_hash not in repr(row)


@pytest.mark.sqlite_only  # reads the database file itself
async def test_token_not_stored_in_clear(
    accounts: Accounts, alice: User, db: Database, data_dir: Path
) -> None:
    token, row = await accounts.create_session(alice, "account", user_agent="ua", ip="ip")
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()

    def contents() -> bytes:
        return b"".join(p.read_bytes() for p in sorted(data_dir.iterdir()))

    assert row.token_hash.encode() in contents()  # the scan sees the stored data
    assert token.encode() not in contents()
    await db.close()  # checkpoint the WAL into the main file, scan again
    assert row.token_hash.encode() in contents()
    assert token.encode() not in contents()


@pytest.mark.parametrize("token", ["", "x", "A" * 43, "A" * 10_000])
async def test_unknown_or_malformed_token(accounts: Accounts, alice: User, token: str) -> None:
    await accounts.create_session(alice, "account", user_agent="ua", ip="ip")
    assert await accounts.resolve_session(token, kind="account") is None


async def test_idle_expiry(accounts: Accounts, alice: User, clock: Clock) -> None:
    # Account sessions: 1 h idle (R-SES-05, docs/security.md).
    token, _ = await accounts.create_session(alice, "account", user_agent="ua", ip="ip")
    clock.advance(minutes=59)
    assert await accounts.resolve_session(token, kind="account") is not None  # slides
    clock.advance(minutes=59)
    assert await accounts.resolve_session(token, kind="account") is not None
    clock.advance(hours=1)
    assert await accounts.resolve_session(token, kind="account") is None


async def test_absolute_expiry_despite_activity(
    accounts: Accounts, alice: User, clock: Clock
) -> None:
    token, row = await accounts.create_session(alice, "account", user_agent="ua", ip="ip")
    while clock.now + timedelta(minutes=30) < row.absolute_expires_at:
        clock.advance(minutes=30)  # active within the 1 h idle limit
        info = await accounts.resolve_session(token, kind="account")
        assert info is not None
        assert info.idle_expires_at <= row.absolute_expires_at
    clock.now = row.absolute_expires_at
    assert await accounts.resolve_session(token, kind="account") is None


async def test_idle_expiry_slides_at_most_once_a_minute(
    accounts: Accounts, alice: User, clock: Clock
) -> None:
    token, row = await accounts.create_session(alice, "account", user_agent="ua", ip="ip")
    clock.advance(seconds=30)
    info = await accounts.resolve_session(token, kind="account")
    assert info is not None
    assert info.last_seen_at == row.last_seen_at
    (listed,) = await accounts.list_sessions(alice.id)
    assert listed.last_seen_at == row.last_seen_at  # no write
    clock.advance(seconds=31)
    info = await accounts.resolve_session(token, kind="account")
    assert info is not None
    assert info.last_seen_at == clock.now
    (listed,) = await accounts.list_sessions(alice.id)
    assert listed.last_seen_at == clock.now
    assert listed.idle_expires_at == clock.now + timedelta(hours=1)


async def test_revoked_session_rejected(accounts: Accounts, alice: User, bob: User) -> None:
    token, row = await accounts.create_session(alice, "account", user_agent="ua", ip="ip")
    # Bob cannot end Alice's session by id.
    assert not await accounts.revoke_session(row.id, user_id=bob.id)
    assert await accounts.resolve_session(token, kind="account") is not None
    assert await accounts.revoke_session(row.id, user_id=alice.id)
    assert await accounts.resolve_session(token, kind="account") is None
    assert not await accounts.revoke_session(row.id)  # already revoked
    assert await accounts.list_sessions(alice.id) == []


async def test_revoke_all_other_sessions(accounts: Accounts, alice: User, bob: User) -> None:
    current, current_row = await accounts.create_session(alice, "account", user_agent="a", ip="")
    others = [
        (await accounts.create_session(alice, "account", user_agent="b", ip=""))[0]
        for _ in range(3)
    ]
    bobs, _ = await accounts.create_session(bob, "account", user_agent="c", ip="")
    count = await accounts.revoke_user_sessions(alice.id, except_session_id=current_row.id)
    assert count == 3
    assert await accounts.resolve_session(current, kind="account") is not None
    for token in others:
        assert await accounts.resolve_session(token, kind="account") is None
    assert await accounts.resolve_session(bobs, kind="account") is not None
    assert [s.id for s in await accounts.list_sessions(alice.id)] == [current_row.id]


async def test_disabled_user_sessions_rejected(accounts: Accounts, alice: User) -> None:
    token, _ = await accounts.create_session(alice, "account", user_agent="ua", ip="ip")
    await accounts.set_user_disabled(alice.id, True)
    assert await accounts.resolve_session(token, kind="account") is None
    await accounts.set_user_disabled(alice.id, False)
    # Disabling revoked the session for good.
    assert await accounts.resolve_session(token, kind="account") is None
    await accounts.set_user_disabled(alice.id, True)
    with pytest.raises(AccessDenied):
        await accounts.create_session(alice, "account", user_agent="ua", ip="ip")


async def test_kinds_do_not_mix(accounts: Accounts, alice: User) -> None:
    instance = await link(accounts, alice)
    account_token, _ = await accounts.create_session(alice, "account", user_agent="", ip="")
    tenant_token, _ = await accounts.create_session(
        alice, "tenant", instance_id=instance, user_agent="", ip=""
    )
    assert (
        await accounts.resolve_session(account_token, kind="tenant", instance_id=instance) is None
    )
    assert await accounts.resolve_session(tenant_token, kind="account") is None
    assert await accounts.resolve_session(tenant_token, kind="tenant") is None
    assert (
        await accounts.resolve_session(tenant_token, kind="tenant", instance_id=instance)
        is not None
    )
    with pytest.raises(ValueError, match="instance"):
        await accounts.create_session(alice, "tenant", user_agent="", ip="")
    with pytest.raises(ValueError, match="instance"):
        await accounts.create_session(alice, "account", instance_id=instance, user_agent="", ip="")


async def test_tenant_session_for_a_rejected_on_b(accounts: Accounts, alice: User) -> None:
    a = await link(accounts, alice, 1)
    b = await link(accounts, alice, 2)
    token, _ = await accounts.create_session(alice, "tenant", instance_id=a, user_agent="", ip="")
    info = await accounts.resolve_session(token, kind="tenant", instance_id=a)
    assert info is not None
    assert info.instance_id == a
    assert await accounts.resolve_session(token, kind="tenant", instance_id=b) is None


async def test_tenant_session_needs_access(accounts: Accounts, alice: User, bob: User) -> None:
    instance = await link(accounts, alice)
    with pytest.raises(AccessDenied):
        await accounts.create_session(bob, "tenant", instance_id=instance, user_agent="", ip="")


async def test_session_of_user_who_lost_access_rejected(
    accounts: Accounts, alice: User, bob: User, db: Database
) -> None:
    instance = await link(accounts, alice)
    await accounts.add_member(instance, bob.id)
    assert await accounts.can_access(bob.id, instance)
    token, _ = await accounts.create_session(
        bob, "tenant", instance_id=instance, user_agent="", ip=""
    )
    assert await accounts.resolve_session(token, kind="tenant", instance_id=instance) is not None

    # Membership row removed behind the service's back (e.g. a future sharing
    # UI with a bug): the next lookup still re-checks access.
    async with db.session(write=True) as s, s.begin():
        await s.execute(delete(InstanceMember))
    assert not await accounts.can_access(bob.id, instance)
    assert await accounts.resolve_session(token, kind="tenant", instance_id=instance) is None


async def test_remove_member_ends_tenant_sessions(
    accounts: Accounts, alice: User, bob: User
) -> None:
    instance = await link(accounts, alice)
    await accounts.add_member(instance, bob.id)
    await accounts.add_member(instance, bob.id)  # idempotent
    token, _ = await accounts.create_session(
        bob, "tenant", instance_id=instance, user_agent="", ip=""
    )
    assert await accounts.remove_member(instance, bob.id)
    assert await accounts.resolve_session(token, kind="tenant", instance_id=instance) is None
    assert not await accounts.remove_member(instance, bob.id)
    # The owner is unaffected.
    assert await accounts.can_access(alice.id, instance)


async def test_unlinked_instance_sessions_rejected(accounts: Accounts, alice: User) -> None:
    instance = await link(accounts, alice)
    token, _ = await accounts.create_session(
        alice, "tenant", instance_id=instance, user_agent="", ip=""
    )
    assert await accounts.unlink_instance(instance)
    assert await accounts.resolve_session(token, kind="tenant", instance_id=instance) is None
    assert not await accounts.can_access(alice.id, instance)


async def test_can_access_denies_by_default(accounts: Accounts, alice: User, bob: User) -> None:
    instance = await link(accounts, alice)
    assert await accounts.can_access(alice.id, instance)
    assert not await accounts.can_access(bob.id, instance)
    assert not await accounts.can_access(9999, instance)
    assert not await accounts.can_access(alice.id, "a" * 26)
    assert not await accounts.can_access(alice.id, instance.upper())
    assert not await accounts.can_access(alice.id, "")
    await accounts.set_user_disabled(alice.id, True)
    assert not await accounts.can_access(alice.id, instance)


async def test_user_agent_and_ip_are_sanitised(accounts: Accounts, alice: User) -> None:
    _, row = await accounts.create_session(
        alice, "account", user_agent="evil\r\nX: y" + "u" * 1000, ip="1.2.3.4\x00"
    )
    assert len(row.user_agent) == 256
    assert "\r" not in row.user_agent
    assert "\n" not in row.user_agent
    assert row.ip == "1.2.3.4?"


async def test_purge_expired(accounts: Accounts, alice: User, clock: Clock) -> None:
    live, _ = await accounts.create_session(alice, "account", user_agent="", ip="")
    _, dead = await accounts.create_session(alice, "account", user_agent="", ip="")
    await accounts.revoke_session(dead.id)
    clock.advance(days=31)
    live_again, _ = await accounts.create_session(alice, "account", user_agent="", ip="")
    assert await accounts.purge_expired() == 2  # the revoked one and the idle-expired one
    assert await accounts.resolve_session(live_again, kind="account") is not None
    assert await accounts.resolve_session(live, kind="account") is None


async def test_create_session_by_user_id(accounts: Accounts, alice: User) -> None:
    token, row = await accounts.create_session(alice.id, "account", user_agent="", ip="")
    assert row.user_id == alice.id
    info = await accounts.resolve_session(token, kind="account")
    assert info is not None
    assert info.user_id == alice.id
    with pytest.raises(AccessDenied):
        await accounts.create_session(alice.id + 100, "account", user_agent="", ip="")


async def test_decided_lifetimes(accounts: Accounts, alice: User, clock: Clock) -> None:
    """R-SES-05 as decided in docs/security.md: account 1 h / 12 h, tenant 12 h / 7 days."""
    instance_id = await link(accounts, alice)
    started = clock.now
    _, account = await accounts.create_session(alice, "account", user_agent="ua", ip="ip")
    _, tenant = await accounts.create_session(
        alice, "tenant", instance_id=instance_id, user_agent="ua", ip="ip"
    )
    assert account.idle_expires_at - started == timedelta(hours=1)
    assert account.absolute_expires_at - started == timedelta(hours=12)
    assert tenant.idle_expires_at - started == timedelta(hours=12)
    assert tenant.absolute_expires_at - started == timedelta(days=7)


async def test_open_traffic_counts_as_activity_until_the_absolute_limit(
    accounts: Accounts, alice: User, clock: Clock
) -> None:
    """A wall tablet's open WebSocket keeps its tenant session, for 7 days at most."""
    instance_id = await link(accounts, alice)
    token, row = await accounts.create_session(
        alice, "tenant", instance_id=instance_id, user_agent="ua", ip="ip"
    )
    _, other = await accounts.create_session(alice, "account", user_agent="ua", ip="ip")
    assert await accounts.live_session_ids([row.id, other.id, 999]) == {row.id, other.id}
    while clock.now + timedelta(hours=11) < row.absolute_expires_at:
        clock.advance(hours=11)  # no request at all, only the sweep seeing the stream
        assert await accounts.live_session_ids([row.id]) == {row.id}
    assert await accounts.live_session_ids([other.id]) == set()  # idle account session
    clock.now = row.absolute_expires_at
    assert await accounts.live_session_ids([row.id]) == set()
    assert await accounts.resolve_session(token, kind="tenant", instance_id=instance_id) is None


async def test_live_check_follows_revocation_and_access(
    accounts: Accounts, alice: User, bob: User
) -> None:
    instance_id = await link(accounts, alice)
    await accounts.add_member(instance_id, bob.id)
    _, bob_tenant = await accounts.create_session(
        bob, "tenant", instance_id=instance_id, user_agent="ua", ip="ip"
    )
    _, alice_tenant = await accounts.create_session(
        alice, "tenant", instance_id=instance_id, user_agent="ua", ip="ip"
    )
    ids = [bob_tenant.id, alice_tenant.id]
    assert await accounts.live_session_ids(ids) == set(ids)
    await accounts.remove_member(instance_id, bob.id)
    assert await accounts.live_session_ids(ids) == {alice_tenant.id}
    await accounts.revoke_session(alice_tenant.id)
    assert await accounts.live_session_ids(ids) == set()


async def test_revoke_other_sessions_keeps_this_browser(
    accounts: Accounts, alice: User, bob: User
) -> None:
    instance_id = await link(accounts, alice)
    _, mine = await accounts.create_session(alice, "account", user_agent="ua", ip="ip")
    code = await accounts.create_handoff(alice.id, instance_id, "b" * 32, session_id=mine.id)
    assert await accounts.consume_handoff(code, instance_id, "b" * 32) == alice.id
    _, my_tenant = await accounts.create_session(
        alice, "tenant", instance_id=instance_id, user_agent="ua", ip="ip", handoff_code=code
    )
    _, phone = await accounts.create_session(alice, "account", user_agent="ua", ip="ip")
    _, phone_tenant = await accounts.create_session(
        alice, "tenant", instance_id=instance_id, user_agent="ua", ip="ip"
    )
    _, bobs = await accounts.create_session(bob, "account", user_agent="ua", ip="ip")
    ended = await accounts.revoke_other_sessions(alice.id, mine.id)
    assert sorted(ended) == sorted([phone.id, phone_tenant.id])
    assert {r.id for r in await accounts.list_sessions(alice.id)} == {mine.id, my_tenant.id}
    assert {r.id for r in await accounts.list_sessions(bob.id)} == {bobs.id}


async def test_live_check_of_many_ids_at_once(accounts: Accounts, alice: User) -> None:
    made = [
        (await accounts.create_session(alice, "account", user_agent="ua", ip="ip"))[1].id
        for _ in range(3)
    ]
    await accounts.revoke_session(made[1])
    asked = list(range(1, 1500))  # more than one query's worth of ids
    assert await accounts.live_session_ids(asked) == {made[0], made[2]}
    assert await accounts.live_session_ids([]) == set()
