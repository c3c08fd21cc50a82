"""Passkeys (WebAuthn): registration, passwordless and second-factor sign-in, and every
check that stops a forged, replayed, cloned or misdirected response.

Responses come from a software authenticator (``tests/support/authenticator.py``)
that signs for real; each negative test breaks exactly one thing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from accounts_support import Clock
from authenticator import SoftAuthenticator, b64url, unb64url

from homeport.accounts import Accounts, User
from homeport.accounts.db import Database
from homeport.accounts.models import ThrottleEntry
from homeport.accounts.passkeys import (
    MAX_PASSKEYS,
    OPTIONS_NETWORK,
    PASSKEY_NETWORK,
    PasskeyError,
    PasskeyThrottled,
    RelyingParty,
)

RP = RelyingParty(id="homeport.example", name="Homeport", origin="https://homeport.example")
IP = "203.0.113.7"


def device() -> SoftAuthenticator:
    return SoftAuthenticator(origin=RP.origin, rp_id=RP.id)


async def register(accounts: Accounts, user: User, auth: SoftAuthenticator, **kw: Any) -> None:
    token, options = await accounts.passkeys.registration_options(RP, user.id, user.email, "Phone")
    credential = auth.create(json.loads(options), **kw)
    await accounts.passkeys.register(RP, user.id, token, json.dumps(credential))


async def sign_in(
    accounts: Accounts,
    auth: SoftAuthenticator,
    *,
    user_id: int | None = None,
    ip: str = IP,
    **kw: Any,
) -> int | None:
    token, options = await accounts.passkeys.authentication_options(RP, user_id=user_id)
    response = auth.get(json.loads(options), **kw)
    outcome = await accounts.passkeys.authenticate(
        RP, token, json.dumps(response), user_id=user_id, ip=ip
    )
    return outcome.user_id


async def test_register_then_sign_in_without_password(accounts: Accounts, alice: User) -> None:
    auth = device()
    await register(accounts, alice, auth)
    [row] = await accounts.passkeys.list(alice.id)
    assert row.name == "Phone"
    assert row.credential_id == auth.credential_id
    assert row.last_used_at is None

    assert await sign_in(accounts, auth) == alice.id
    assert await sign_in(accounts, auth) == alice.id
    [row] = await accounts.passkeys.list(alice.id)
    assert row.sign_count == 2
    assert row.last_used_at is not None


async def test_options_require_user_verification_and_a_discoverable_key(
    accounts: Accounts, alice: User
) -> None:
    _token, options = await accounts.passkeys.registration_options(RP, alice.id, alice.email, "x")
    parsed = json.loads(options)
    assert parsed["rp"] == {"id": RP.id, "name": RP.name}
    assert parsed["authenticatorSelection"]["userVerification"] == "required"
    assert parsed["authenticatorSelection"]["residentKey"] == "required"
    # The user handle is random, not the email or the account id.
    handle = unb64url(parsed["user"]["id"])
    assert len(handle) == 32
    assert alice.email.encode() not in handle
    assert str(alice.id).encode() != handle
    assert len(unb64url(parsed["challenge"])) >= 32

    _token, options = await accounts.passkeys.authentication_options(RP)
    parsed = json.loads(options)
    assert parsed["userVerification"] == "required"
    assert parsed["allowCredentials"] == []  # nothing to enumerate


async def test_second_factor_only_with_the_accounts_own_passkey(
    accounts: Accounts, alice: User, bob: User
) -> None:
    alices, bobs = device(), device()
    await register(accounts, alice, alices)
    await register(accounts, bob, bobs)
    assert await sign_in(accounts, alices, user_id=alice.id) == alice.id
    # Bob's (valid) passkey cannot finish Alice's sign-in.
    assert await sign_in(accounts, bobs, user_id=alice.id) is None
    _token, options = await accounts.passkeys.authentication_options(RP, user_id=alice.id)
    allowed = [unb64url(c["id"]) for c in json.loads(options)["allowCredentials"]]
    assert allowed == [alices.credential_id]


async def test_second_factor_needs_a_passkey(accounts: Accounts, alice: User) -> None:
    with pytest.raises(PasskeyError, match="no passkey"):
        await accounts.passkeys.authentication_options(RP, user_id=alice.id)


@pytest.mark.parametrize(
    "broken",
    [
        {"origin": "https://homeport.example.evil.test"},
        {"origin": "https://tenant.homeport-homes.example"},
        {"rp_id": "evil.test"},
    ],
)
async def test_registration_for_another_site_is_refused(
    accounts: Accounts, alice: User, broken: dict[str, str]
) -> None:
    with pytest.raises(PasskeyError, match="could not be verified"):
        await register(accounts, alice, device(), **broken)
    assert await accounts.passkeys.list(alice.id) == []


async def test_registration_without_user_verification_is_refused(
    accounts: Accounts, alice: User
) -> None:
    auth = device()
    auth.user_verified = False
    with pytest.raises(PasskeyError):
        await register(accounts, alice, auth)
    assert await accounts.passkeys.list(alice.id) == []


@pytest.mark.parametrize(
    "broken",
    [
        {"origin": "https://phish.example"},
        {"rp_id": "phish.example"},
        {"user_handle": b"\x00" * 32},
    ],
)
async def test_sign_in_response_for_another_site_or_user_is_refused(
    accounts: Accounts, alice: User, broken: dict[str, Any]
) -> None:
    auth = device()
    await register(accounts, alice, auth)
    assert await sign_in(accounts, auth, **broken) is None
    assert await sign_in(accounts, auth) == alice.id  # the passkey itself still works


async def test_sign_in_without_user_verification_is_refused(
    accounts: Accounts, alice: User
) -> None:
    auth = device()
    await register(accounts, alice, auth)
    auth.user_verified = False
    assert await sign_in(accounts, auth) is None


async def test_replayed_response_is_refused(accounts: Accounts, alice: User) -> None:
    auth = device()
    await register(accounts, alice, auth)
    token, options = await accounts.passkeys.authentication_options(RP)
    response = json.dumps(auth.get(json.loads(options)))
    first = await accounts.passkeys.authenticate(RP, token, response, ip=IP)
    again = await accounts.passkeys.authenticate(RP, token, response, ip=IP)
    assert (first.user_id, again.user_id) == (alice.id, None)
    # Nor with a fresh ceremony: the signed challenge is the old one.
    fresh, _options = await accounts.passkeys.authentication_options(RP)
    assert (await accounts.passkeys.authenticate(RP, fresh, response, ip=IP)).user_id is None


async def test_a_wrong_response_uses_the_ceremony_up(accounts: Accounts, alice: User) -> None:
    auth = device()
    await register(accounts, alice, auth)
    token, options = await accounts.passkeys.authentication_options(RP)
    bad = auth.get(json.loads(options), origin="https://phish.example")
    good = auth.get(json.loads(options))
    assert (await accounts.passkeys.authenticate(RP, token, json.dumps(bad), ip=IP)).user_id is None
    assert (
        await accounts.passkeys.authenticate(RP, token, json.dumps(good), ip=IP)
    ).user_id is None


async def test_cloned_authenticator_is_refused(accounts: Accounts, alice: User) -> None:
    auth = device()
    await register(accounts, alice, auth)
    assert await sign_in(accounts, auth) == alice.id
    # A copy of the key whose counter did not move past what we saw.
    assert await sign_in(accounts, auth, count=False) is None


async def test_tampered_signature_is_refused(accounts: Accounts, alice: User) -> None:
    auth = device()
    await register(accounts, alice, auth)
    token, options = await accounts.passkeys.authentication_options(RP)
    response = auth.get(json.loads(options))
    signature = bytearray(unb64url(response["response"]["signature"]))
    signature[-1] ^= 1
    response["response"]["signature"] = b64url(bytes(signature))
    outcome = await accounts.passkeys.authenticate(RP, token, json.dumps(response), ip=IP)
    assert outcome.user_id is None


async def test_unknown_credential_is_refused(accounts: Accounts, alice: User) -> None:
    await register(accounts, alice, device())
    stranger = device()  # same rp and origin, never registered
    stranger.user_handle = b"\x01" * 32
    assert await sign_in(accounts, stranger) is None


async def test_ceremonies_do_not_mix(accounts: Accounts, alice: User, bob: User) -> None:
    auth = device()
    # A registration challenge cannot finish a sign-in ...
    token, options = await accounts.passkeys.registration_options(RP, alice.id, alice.email, "x")
    await register(accounts, alice, auth)
    response = auth.get(json.loads(options))
    assert (
        await accounts.passkeys.authenticate(RP, token, json.dumps(response), ip=IP)
    ).user_id is None
    # ... one started for Alice cannot register for Bob ...
    token, options = await accounts.passkeys.registration_options(RP, alice.id, alice.email, "x")
    credential = device().create(json.loads(options))
    with pytest.raises(PasskeyError, match="expired"):
        await accounts.passkeys.register(RP, bob.id, token, json.dumps(credential))
    # ... and a passwordless ceremony cannot serve as Alice's second factor.
    token, options = await accounts.passkeys.authentication_options(RP)
    response = auth.get(json.loads(options))
    outcome = await accounts.passkeys.authenticate(
        RP, token, json.dumps(response), user_id=alice.id, ip=IP
    )
    assert outcome.user_id is None


async def test_ceremony_expires(accounts: Accounts, alice: User, clock: Clock) -> None:
    auth = device()
    await register(accounts, alice, auth)
    token, options = await accounts.passkeys.authentication_options(RP)
    response = json.dumps(auth.get(json.loads(options)))
    clock.advance(minutes=5, seconds=1)
    assert (await accounts.passkeys.authenticate(RP, token, response, ip=IP)).user_id is None


async def test_one_credential_one_account(accounts: Accounts, alice: User, bob: User) -> None:
    auth = device()
    await register(accounts, alice, auth)
    with pytest.raises(PasskeyError, match="already registered"):
        await register(accounts, bob, auth)
    with pytest.raises(PasskeyError, match="already registered"):
        await register(accounts, alice, auth)
    assert await accounts.passkeys.count(alice.id) == 1
    assert await accounts.passkeys.count(bob.id) == 0


async def test_at_most_so_many_passkeys(accounts: Accounts, alice: User) -> None:
    for _ in range(MAX_PASSKEYS):
        await register(accounts, alice, device())
    with pytest.raises(PasskeyError, match="at most"):
        await accounts.passkeys.registration_options(RP, alice.id, alice.email, "one more")


async def test_delete_only_ones_own(accounts: Accounts, alice: User, bob: User) -> None:
    auth = device()
    await register(accounts, alice, auth)
    [row] = await accounts.passkeys.list(alice.id)
    assert not await accounts.passkeys.delete(bob.id, row.id)
    assert await sign_in(accounts, auth) == alice.id
    assert await accounts.passkeys.delete(alice.id, row.id)
    assert await sign_in(accounts, auth) is None


@pytest.mark.parametrize(
    "body",
    [
        "",
        "{",
        "[]",
        '{"id": "x"}',
        json.dumps({"id": "AA", "rawId": "AA", "response": {}}),
        "x" * 70_000,
    ],
)
async def test_malformed_responses_are_refused_cleanly(
    accounts: Accounts, alice: User, body: str
) -> None:
    await register(accounts, alice, device())
    token, _options = await accounts.passkeys.authentication_options(RP)
    assert (await accounts.passkeys.authenticate(RP, token, body, ip=IP)).user_id is None
    token, _options = await accounts.passkeys.registration_options(RP, alice.id, alice.email, "x")
    with pytest.raises(PasskeyError):
        await accounts.passkeys.register(RP, alice.id, token, body)


async def test_failures_are_throttled_per_network(accounts: Accounts, alice: User) -> None:
    auth = device()
    await register(accounts, alice, auth)
    for _ in range(PASSKEY_NETWORK.limit):
        token, _options = await accounts.passkeys.authentication_options(RP)
        outcome = await accounts.passkeys.authenticate(RP, token, "{}", ip="2001:db8:1:2::5")
        assert (outcome.user_id, outcome.wait) == (None, 0)
    token, options = await accounts.passkeys.authentication_options(RP)
    response = json.dumps(auth.get(json.loads(options)))
    # Another address in the same /64 waits, even with a good response ...
    waited = await accounts.passkeys.authenticate(RP, token, response, ip="2001:db8:1:2::99")
    assert waited.user_id is None
    assert waited.wait > 0
    # ... while another network is not affected.
    assert await sign_in(accounts, auth, ip="2001:db8:9::1") == alice.id


def test_names_are_cleaned() -> None:
    from homeport.accounts.passkeys import _clean_name

    assert _clean_name("  My\tphone\n\x00 ") == "My phone"
    assert _clean_name("") == "Passkey"
    assert len(_clean_name("x" * 500)) == 64


async def _failures(db: Database, key: str) -> int:
    async with db.session() as s:
        row = await s.get(ThrottleEntry, key)
    return 0 if row is None else row.failures


async def test_a_disabled_accounts_passkey_is_refused_like_any_other(
    db: Database, accounts: Accounts, alice: User
) -> None:
    """Refused inside the check: no counter moved, no failure given back, nothing raised."""
    auth = device()
    await register(accounts, alice, auth)
    await accounts.set_user_disabled(alice.id, True)
    assert await sign_in(accounts, auth) is None
    assert await sign_in(accounts, auth, user_id=alice.id) is None
    [row] = await accounts.passkeys.list(alice.id)
    assert (row.sign_count, row.last_used_at) == (0, None)
    assert await _failures(db, f"passkey:net:{IP}") == 2
    await accounts.set_user_disabled(alice.id, False)
    assert await sign_in(accounts, auth) == alice.id  # the passkey itself is fine


async def test_starting_sign_ins_is_limited_per_network(
    db: Database, accounts: Accounts, alice: User
) -> None:
    """Each start stores a challenge: one network holds at most OPTIONS_NETWORK of them."""
    auth = device()
    await register(accounts, alice, auth)
    for _ in range(OPTIONS_NETWORK.limit):
        await accounts.passkeys.authentication_options(RP, ip="2001:db8:1:2::5")
    with pytest.raises(PasskeyThrottled) as refused:
        await accounts.passkeys.authentication_options(RP, ip="2001:db8:1:2::77")  # same /64
    assert refused.value.wait > 0
    # Another network starts (and signs in) as usual, and its success gives its unit back.
    other = "2001:db8:9::1"
    token, options = await accounts.passkeys.authentication_options(RP, ip=other)
    assert await _failures(db, "passkey:options:2001:db8:9::/64") == 1
    response = json.dumps(auth.get(json.loads(options)))
    assert (await accounts.passkeys.authenticate(RP, token, response, ip=other)).user_id
    assert await _failures(db, "passkey:options:2001:db8:9::/64") == 0
