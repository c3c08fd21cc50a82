"""Sharing that ends by itself and has roles (issue 16): membership end dates, app-link
expiry, what a member may not do, handing a home over. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from accounts_support import PASSWORD, Clock, link

from homeport.accounts import Accounts, Database, User
from homeport.accounts.access import PERMISSIONS
from homeport.accounts.audit import EventType
from homeport.accounts.errors import NotOwner, UnknownInstance

UA, IP = "pytest", "192.0.2.7"


async def _guest(accounts: Accounts, alice: User, bob: User) -> str:
    """Alice's home, with Bob as a member."""
    home = await link(accounts, alice)
    await accounts.add_member(home, bob.id)
    return home


# ------------------------------------------------------------- end dates


async def test_a_membership_ends_on_its_date(
    accounts: Accounts, alice: User, bob: User, clock: Clock
) -> None:
    home = await _guest(accounts, alice, bob)
    until = clock.now + timedelta(days=2)
    assert await accounts.sharing.set_member_end(alice.id, home, bob.id, until)
    [row] = await accounts.sharing.members(home)
    assert row.until == until
    token, session = await accounts.create_session(
        bob, "tenant", instance_id=home, user_agent=UA, ip=IP
    )
    assert await accounts.can_access(bob.id, home)
    assert await accounts.sharing.role(bob.id, home) == "member"

    clock.now = until  # the end itself: no longer
    assert not await accounts.can_access(bob.id, home)
    assert await accounts.sharing.role(bob.id, home) is None
    assert await accounts.resolve_session(token, kind="tenant", instance_id=home) is None
    assert await accounts.live_session_ids([session.id]) == set()
    assert [r.id for r in await accounts.list_instances(user_id=bob.id)] == []
    assert await accounts.sharing.members(home) == []
    with pytest.raises(Exception, match="may not use"):
        await accounts.create_handoff(bob.id, home, "b" * 32)

    expired = await accounts.sharing.end_expired()
    assert expired.members == ((bob.id, home),)
    assert (await accounts.sharing.end_expired()).members == ()  # once
    events = [e.kind for e in await accounts.audit.for_instance(home)]
    assert EventType.MEMBER_EXPIRED in events
    # Alice's own access never had an end.
    assert await accounts.can_access(alice.id, home)


async def test_end_dates_are_checked(
    accounts: Accounts, alice: User, bob: User, clock: Clock
) -> None:
    home = await _guest(accounts, alice, bob)
    for bad in (clock.now, clock.now - timedelta(minutes=1), clock.now + timedelta(days=4000)):
        with pytest.raises(ValueError, match="end"):
            await accounts.sharing.set_member_end(alice.id, home, bob.id, bad)
    with pytest.raises(ValueError, match="time zone"):
        await accounts.sharing.set_member_end(
            alice.id, home, bob.id, clock.now.replace(tzinfo=None)
        )
    assert not await accounts.sharing.set_member_end(
        alice.id, home, 424242, clock.now + timedelta(days=1)
    )  # no such member
    until = clock.now + timedelta(hours=3)
    assert await accounts.sharing.set_member_end(alice.id, home, bob.id, until)
    assert await accounts.sharing.set_member_end(alice.id, home, bob.id, None)  # lifted again
    clock.advance(hours=4)
    assert await accounts.can_access(bob.id, home)


async def test_a_new_invitation_after_the_end_has_no_end(
    accounts: Accounts, alice: User, bob: User, clock: Clock
) -> None:
    home = await _guest(accounts, alice, bob)
    await accounts.sharing.set_member_end(alice.id, home, bob.id, clock.now + timedelta(hours=1))
    clock.advance(hours=2)
    assert not await accounts.can_access(bob.id, home)
    token, _ = await accounts.sharing.invite(alice.id, home, bob.email, lifetime=None)
    assert await accounts.sharing.accept(token, bob.id) == home
    clock.advance(days=30)
    assert await accounts.can_access(bob.id, home)


async def test_a_returning_guest_does_not_get_old_sessions_back(
    accounts: Accounts, alice: User, bob: User, clock: Clock
) -> None:
    """An ended membership not yet swept, then a new invitation: the sessions from the
    old one stay ended (they must not come back to life with the new membership)."""
    home = await _guest(accounts, alice, bob)
    old, _ = await accounts.create_session(bob, "tenant", instance_id=home, user_agent=UA, ip=IP)
    await accounts.sharing.set_member_end(alice.id, home, bob.id, clock.now + timedelta(hours=1))
    clock.advance(hours=2)
    assert await accounts.resolve_session(old, kind="tenant", instance_id=home) is None
    token, _ = await accounts.sharing.invite(alice.id, home, bob.email, lifetime=None)
    assert await accounts.sharing.accept(token, bob.id) == home
    assert await accounts.can_access(bob.id, home)
    assert await accounts.resolve_session(old, kind="tenant", instance_id=home) is None
    # The same through the plain add (admin, tests).
    other, _ = await accounts.create_session(bob, "tenant", instance_id=home, user_agent=UA, ip=IP)
    await accounts.sharing.set_member_end(alice.id, home, bob.id, clock.now + timedelta(hours=1))
    clock.advance(hours=2)
    await accounts.add_member(home, bob.id)
    assert await accounts.can_access(bob.id, home)
    assert await accounts.resolve_session(other, kind="tenant", instance_id=home) is None
    [row] = await accounts.sharing.members(home)
    assert (row.until, row.since) == (None, clock.now)  # a new membership, no end


async def test_a_member_sees_their_end_date_in_their_list(
    accounts: Accounts, alice: User, bob: User, clock: Clock
) -> None:
    home = await _guest(accounts, alice, bob)
    until = clock.now + timedelta(days=2)
    await accounts.sharing.set_member_end(alice.id, home, bob.id, until)
    [row] = await accounts.list_instances(user_id=bob.id)
    assert (row.id, row.member_until) == (home, until)
    [mine] = await accounts.list_instances(user_id=alice.id)
    assert mine.member_until is None
    assert [r.id for r in await accounts.list_instances()] == [home]  # the operator's list


async def test_each_end_is_ended_and_audited_once_across_processes(
    accounts: Accounts, database_url: str, alice: User, bob: User, clock: Clock
) -> None:
    """Two relay processes sweeping at the same moment: each end reported once."""
    home = await _guest(accounts, alice, bob)
    carol = await accounts.create_user("carol@example.com", PASSWORD)
    await accounts.add_member(home, carol.id)
    end = clock.now + timedelta(minutes=5)
    for member in (bob, carol):
        await accounts.sharing.set_member_end(alice.id, home, member.id, end)
    for n in range(3):
        await accounts.sharing.create_app_link(alice.id, home, f"tablet {n}", expires_at=end)
    clock.now = end
    other_db = Database(database_url)
    await other_db.connect()
    try:
        other = Accounts(other_db, now=clock)
        results = await asyncio.gather(
            *(a.sharing.end_expired() for a in (accounts, other, accounts, other))
        )
    finally:
        await other_db.close()
    members = [m for r in results for m in r.members]
    links = [x for r in results for x in r.app_links]
    assert sorted(members) == sorted([(bob.id, home), (carol.id, home)])
    assert len(links) == 3
    assert len(set(links)) == 3
    events = [e.kind for e in await accounts.audit.for_instance(home)]
    assert events.count(EventType.MEMBER_EXPIRED) == 2
    assert events.count(EventType.APP_LINK_EXPIRED) == 3
    # The owner sees the expired app links in her own log too.
    mine, _more = await accounts.audit.page(alice.id)
    assert sum(e.kind == EventType.APP_LINK_EXPIRED and e.user_id == alice.id for e in mine) == 3


async def test_end_expired_is_bounded_per_round(
    accounts: Accounts, alice: User, clock: Clock
) -> None:
    home = await link(accounts, alice)
    for n in range(3):
        await accounts.sharing.create_app_link(
            alice.id, home, f"t{n}", expires_at=clock.now + timedelta(minutes=n + 1)
        )
    clock.advance(minutes=10)
    assert len((await accounts.sharing.end_expired(limit=2)).app_links) == 2
    assert len((await accounts.sharing.end_expired(limit=2)).app_links) == 1
    assert await accounts.sharing.app_links(home) == []


async def test_an_app_link_expires(accounts: Accounts, alice: User, clock: Clock) -> None:
    home = await link(accounts, alice)
    label, row = await accounts.sharing.create_app_link(
        alice.id, home, "weekend tablet", expires_at=clock.now + timedelta(days=2)
    )
    other, kept = await accounts.sharing.create_app_link(alice.id, home, "phone")
    assert await accounts.sharing.resolve_app_link(label) is not None
    with pytest.raises(ValueError, match="future"):
        await accounts.sharing.create_app_link(alice.id, home, "x", expires_at=clock.now)
    # The owner can set, move or lift an expiry later.
    assert await accounts.sharing.set_app_link_expiry(
        alice.id, home, kept.id, clock.now + timedelta(days=5)
    )
    assert await accounts.sharing.set_app_link_expiry(alice.id, home, kept.id, None)
    assert not await accounts.sharing.set_app_link_expiry(
        alice.id, home, 999999, clock.now + timedelta(days=1)
    )

    clock.advance(days=2)
    assert await accounts.sharing.resolve_app_link(label) is None
    assert await accounts.sharing.live_app_link_ids([row.id, kept.id]) == {kept.id}
    assert await accounts.sharing.resolve_app_link(other) is not None
    expired = await accounts.sharing.end_expired()
    assert expired.app_links == ((row.id, home),)
    assert [link.id for link in await accounts.sharing.app_links(home)] == [kept.id]
    events = [e.kind for e in await accounts.audit.for_instance(home)]
    assert EventType.APP_LINK_EXPIRED in events


# ------------------------------------------------------------------- roles


def test_the_member_role_opens_and_nothing_else() -> None:
    assert PERMISSIONS["member"] == frozenset({"open"})
    assert PERMISSIONS["member"] < PERMISSIONS["owner"]


async def test_every_owner_action_is_refused_to_a_member(
    accounts: Accounts, alice: User, bob: User, clock: Clock
) -> None:
    """A negative test per forbidden action, at the store (not only hidden in the page).

    A member is told they are not the owner (they know the home: they open it);
    a stranger, an ended member and a missing home get the same "no such home".
    """
    home = await _guest(accounts, alice, bob)
    carol = await accounts.create_user("carol@example.com", PASSWORD)
    await accounts.add_member(home, carol.id)
    _label, app_link = await accounts.sharing.create_app_link(alice.id, home, "phone")
    _token, invitation = await accounts.sharing.invite(
        alice.id, home, "dave@example.com", lifetime=None
    )
    later = clock.now + timedelta(days=1)
    sharing = accounts.sharing
    forbidden = {
        "manage page": sharing.owned_instance(bob.id, home),
        "rename": sharing.rename(bob.id, home, "Mine now"),
        "unlink": sharing.unlink(bob.id, home),
        "invite": sharing.invite(bob.id, home, "eve@example.com", lifetime=None),
        "withdraw an invitation": sharing.revoke_invitation(bob.id, home, invitation.id),
        "remove a member": sharing.remove_member(bob.id, home, carol.id),
        "set an end date": sharing.set_member_end(bob.id, home, carol.id, later),
        "lift his own end date": sharing.set_member_end(bob.id, home, bob.id, None),
        "create an app link": sharing.create_app_link(bob.id, home, "mine"),
        "revoke an app link": sharing.revoke_app_link(bob.id, home, app_link.id),
        "set an app link's expiry": sharing.set_app_link_expiry(bob.id, home, app_link.id, later),
        "require a second factor": sharing.set_require_second_factor(
            bob.id, home, True, session_id=1
        ),
        "hand the home over": sharing.transfer(bob.id, home, bob.id),
    }
    for what, action in forbidden.items():
        try:
            await action
        except NotOwner:
            continue
        pytest.fail(f"a member could {what}")
    # Nothing changed.
    instance = await accounts.get_instance(home)
    assert instance is not None
    assert (instance.name, instance.owner_id) == ("Home", alice.id)
    assert [m.email for m in await sharing.members(home)] == [bob.email, carol.email]
    assert [link.id for link in await sharing.app_links(home)] == [app_link.id]
    assert [i.status for i in await sharing.invitations(home)] == ["pending"]
    assert not await sharing.requires_second_factor(home)
    # The same answer for a stranger and for a home that does not exist.
    stranger = await accounts.create_user("stranger@example.com", PASSWORD)
    for who, where in ((stranger.id, home), (alice.id, "a" * 26)):
        with pytest.raises(UnknownInstance):
            await sharing.rename(who, where, "x")
        with pytest.raises(UnknownInstance):
            await sharing.transfer(who, where, bob.id)
    # An ended member has no role left at all.
    await sharing.set_member_end(alice.id, home, carol.id, clock.now + timedelta(hours=1))
    clock.advance(hours=2)
    with pytest.raises(UnknownInstance):
        await sharing.create_app_link(carol.id, home, "mine")
    instance = await accounts.get_instance(home)
    assert instance is not None
    assert instance.owner_id == alice.id


# ---------------------------------------------------------------- hand-over


async def test_the_owner_hands_the_home_over_to_a_member(
    accounts: Accounts, alice: User, bob: User
) -> None:
    home = await _guest(accounts, alice, bob)
    alice_token, _ = await accounts.create_session(
        alice, "tenant", instance_id=home, user_agent=UA, ip=IP
    )
    await accounts.sharing.transfer(alice.id, home, bob.id)
    instance = await accounts.get_instance(home)
    assert instance is not None
    assert instance.owner_id == bob.id
    assert await accounts.sharing.role(bob.id, home) == "owner"
    assert await accounts.sharing.role(alice.id, home) == "member"
    assert [m.email for m in await accounts.sharing.members(home)] == [alice.email]
    # Alice still opens it (her session too), but manages it no more; Bob does.
    assert await accounts.resolve_session(alice_token, kind="tenant", instance_id=home)
    with pytest.raises(NotOwner):
        await accounts.sharing.rename(alice.id, home, "Still mine")
    assert await accounts.sharing.rename(bob.id, home, "Bob's now") == "Bob's now"
    assert await accounts.sharing.remove_member(bob.id, home, alice.id)
    assert not await accounts.can_access(alice.id, home)


async def test_only_to_a_current_member(
    accounts: Accounts, alice: User, bob: User, clock: Clock
) -> None:
    home = await _guest(accounts, alice, bob)
    carol = await accounts.create_user("carol@example.com", PASSWORD)
    with pytest.raises(ValueError, match="can open this home"):
        await accounts.sharing.transfer(alice.id, home, carol.id)  # not a member
    with pytest.raises(ValueError, match="already"):
        await accounts.sharing.transfer(alice.id, home, alice.id)
    await accounts.sharing.set_member_end(alice.id, home, bob.id, clock.now + timedelta(hours=1))
    clock.advance(hours=2)
    with pytest.raises(ValueError, match="can open this home"):
        await accounts.sharing.transfer(alice.id, home, bob.id)  # his access has ended
    await accounts.set_user_disabled(carol.id, True)
    await accounts.add_member(home, carol.id)
    with pytest.raises(ValueError, match="can open this home"):
        await accounts.sharing.transfer(alice.id, home, carol.id)  # disabled
    instance = await accounts.get_instance(home)
    assert instance is not None
    assert instance.owner_id == alice.id


async def test_a_non_owner_cannot_hand_the_home_over(
    accounts: Accounts, alice: User, bob: User
) -> None:
    home = await _guest(accounts, alice, bob)
    carol = await accounts.create_user("carol@example.com", PASSWORD)
    await accounts.add_member(home, carol.id)
    with pytest.raises(NotOwner):
        await accounts.sharing.transfer(bob.id, home, bob.id)  # to himself
    with pytest.raises(NotOwner):
        await accounts.sharing.transfer(bob.id, home, carol.id)  # to another member
    stranger = await accounts.create_user("mallory@example.com", PASSWORD)
    with pytest.raises(UnknownInstance):
        await accounts.sharing.transfer(stranger.id, home, stranger.id)
    instance = await accounts.get_instance(home)
    assert instance is not None
    assert instance.owner_id == alice.id
    assert [m.email for m in await accounts.sharing.members(home)] == [bob.email, carol.email]


async def test_two_hand_overs_at_once_leave_one_owner_and_lose_nobody(
    accounts: Accounts, alice: User, bob: User
) -> None:
    home = await _guest(accounts, alice, bob)
    carol = await accounts.create_user("carol@example.com", PASSWORD)
    await accounts.add_member(home, carol.id)
    results = await asyncio.gather(
        accounts.sharing.transfer(alice.id, home, bob.id),
        accounts.sharing.transfer(alice.id, home, carol.id),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 1, results
    assert all(r is None or isinstance(r, NotOwner) for r in results), results
    instance = await accounts.get_instance(home)
    assert instance is not None
    assert instance.owner_id in (bob.id, carol.id)
    everyone = {alice.email, bob.email, carol.email}
    members = {m.email for m in await accounts.sharing.members(home)}
    owner = await accounts.get_user(instance.owner_id)
    assert owner is not None
    assert members | {owner.email} == everyone  # one owner, the other two members
    assert owner.email not in members
