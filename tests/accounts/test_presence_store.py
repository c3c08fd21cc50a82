"""Connect and disconnect times written many at once (relay/presence.py), on both engines."""

from __future__ import annotations

from datetime import timedelta

from accounts_support import Clock, link

from homeport.accounts import Accounts, User


async def test_many_homes_in_one_transaction(accounts: Accounts, alice: User, clock: Clock) -> None:
    ids = [await link(accounts, alice, n, f"Home {n}") for n in range(1, 6)]
    up = clock.now
    down = up + timedelta(seconds=3)
    await accounts.record_presence(
        {i: up for i in ids[:4]},
        {ids[0]: down, ids[4]: down, "not-a-home": down},  # an unknown id is skipped
    )
    rows = {r.id: r for r in await accounts.list_instances()}
    assert not rows[ids[0]].connected  # up, then down in the same batch: down wins by time
    assert all(rows[i].connected for i in ids[1:4])
    assert not rows[ids[4]].connected
    fetched = await accounts.get_instance(ids[1])
    assert fetched is not None
    assert fetched.last_connected_at == up
    assert fetched.last_disconnected_at is None


async def test_nothing_to_write_is_no_transaction(accounts: Accounts) -> None:
    await accounts.record_presence({}, {})


async def test_the_cluster_sweep_finds_and_marks_only_the_homes_it_names(
    accounts: Accounts, alice: User, clock: Clock
) -> None:
    """A cluster node marks disconnected the homes no node holds, never every home."""
    ids = [await link(accounts, alice, n, f"Home {n}") for n in range(1, 5)]
    early, late = clock.now, clock.now + timedelta(seconds=30)
    await accounts.record_presence({ids[0]: early, ids[1]: early, ids[2]: late}, {})
    cutoff = clock.now + timedelta(seconds=10)
    # Connected before the cutoff: the first two (the third came up later; the fourth never).
    assert sorted(await accounts.instances.connected_before(cutoff)) == sorted(ids[:2])
    clock.now = late + timedelta(seconds=1)
    await accounts.instances.mark_disconnected_many([ids[0]])
    rows = {r.id: r for r in await accounts.list_instances()}
    assert not rows[ids[0]].connected
    assert rows[ids[1]].connected
    assert rows[ids[2]].connected
    assert await accounts.instances.connected_before(cutoff) == [ids[1]]
    await accounts.instances.mark_disconnected_many([])  # nothing to do, no error
