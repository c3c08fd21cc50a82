"""Linking an add-on to an account with a typed code; instances."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from accounts_support import PASSWORD, Clock, addon_key

from homeport.accounts import (
    Accounts,
    AlreadyLinked,
    Database,
    LinkCodeInvalid,
    UnknownUser,
    User,
)
from homeport.accounts.identifiers import (
    canonical_public_key,
    new_instance_id,
    normalise_link_code,
    public_key_text,
)
from homeport.accounts.models import Instance

CODE_SHAPE = re.compile(r"[0-9A-HJKMNP-TV-Z]{5}-[0-9A-HJKMNP-TV-Z]{5}")


async def test_link_code_shape_and_lifetime(accounts: Accounts, clock: Clock) -> None:
    code, expires_at = await accounts.create_link_code(addon_key(1))
    assert CODE_SHAPE.fullmatch(code), code
    assert expires_at == clock.now + timedelta(minutes=10)


async def test_link_instance(accounts: Accounts, alice: User, clock: Clock) -> None:
    code, _ = await accounts.create_link_code(addon_key(1))
    instance = await accounts.link_instance(code, "Alice@Example.com", "  Cabin  ")
    assert re.fullmatch(r"[a-z2-7]{26}", instance.id)
    assert (instance.owner_id, instance.name) == (alice.id, "Cabin")
    assert instance.addon_public_key == addon_key(1)
    assert instance.created_at == clock.now
    assert instance.last_connected_at is None
    found = await accounts.instance_for_key(addon_key(1))
    assert found is not None
    assert found.id == instance.id
    assert await accounts.can_access(alice.id, instance.id)
    (row,) = await accounts.list_instances()
    assert (row.id, row.owner_email, row.name) == (instance.id, "alice@example.com", "Cabin")


async def test_wrong_code_rejected(accounts: Accounts, alice: User) -> None:
    code, _ = await accounts.create_link_code(addon_key(1))
    wrong = "00000-00000" if code != "00000-00000" else "11111-11111"
    with pytest.raises(LinkCodeInvalid):
        await accounts.link_instance(wrong, alice.email)
    for garbage in ("", "ABC", code + "X", "UUUUU-UUUUU", "x" * 1000):
        with pytest.raises(LinkCodeInvalid):
            await accounts.link_instance(garbage, alice.email)
    await accounts.link_instance(code, alice.email)  # the real one still works


async def test_expired_code_rejected(accounts: Accounts, alice: User, clock: Clock) -> None:
    code, expires_at = await accounts.create_link_code(addon_key(1))
    clock.now = expires_at
    with pytest.raises(LinkCodeInvalid):
        await accounts.link_instance(code, alice.email)
    assert await accounts.instance_for_key(addon_key(1)) is None


async def test_code_is_single_use(accounts: Accounts, alice: User, bob: User) -> None:
    code, _ = await accounts.create_link_code(addon_key(1))
    await accounts.link_instance(code, alice.email)
    with pytest.raises(LinkCodeInvalid):
        await accounts.link_instance(code, bob.email)
    found = await accounts.instance_for_key(addon_key(1))
    assert found is not None
    assert found.owner_id == alice.id


async def test_new_code_supersedes_old(accounts: Accounts, alice: User) -> None:
    first, _ = await accounts.create_link_code(addon_key(1))
    second, _ = await accounts.create_link_code(addon_key(1))
    other_key_code, _ = await accounts.create_link_code(addon_key(2))
    with pytest.raises(LinkCodeInvalid):
        await accounts.link_instance(first, alice.email)
    await accounts.link_instance(second, alice.email)
    await accounts.link_instance(other_key_code, alice.email)  # other keys unaffected


async def test_typed_code_is_normalised(accounts: Accounts, alice: User) -> None:
    code, _ = await accounts.create_link_code(addon_key(1))
    typed = " " + code.lower().replace("-", " ") + " "
    instance = await accounts.link_instance(typed, alice.email)
    assert instance.owner_id == alice.id


def test_normalise_link_code() -> None:
    assert normalise_link_code("abcde-fgh12") == "ABCDEFGH12"
    assert normalise_link_code(" ab cd e—fg h1 2 ") == "ABCDEFGH12"
    assert normalise_link_code("ABCDEFGH12") == "ABCDEFGH12"
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in "ABCDE-FGH12")
    assert normalise_link_code(full_width) == "ABCDEFGH12"
    assert normalise_link_code("oOoIL-1iLo0") == "0001111100"  # Crockford look-alikes
    for bad in ("ABCDE-FGH1", "ABCDE-FGH123", "ABCDE-FGHU2", "ABCDE_FGH12", ""):
        with pytest.raises(LinkCodeInvalid):
            normalise_link_code(bad)


async def test_unknown_owner(accounts: Accounts, alice: User) -> None:
    code, _ = await accounts.create_link_code(addon_key(1))
    with pytest.raises(UnknownUser):
        await accounts.link_instance(code, "nobody@example.com")
    with pytest.raises(UnknownUser):
        await accounts.link_instance(code, "not an email")
    await accounts.set_user_disabled(alice.id, True)
    with pytest.raises(UnknownUser):
        await accounts.link_instance(code, alice.email)
    await accounts.set_user_disabled(alice.id, False)
    await accounts.link_instance(code, alice.email)  # failures did not use the code up


async def test_already_linked(accounts: Accounts, alice: User, db: Database, clock: Clock) -> None:
    code, _ = await accounts.create_link_code(addon_key(1))
    await accounts.link_instance(code, alice.email)
    with pytest.raises(AlreadyLinked):
        await accounts.create_link_code(addon_key(1))
    # Same key spelled with padding is the same key.
    with pytest.raises(AlreadyLinked):
        await accounts.create_link_code(addon_key(1) + "=")

    # A code issued before the key got linked elsewhere (a race) is refused.
    code, _ = await accounts.create_link_code(addon_key(2))
    async with db.session(write=True) as s, s.begin():
        s.add(
            Instance(
                id=new_instance_id(),
                owner_id=alice.id,
                name="raced",
                addon_public_key=addon_key(2),
                created_at=clock.now,
            )
        )
    with pytest.raises(AlreadyLinked):
        await accounts.link_instance(code, alice.email)


def test_public_key_canonical_form() -> None:
    raw = bytes(range(32))
    text = public_key_text(raw)
    assert text.startswith("ed25519:")
    assert len(text) == 8 + 43
    assert canonical_public_key(text) == text
    assert canonical_public_key(text + "=") == text
    for bad in ("", text[8:], "ed25519:" + "A" * 42, "ed25519:" + "A" * 44, "rsa:" + text[8:]):
        with pytest.raises(ValueError, match="public key"):
            canonical_public_key(bad)
    with pytest.raises(ValueError, match="base64url"):
        canonical_public_key("ed25519:" + "+" * 43)  # standard, not url-safe, alphabet


async def test_bad_keys_and_names(accounts: Accounts, alice: User) -> None:
    with pytest.raises(ValueError, match="public key"):
        await accounts.create_link_code("ed25519:short")
    assert await accounts.instance_for_key("garbage") is None
    code, _ = await accounts.create_link_code(addon_key(1))
    for name in ("", "   ", "x" * 65, "bad\nname"):
        with pytest.raises(ValueError, match="name"):
            await accounts.link_instance(code, alice.email, name)


async def test_instances_listing_and_lifecycle(
    accounts: Accounts, alice: User, bob: User, clock: Clock
) -> None:
    code, _ = await accounts.create_link_code(addon_key(1))
    a = await accounts.link_instance(code, alice.email, "Home")
    clock.advance(seconds=1)
    code, _ = await accounts.create_link_code(addon_key(2))
    b = await accounts.link_instance(code, bob.email, "Bob's")
    await accounts.add_member(b.id, alice.id)

    assert [r.id for r in await accounts.list_instances()] == [a.id, b.id]
    assert [r.id for r in await accounts.list_instances(user_id=alice.id)] == [a.id, b.id]
    assert [r.id for r in await accounts.list_instances(user_id=bob.id)] == [b.id]

    clock.advance(minutes=5)
    await accounts.mark_connected(a.id)
    fetched = await accounts.get_instance(a.id)
    assert fetched is not None
    assert fetched.last_connected_at == clock.now
    assert await accounts.get_instance("nope") is None

    assert await accounts.unlink_instance(a.id)
    assert not await accounts.unlink_instance(a.id)
    assert await accounts.get_instance(a.id) is None
    assert await accounts.instance_for_key(addon_key(1)) is None
    # The key can be linked again (to a new, different host label).
    code, _ = await accounts.create_link_code(addon_key(1))
    again = await accounts.link_instance(code, bob.email)
    assert again.id != a.id


async def test_no_secrets_in_logs(
    accounts: Accounts, caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    caplog.set_level(logging.DEBUG)
    user = await accounts.create_user("carol@example.com", PASSWORD)
    await accounts.authenticate("carol@example.com", "a wrong password!!")
    await accounts.authenticate("carol@example.com", PASSWORD)
    code, _ = await accounts.create_link_code(addon_key(1))
    with pytest.raises(LinkCodeInvalid):
        await accounts.link_instance("ZZZZZ-ZZZZZ", user.email)
    instance = await accounts.link_instance(code, user.email)
    token, row = await accounts.create_session(user, "account", user_agent="", ip="")
    handoff = await accounts.create_handoff(user.id, instance.id, "binding-value-1234567")
    await accounts.consume_handoff(handoff, instance.id, "binding-value-1234567")
    await accounts.consume_handoff(handoff, instance.id, "binding-value-1234567")
    await accounts.revoke_session(row.id)
    own = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("homeport"))
    assert "login failed" in own
    assert "hand-off" in own
    # Raw secrets appear nowhere, not even in the drivers' debug logs (they
    # never reach the database); hashes stay out of our own log lines.
    for secret in (
        PASSWORD,
        "a wrong password",
        token,
        code,
        code.replace("-", ""),
        "ZZZZZ",
        handoff,
        "binding-value",
    ):
        assert secret not in caplog.text, secret
    assert row.token_hash not in own
