"""The integration switches (accounts/integrations.py): off by default, owner only, audited."""

from __future__ import annotations

import pytest
from accounts_support import link
from sqlalchemy import select

from homeport.accounts import Accounts, Database, User
from homeport.accounts.errors import UnknownInstance
from homeport.accounts.integrations import CALL_EVENT, CHANGED_EVENT, Switches
from homeport.accounts.models import InstanceIntegrations


async def test_off_by_default_and_for_no_home(accounts: Accounts, alice: User) -> None:
    home = await link(accounts, alice)
    assert await accounts.integrations.get(home) == Switches(webhooks=False, voice=False)
    assert await accounts.integrations.get("a" * 26) == Switches()
    assert await accounts.integrations.get("not an id") == Switches()


async def test_only_the_owner_switches_and_each_change_is_audited(
    accounts: Accounts, alice: User, bob: User
) -> None:
    home = await link(accounts, alice)
    await accounts.add_member(home, bob.id)
    for who, where in ((bob.id, home), (alice.id, "a" * 26), (alice.id, "bad")):
        with pytest.raises(UnknownInstance):
            await accounts.integrations.set(who, where, Switches(webhooks=True))
    assert await accounts.integrations.get(home) == Switches()

    before = await accounts.integrations.set(
        alice.id, home, Switches(webhooks=True), ip="192.0.2.9", user_agent="pytest", session_id=7
    )
    assert before == Switches()
    assert await accounts.integrations.get(home) == Switches(webhooks=True)
    await accounts.integrations.set(alice.id, home, Switches(webhooks=True))  # no change
    before = await accounts.integrations.set(alice.id, home, Switches(voice=True))
    assert before == Switches(webhooks=True)
    assert await accounts.integrations.get(home) == Switches(voice=True)
    await accounts.integrations.set(alice.id, home, Switches())

    events = [e for e in await accounts.audit.for_instance(home) if e.kind == CHANGED_EVENT]
    assert [e.detail for e in reversed(events)] == ["on: webhooks", "on: voice", "all off"]
    assert {e.user_id for e in events} == {alice.id}
    assert events[-1].ip == "192.0.2.9"
    assert events[-1].session_id == 7


async def test_a_call_is_audited_as_metadata(accounts: Accounts, alice: User) -> None:
    home = await link(accounts, alice)
    await accounts.integrations.record_call(home, "webhook", "198.51.100.4")
    [event] = [e for e in await accounts.audit.for_instance(home) if e.kind == CALL_EVENT]
    assert (event.detail, event.ip, event.device, event.user_id) == (
        "webhook",
        "198.51.100.4",
        "integration",
        None,
    )
    # The owner sees it on the audit page (events on homes they own).
    rows, _ = await accounts.audit.page(alice.id, instance_id=home)
    assert CALL_EVENT in {row.kind for row in rows}


async def test_unlinking_deletes_the_switches(
    accounts: Accounts, db: Database, alice: User
) -> None:
    home = await link(accounts, alice)
    await accounts.integrations.set(alice.id, home, Switches(webhooks=True, voice=True))
    assert await accounts.sharing.unlink(alice.id, home)
    async with db.session() as s:
        assert list(await s.scalars(select(InstanceIntegrations))) == []
    assert await accounts.integrations.get(home) == Switches()
