"""OpenID flow and identity rules (R-OIDC-01, R-OIDC-03) on a real, migrated SQLite file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from accounts_support import Clock
from sqlalchemy import select

from homeport.accounts import AccountExists, Accounts, Database, User
from homeport.accounts.models import OidcFlow
from homeport.accounts.oidc import IdentityTaken, LastSignInMethod, WrongBrowser
from homeport.accounts.oidc_tokens import VerifiedIdentity
from homeport.accounts.secretbox import SecretBox, SecretBoxError

ISSUER = "https://idp.example"


@pytest.fixture
def boxed(db: Database, clock: Clock, tmp_path: Path) -> Accounts:
    return Accounts(db, now=clock, secret_box=SecretBox.load_or_create(tmp_path / "box.key"))


def _who(sub: str = "sub-1", email: str | None = "p@example.com") -> VerifiedIdentity:
    return VerifiedIdentity(ISSUER, sub, email, True)


async def test_flow_secrets_are_random_and_stored_only_as_hashes_or_sealed(
    boxed: Accounts, db: Database
) -> None:
    one = await boxed.oidc.start("idp", "signin", next_path="/x")
    two = await boxed.oidc.start("idp", "signin", next_path="/x")
    values = [one.state, one.nonce, one.code_verifier, one.binding]
    assert len({*values, two.state, two.nonce, two.code_verifier, two.binding}) == 8
    assert all(len(v) >= 43 for v in values)
    async with db.session() as s:
        row = await s.scalar(
            select(OidcFlow).where(
                OidcFlow.state_hash == hashlib.sha256(one.state.encode()).hexdigest()
            )
        )
    assert row is not None
    stored = repr(
        [row.state_hash, row.binding_hash, row.nonce_hash, row.verifier_sealed, row.next_path]
    )
    for secret in values:
        assert secret not in stored
    assert one.code_verifier.encode() not in row.verifier_sealed


async def test_state_is_single_use_provider_bound_and_expires(
    boxed: Accounts, clock: Clock
) -> None:
    flow = await boxed.oidc.start("idp", "signin", next_path="/")
    assert await boxed.oidc.claim(flow.state, "other-provider", flow.binding) is None
    claimed = await boxed.oidc.claim(flow.state, "idp", flow.binding)
    assert claimed is not None
    assert claimed.code_verifier == flow.code_verifier
    assert await boxed.oidc.claim(flow.state, "idp", flow.binding) is None  # replay
    late = await boxed.oidc.start("idp", "signin", next_path="/")
    clock.advance(minutes=10, seconds=1)
    assert await boxed.oidc.claim(late.state, "idp", late.binding) is None
    assert await boxed.oidc.claim("", "idp", None) is None
    assert await boxed.oidc.claim("x" * 500, "idp", None) is None


async def _verified(boxed: Accounts, who: VerifiedIdentity) -> tuple[str, str]:
    """A flow through a callback that carried no cookie (form_post): (ticket, binding)."""
    flow = await boxed.oidc.start("idp", "signin", next_path="/here")
    claimed = await boxed.oidc.claim(flow.state, "idp", None)
    assert claimed is not None
    ticket = await boxed.oidc.verified(claimed.id, who)
    assert ticket is not None
    return ticket, flow.binding


async def test_a_callback_with_another_browsers_cookie_uses_the_flow_up(boxed: Accounts) -> None:
    """Issue #9: the binding is checked at the callback whenever the browser can send it."""
    for wrong in ("", "another-browsers-value", "y" * 500):
        flow = await boxed.oidc.start("idp", "signin", next_path="/")
        with pytest.raises(WrongBrowser):
            await boxed.oidc.claim(flow.state, "idp", wrong)
        # Used up: not even the right browser can come back with it now.
        assert await boxed.oidc.claim(flow.state, "idp", flow.binding) is None
        assert await boxed.oidc.claim(flow.state, "idp", None) is None


async def test_only_the_browser_with_ticket_and_cookie_finishes_once(
    boxed: Accounts, clock: Clock, db: Database
) -> None:
    flow = await boxed.oidc.start("idp", "signin", next_path="/here")
    claimed = await boxed.oidc.claim(flow.state, "idp", flow.binding)
    assert claimed is not None
    ticket = await boxed.oidc.verified(claimed.id, _who())
    assert ticket is not None
    assert len(ticket) >= 43
    async with db.session() as s:
        row = await s.get(OidcFlow, claimed.id)
    assert row is not None
    assert row.ticket_hash == hashlib.sha256(ticket.encode()).hexdigest()  # only its hash
    assert await boxed.oidc.verified(claimed.id, _who()) is None  # one ticket per flow
    assert await boxed.oidc.finish("not-the-ticket", flow.binding) is None
    assert await boxed.oidc.finish("", flow.binding) is None
    done = await boxed.oidc.finish(ticket, flow.binding)
    assert done is not None
    assert (done.next_path, done.identity.subject) == ("/here", "sub-1")
    assert await boxed.oidc.finish(ticket, flow.binding) is None
    # A verified flow left too long is dead as well.
    ticket, binding = await _verified(boxed, _who())
    clock.advance(minutes=11)
    assert await boxed.oidc.finish(ticket, binding) is None
    assert await boxed.purge_expired() >= 2


async def test_the_ticket_without_the_cookie_releases_nothing_and_uses_the_flow_up(
    boxed: Accounts,
) -> None:
    """Issue #9, form_post: the victim's browser has the ticket, the attacker's the cookie."""
    for wrong in ("", "another-browsers-value"):
        ticket, binding = await _verified(boxed, _who())
        with pytest.raises(WrongBrowser):
            await boxed.oidc.finish(ticket, wrong)
        assert await boxed.oidc.finish(ticket, binding) is None


async def test_failed_flow_cannot_be_finished(boxed: Accounts) -> None:
    flow = await boxed.oidc.start("idp", "signin", next_path="/")
    claimed = await boxed.oidc.claim(flow.state, "idp", flow.binding)
    assert claimed is not None
    await boxed.oidc.fail(claimed.id)
    assert await boxed.oidc.verified(claimed.id, _who()) is None  # too late: it is done


async def test_the_verifier_opens_only_for_its_own_flow(boxed: Accounts, db: Database) -> None:
    """The sealed PKCE verifier is bound to the flow's state and binding hashes."""
    one = await boxed.oidc.start("idp", "signin", next_path="/")
    two = await boxed.oidc.start("idp", "signin", next_path="/")
    async with db.session(write=True) as s, s.begin():
        rows = {r.state_hash: r for r in await s.scalars(select(OidcFlow))}
        first = rows[hashlib.sha256(one.state.encode()).hexdigest()]
        second = rows[hashlib.sha256(two.state.encode()).hexdigest()]
        first.binding_hash = second.binding_hash  # as if moved to another browser
    with pytest.raises(SecretBoxError):
        await boxed.oidc.claim(one.state, "idp", two.binding)


async def test_held_identity_goes_only_to_the_matched_account(
    boxed: Accounts, alice: User, bob: User
) -> None:
    ticket, binding = await _verified(boxed, _who(email=alice.email))
    done = await boxed.oidc.finish(ticket, binding)
    assert done is not None
    await boxed.oidc.hold_for_link(done.id, alice.id)
    assert await boxed.oidc.held(binding) == ("idp", alice.id)
    assert await boxed.oidc.take_held(binding, bob.id) is None
    assert await boxed.oidc.take_confirmed(binding, alice.id) is None  # not a settings link
    taken = await boxed.oidc.take_held(binding, alice.id)
    assert taken is not None
    assert await boxed.oidc.take_held(binding, alice.id) is None


async def test_a_settings_link_waits_for_its_confirmation(
    boxed: Accounts, alice: User, bob: User
) -> None:
    flow = await boxed.oidc.start("idp", "link", next_path="/", user_id=alice.id)
    claimed = await boxed.oidc.claim(flow.state, "idp", flow.binding)
    assert claimed is not None
    ticket = await boxed.oidc.verified(claimed.id, _who("s-7"))
    assert ticket is not None
    done = await boxed.oidc.finish(ticket, flow.binding)
    assert done is not None
    assert (done.purpose, done.user_id) == ("link", alice.id)
    await boxed.oidc.hold_for_link(done.id, bob.id)  # only sign-in flows are ever held
    assert await boxed.oidc.held(flow.binding) is None
    await boxed.oidc.await_confirmation(done.id)
    # Shown (and left in place) only to this browser and this account.
    assert await boxed.oidc.to_confirm("another-browsers-value", alice.id) is None
    assert await boxed.oidc.to_confirm(flow.binding, bob.id) is None
    shown = await boxed.oidc.to_confirm(flow.binding, alice.id)
    assert shown is not None
    assert shown.identity.subject == "s-7"
    assert await boxed.oidc.to_confirm(flow.binding, alice.id) is not None
    assert await boxed.oidc.take_held(flow.binding, alice.id) is None  # not a held link
    assert await boxed.oidc.take_confirmed(flow.binding, bob.id) is None
    taken = await boxed.oidc.take_confirmed(flow.binding, alice.id)
    assert taken is not None
    assert await boxed.oidc.take_confirmed(flow.binding, alice.id) is None
    assert await boxed.oidc.to_confirm(flow.binding, alice.id) is None


async def test_identity_is_issuer_and_subject_never_the_email(
    boxed: Accounts, alice: User, bob: User
) -> None:
    await boxed.oidc.link(alice.id, "idp", _who("s-1", email=bob.email))
    found = await boxed.oidc.identity(ISSUER, "s-1")
    assert found is not None
    assert found.user_id == alice.id  # the email names Bob; the account is Alice's
    assert await boxed.oidc.identity("https://other.example", "s-1") is None
    with pytest.raises(IdentityTaken):
        await boxed.oidc.link(bob.id, "idp", _who("s-1"))
    again = await boxed.oidc.link(alice.id, "idp", _who("s-1"))
    assert again.id == found.id


async def test_new_account_has_no_password_and_keeps_its_last_method(boxed: Accounts) -> None:
    user = await boxed.oidc.create_account("New@Example.com", "idp", _who("s-9"))
    assert user.email == "new@example.com"
    assert user.has_password is False
    assert await boxed.authenticate("new@example.com", "") is None
    [identity] = await boxed.oidc.identities(user.id)
    with pytest.raises(LastSignInMethod):
        await boxed.oidc.unlink(user.id, identity.id)
    await boxed.oidc.link(user.id, "other", VerifiedIdentity("https://b.example", "s", None, True))
    assert await boxed.oidc.unlink(user.id, identity.id)
    with pytest.raises(AccountExists):
        await boxed.oidc.create_account("new@example.com", "idp", _who("s-10"))


async def test_password_accounts_may_unlink_everything(boxed: Accounts, alice: User) -> None:
    row = await boxed.oidc.link(alice.id, "idp", _who("s-2"))
    assert not await boxed.oidc.unlink(alice.id + 1000, row.id)
    assert await boxed.oidc.unlink(alice.id, row.id)
    assert await boxed.oidc.identities(alice.id) == []


async def test_setting_a_password_makes_the_provider_removable(boxed: Accounts) -> None:
    user = await boxed.oidc.create_account("later@example.com", "idp", _who("s-11"))
    [identity] = await boxed.oidc.identities(user.id)
    await boxed.set_password(user.id, "correct horse battery staple forty-two")
    refreshed = await boxed.get_user(user.id)
    assert refreshed is not None
    assert refreshed.has_password
    assert await boxed.authenticate("later@example.com", "correct horse battery staple forty-two")
    assert await boxed.oidc.unlink(user.id, identity.id)
