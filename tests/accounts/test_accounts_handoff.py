"""Hand-off codes from the account site to a tenant host (R-SES-06)."""

from __future__ import annotations

import asyncio

import pytest
from accounts_support import Clock, link

from homeport.accounts import AccessDenied, Accounts, User

BINDING = "browser-state-0123456789abcdef"


async def test_handoff_round_trip(accounts: Accounts, alice: User) -> None:
    instance = await link(accounts, alice)
    code = await accounts.create_handoff(alice.id, instance, BINDING)
    assert len(code) == 43
    assert await accounts.consume_handoff(code, instance, BINDING) == alice.id


async def test_reuse_rejected(accounts: Accounts, alice: User) -> None:
    instance = await link(accounts, alice)
    code = await accounts.create_handoff(alice.id, instance, BINDING)
    assert await accounts.consume_handoff(code, instance, BINDING) == alice.id
    assert await accounts.consume_handoff(code, instance, BINDING) is None


async def test_wrong_instance_rejected_and_code_burnt(accounts: Accounts, alice: User) -> None:
    a = await link(accounts, alice, 1)
    b = await link(accounts, alice, 2)
    code = await accounts.create_handoff(alice.id, a, BINDING)
    assert await accounts.consume_handoff(code, b, BINDING) is None
    # A code seen on the wrong host is in the wrong hands: it is gone.
    assert await accounts.consume_handoff(code, a, BINDING) is None


async def test_wrong_binding_rejected(accounts: Accounts, alice: User) -> None:
    instance = await link(accounts, alice)
    code = await accounts.create_handoff(alice.id, instance, BINDING)
    assert await accounts.consume_handoff(code, instance, BINDING + "x") is None
    assert await accounts.consume_handoff(code, instance, BINDING) is None
    code = await accounts.create_handoff(alice.id, instance, BINDING)
    assert await accounts.consume_handoff(code, instance, "") is None


async def test_expired_after_60_seconds(accounts: Accounts, alice: User, clock: Clock) -> None:
    instance = await link(accounts, alice)
    code = await accounts.create_handoff(alice.id, instance, BINDING)
    clock.advance(seconds=61)
    assert await accounts.consume_handoff(code, instance, BINDING) is None
    code = await accounts.create_handoff(alice.id, instance, BINDING)
    clock.advance(seconds=59)
    assert await accounts.consume_handoff(code, instance, BINDING) == alice.id


async def test_concurrent_consume_only_one_wins(accounts: Accounts, alice: User) -> None:
    instance = await link(accounts, alice)
    code = await accounts.create_handoff(alice.id, instance, BINDING)
    results = await asyncio.gather(
        *(accounts.consume_handoff(code, instance, BINDING) for _ in range(10))
    )
    assert results.count(alice.id) == 1
    assert results.count(None) == 9


async def test_access_withdrawn_before_consume(accounts: Accounts, alice: User, bob: User) -> None:
    instance = await link(accounts, alice)
    await accounts.add_member(instance, bob.id)
    code = await accounts.create_handoff(bob.id, instance, BINDING)
    await accounts.remove_member(instance, bob.id)
    assert await accounts.consume_handoff(code, instance, BINDING) is None

    await accounts.add_member(instance, bob.id)
    code = await accounts.create_handoff(bob.id, instance, BINDING)
    await accounts.set_user_disabled(bob.id, True)
    assert await accounts.consume_handoff(code, instance, BINDING) is None


async def test_no_handoff_without_access(accounts: Accounts, alice: User, bob: User) -> None:
    instance = await link(accounts, alice)
    with pytest.raises(AccessDenied):
        await accounts.create_handoff(bob.id, instance, BINDING)
    with pytest.raises(AccessDenied):
        await accounts.create_handoff(alice.id, "a" * 26, BINDING)


async def test_binding_must_be_a_real_value(accounts: Accounts, alice: User) -> None:
    instance = await link(accounts, alice)
    for binding in ("", "short", "x" * 513):
        with pytest.raises(ValueError, match="binding"):
            await accounts.create_handoff(alice.id, instance, binding)


@pytest.mark.parametrize("code", ["", "nope", "A" * 43, "A" * 5000])
async def test_unknown_codes_rejected(accounts: Accounts, alice: User, code: str) -> None:
    instance = await link(accounts, alice)
    await accounts.create_handoff(alice.id, instance, BINDING)
    assert await accounts.consume_handoff(code, instance, BINDING) is None


async def test_a_code_shown_without_browser_state_is_used_up(
    accounts: Accounts, alice: User
) -> None:
    """A code reaching a tenant host with no state cookie at all is in the wrong hands."""
    instance = await link(accounts, alice)
    code = await accounts.create_handoff(alice.id, instance, BINDING)
    assert await accounts.consume_handoff(code, instance, None) is None
    assert await accounts.consume_handoff(code, instance, BINDING) is None, "gone for everyone"
