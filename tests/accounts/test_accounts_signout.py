"""Sign-out ends the account session and the tenant sessions it handed off (R-SES-04)."""

from __future__ import annotations

import secrets

from accounts_support import link

from homeport.accounts import Accounts, User


async def _tenant_session_via_handoff(
    accounts: Accounts, user: User, instance_id: str, account_session_id: int | None
) -> tuple[str, int]:
    binding = secrets.token_urlsafe(32)
    code = await accounts.create_handoff(
        user.id, instance_id, binding, session_id=account_session_id
    )
    assert await accounts.consume_handoff(code, instance_id, binding) == user.id
    token, row = await accounts.create_session(
        user, "tenant", instance_id=instance_id, user_agent="t", ip="192.0.2.1", handoff_code=code
    )
    return token, row.id


async def test_sign_out_ends_handed_off_tenant_sessions_only(
    accounts: Accounts, alice: User
) -> None:
    home = await link(accounts, alice, 1)
    cabin = await link(accounts, alice, 2)
    account_token, account_row = await accounts.create_session(
        alice, "account", user_agent="laptop", ip="192.0.2.1"
    )
    _other_token, other_row = await accounts.create_session(
        alice, "account", user_agent="phone", ip="198.51.100.1"
    )
    home_token, home_id = await _tenant_session_via_handoff(accounts, alice, home, account_row.id)
    cabin_token, cabin_id = await _tenant_session_via_handoff(
        accounts, alice, cabin, account_row.id
    )
    phone_token, phone_id = await _tenant_session_via_handoff(accounts, alice, home, other_row.id)
    unlinked_token, _ = await _tenant_session_via_handoff(accounts, alice, home, None)

    ended = await accounts.sign_out(account_row.id)

    assert sorted(ended) == sorted([account_row.id, home_id, cabin_id])
    assert await accounts.resolve_session(account_token, kind="account") is None
    assert await accounts.resolve_session(home_token, kind="tenant", instance_id=home) is None
    assert await accounts.resolve_session(cabin_token, kind="tenant", instance_id=cabin) is None
    # The same person's other browser (phone) and unrelated sessions stay signed in.
    phone = await accounts.resolve_session(phone_token, kind="tenant", instance_id=home)
    assert phone is not None
    assert phone.session_id == phone_id
    assert await accounts.resolve_session(unlinked_token, kind="tenant", instance_id=home)
    # Signing out twice ends nothing more.
    assert await accounts.sign_out(account_row.id) == []


async def test_handoff_code_from_a_signed_out_session_is_refused(
    accounts: Accounts, alice: User
) -> None:
    home = await link(accounts, alice, 1)
    _token, account_row = await accounts.create_session(
        alice, "account", user_agent="laptop", ip="192.0.2.1"
    )
    binding = secrets.token_urlsafe(32)
    code = await accounts.create_handoff(alice.id, home, binding, session_id=account_row.id)
    await accounts.sign_out(account_row.id)
    assert await accounts.consume_handoff(code, home, binding) is None

    # Also when the code survives the sign-out (not deleted), the dead parent refuses it.
    _token2, second = await accounts.create_session(
        alice, "account", user_agent="laptop", ip="192.0.2.1"
    )
    code2 = await accounts.create_handoff(alice.id, home, binding, session_id=second.id)
    await accounts.revoke_session(second.id)
    assert await accounts.consume_handoff(code2, home, binding) is None


async def test_handoff_code_must_match_to_link_a_parent(
    accounts: Accounts, alice: User, bob: User
) -> None:
    home = await link(accounts, alice, 1)
    _token, account_row = await accounts.create_session(
        alice, "account", user_agent="laptop", ip="192.0.2.1"
    )
    binding = secrets.token_urlsafe(32)
    code = await accounts.create_handoff(alice.id, home, binding, session_id=account_row.id)
    # An unredeemed code links nothing (it must have been consumed first).
    _t, early = await accounts.create_session(
        alice, "tenant", instance_id=home, user_agent="t", ip="x", handoff_code=code
    )
    assert early.parent_session_id is None
    assert await accounts.consume_handoff(code, home, binding) == alice.id
    _t, row = await accounts.create_session(
        alice, "tenant", instance_id=home, user_agent="t", ip="x", handoff_code=code
    )
    assert row.parent_session_id == account_row.id
    # Another account's session cannot borrow Alice's code to attach itself.
    await accounts.add_member(home, bob.id)
    _t, bobs = await accounts.create_session(
        bob, "tenant", instance_id=home, user_agent="t", ip="x", handoff_code=code
    )
    assert bobs.parent_session_id is None
