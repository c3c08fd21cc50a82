"""Password reset links (R-PWD-05, R-RATE-02) on a fake clock."""

from __future__ import annotations

from accounts_support import PASSWORD, Clock
from sqlalchemy import select

from homeport.accounts import Accounts, Database, User
from homeport.accounts.identifiers import sha256_hex
from homeport.accounts.models import PasswordReset
from homeport.accounts.password_reset import PasswordResets

IP = "198.51.100.7"
NEW_PASSWORD = "a whole new sentence for this account"


async def test_link_for_an_account_only(accounts: Accounts, alice: User, db: Database) -> None:
    resets: PasswordResets = accounts.password_resets
    unknown = await resets.request("nobody@example.com", "nobody@example.com", ip=IP)
    assert unknown.wait == 0
    assert unknown.token is None
    known = await resets.request("Alice@Example.com", alice.email, ip=IP)
    assert known.token is not None
    assert known.user_id == alice.id
    async with db.session() as s:
        stored = list(await s.scalars(select(PasswordReset.token_hash)))
    assert stored == [sha256_hex(known.token)]  # hashed at rest


async def test_single_use_short_lived_and_latest_only(
    accounts: Accounts, alice: User, clock: Clock
) -> None:
    resets = accounts.password_resets
    first = await resets.request(alice.email, alice.email, ip=IP)
    second = await resets.request(alice.email, alice.email, ip=IP)
    assert first.token
    assert second.token
    assert (await resets.check_token(first.token, ip=IP))[0] is None  # voided by the newer
    assert (await resets.check_token(second.token, ip=IP))[0] == alice.id
    assert await resets.consume(second.token) == alice.id
    assert await resets.consume(second.token) is None
    third = await resets.request(alice.email, alice.email, ip=IP)
    assert third.token
    clock.advance(minutes=10, seconds=1)
    assert (await resets.check_token(third.token, ip=IP))[0] is None
    assert await resets.consume(third.token) is None


async def test_reset_does_not_sign_in_and_ends_sessions(accounts: Accounts, alice: User) -> None:
    token, _row = await accounts.create_session(alice, "account", user_agent="ua", ip=IP)
    request = await accounts.password_resets.request(alice.email, alice.email, ip=IP)
    assert request.token
    user_id = await accounts.password_resets.consume(request.token)
    assert user_id == alice.id
    await accounts.set_password(alice.id, NEW_PASSWORD)
    assert await accounts.resolve_session(token, kind="account") is None
    assert await accounts.authenticate(alice.email, PASSWORD) is None
    assert await accounts.authenticate(alice.email, NEW_PASSWORD) is not None


async def test_consuming_ends_half_done_signins(accounts: Accounts, alice: User) -> None:
    pending = await accounts.totp.start_pending(alice.id, "/")
    code = await accounts.email_signins.start(alice.id, "/")
    request = await accounts.password_resets.request(alice.email, alice.email, ip=IP)
    assert request.token
    await accounts.password_resets.consume(request.token)
    assert await accounts.totp.pending(pending) is None
    assert await accounts.email_signins.pending_user(code.token) is None


async def test_requests_throttled_per_network_mails_per_address(
    accounts: Accounts, alice: User
) -> None:
    resets = accounts.password_resets
    results = [await resets.request(alice.email, alice.email, ip=IP) for _ in range(4)]
    # The 4th gets the same answer, but no mail: nobody can flood an inbox.
    assert [r.token is not None for r in results] == [True, True, True, False]
    assert all(r.wait == 0 for r in results)
    more = [await resets.request("x@example.com", "x@example.com", ip=IP) for _ in range(6)]
    assert [r.wait > 0 for r in more] == [False] * 6
    refused = await resets.request("y@example.com", "y@example.com", ip=IP)
    assert refused.wait > 0  # 11th request from one network in an hour
    assert (await resets.request(alice.email, alice.email, ip="203.0.113.1")).wait == 0


async def test_bad_tokens_throttled_per_network(accounts: Accounts, alice: User) -> None:
    resets = accounts.password_resets
    waits = [(await resets.check_token(f"bogus-{n}", ip=IP))[1] for n in range(21)]
    assert waits[:20] == [0.0] * 20
    assert waits[20] > 0
