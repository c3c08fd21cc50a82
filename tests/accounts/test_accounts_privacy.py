"""Export and deletion of an account (GDPR), on SQLite and PostgreSQL (issue 16)."""

from __future__ import annotations

import json
from pathlib import Path

import pyotp
import pytest
from accounts_support import PASSWORD, Clock, link
from sqlalchemy import Table, func, select

from homeport.accounts import Accounts, Database, User
from homeport.accounts.audit import EventType
from homeport.accounts.deletion import ACCOUNT_DELETED, ACCOUNT_DELETED_BY_OPERATOR
from homeport.accounts.errors import UnknownUser
from homeport.accounts.export import EXPORT_FORMAT
from homeport.accounts.identifiers import sha256_hex
from homeport.accounts.models import (
    AppLink,
    Base,
    RecoveryCode,
    RetiredInstance,
    TotpCredential,
    WebSession,
)
from homeport.accounts.oidc_tokens import VerifiedIdentity
from homeport.accounts.operator import Operator
from homeport.accounts.secretbox import SecretBox

IP = "192.0.2.7"


@pytest.fixture
def box_accounts(db: Database, clock: Clock, tmp_path: Path) -> Accounts:
    box = SecretBox.load_or_create(tmp_path / "keys" / "secret-box.key")
    return Accounts(db, now=clock, secret_box=box)


async def _everything(
    accounts: Accounts, alice: User, bob: User, clock: Clock
) -> dict[str, object]:
    """Alice owns a home shared with Bob and is a member of Bob's; she has every factor."""
    home = await link(accounts, alice, 1, "Beach house")
    bobs = await link(accounts, bob, 2, "Bob's flat")
    await accounts.add_member(home, bob.id)
    bobs_token, _ = await accounts.sharing.invite(bob.id, bobs, alice.email, lifetime=None)
    await accounts.sharing.accept(bobs_token, alice.id)  # Alice in Bob's home, by invitation
    label, app_link = await accounts.sharing.create_app_link(alice.id, home, "Anna's phone")
    invite_token, _ = await accounts.sharing.invite(
        alice.id, home, "carol@example.com", lifetime=None
    )
    token, session = await accounts.create_session(alice, "account", user_agent="ua", ip=IP)
    tenant_token, tenant = await accounts.create_session(
        alice, "tenant", instance_id=bobs, user_agent="ua", ip=IP
    )
    enrolment = await accounts.totp.start_enrolment(alice.id, alice.email)
    outcome, codes = await accounts.totp.confirm_enrolment(
        alice.id, pyotp.TOTP(enrolment.secret_base32).at(clock.now), ip=IP
    )
    assert outcome.ok
    await accounts.oidc.link(
        alice.id, "idp", VerifiedIdentity("https://idp.example", "sub-1", alice.email, True)
    )
    await accounts.email_signins.remember(alice.id, None, IP)
    await accounts.audit.record(EventType.SIGNIN_SUCCEEDED, user_id=alice.id, ip=IP)
    return {
        "home": home,
        "bobs": bobs,
        "label": label,
        "app_link": app_link.id,
        "secrets": [
            label,
            sha256_hex(label),
            invite_token,
            sha256_hex(invite_token),
            token,
            sha256_hex(token),
            tenant_token,
            sha256_hex(tenant_token),
            enrolment.secret_base32,
            *codes,
        ],
        "session": session.id,
        "tenant": tenant.id,
    }


async def test_the_export_has_everything_and_no_secret(
    box_accounts: Accounts, db: Database, clock: Clock
) -> None:
    accounts = box_accounts
    alice = await accounts.create_user("alice@example.com", PASSWORD)
    bob = await accounts.create_user("bob@example.com", PASSWORD)
    made = await _everything(accounts, alice, bob, clock)
    document = await accounts.exports.export(alice.id)
    text = json.dumps(document)
    assert document["format"] == EXPORT_FORMAT
    assert document["account"]["email"] == "alice@example.com"
    assert document["account"]["has_password"] is True
    [home] = document["homes_owned"]
    assert (home["id"], home["name"]) == (made["home"], "Beach house")
    assert [m["email"] for m in home["members"]] == ["bob@example.com"]
    assert [i["email"] for i in home["invitations"]] == ["carol@example.com"]
    assert [link["name"] for link in home["app_links"]] == ["Anna's phone"]
    [membership] = document["memberships"]
    assert (membership["home_id"], membership["owner_email"]) == (made["bobs"], "bob@example.com")
    kinds = sorted(s["kind"] for s in document["sessions"])
    assert kinds == ["account", "tenant"]
    factors = document["second_factors"]
    assert factors["authenticator_app"]["turned_on_at"]
    assert factors["recovery_codes_left"] == 10
    assert document["sign_in_identities"][0]["subject"] == "sub-1"
    assert document["known_networks"][0]["network"] == IP
    assert "signin.succeeded" in [e["type"] for e in document["audit_events"]]
    # No secret, and no hash of one.
    for secret in made["secrets"]:  # type: ignore[attr-defined]
        assert secret not in text
    async with db.session() as s:
        stored = [
            *await s.scalars(select(WebSession.token_hash)),
            *await s.scalars(select(AppLink.label_hash)),
            *await s.scalars(select(RecoveryCode.code_hash)),
            alice.password_hash,
        ]
        sealed = await s.scalar(select(TotpCredential.secret_sealed))
    for value in stored:
        assert value not in text
    assert sealed is not None
    assert sealed.hex() not in text
    with pytest.raises(UnknownUser):
        await accounts.exports.export(999_999)


async def _references(db: Database, user_id: int) -> dict[str, int]:
    """Rows in any table whose foreign key to ``users.id`` names ``user_id``."""
    found: dict[str, int] = {}
    async with db.session() as s:
        for table in Base.metadata.sorted_tables:
            assert isinstance(table, Table)
            for column in table.columns:
                if any(k.target_fullname == "users.id" for k in column.foreign_keys):
                    count = await s.scalar(
                        select(func.count()).select_from(table).where(column == user_id)
                    )
                    if count:
                        found[f"{table.name}.{column.name}"] = int(count)
    return found


async def test_deletion_unlinks_leaves_and_forgets(
    box_accounts: Accounts, db: Database, clock: Clock
) -> None:
    accounts = box_accounts
    alice = await accounts.create_user("alice@example.com", PASSWORD)
    bob = await accounts.create_user("bob@example.com", PASSWORD)
    made = await _everything(accounts, alice, bob, clock)
    assert await _references(db, alice.id)  # there is plenty to delete

    deleted = await accounts.deletion.delete(alice.id, ip=IP, user_agent="ua")
    assert deleted.user_id == alice.id
    assert deleted.email == "alice@example.com"
    assert deleted.homes == (made["home"],)
    assert deleted.memberships == (made["bobs"],)
    assert made["session"] in deleted.sessions
    assert made["tenant"] in deleted.sessions
    assert deleted.app_links == (made["app_link"],)

    assert await accounts.get_user(alice.id) is None
    assert await _references(db, alice.id) == {}
    assert await accounts.get_instance(made["home"]) is None  # type: ignore[arg-type]
    async with db.session() as s:
        assert await s.get(RetiredInstance, made["home"]) is not None  # never issued again
    assert await accounts.sharing.resolve_app_link(made["label"]) is None  # type: ignore[arg-type]
    assert await accounts.live_session_ids([made["session"], made["tenant"]]) == set()  # type: ignore[list-item]
    # Bob keeps his home; Alice is no longer on it, and he sees that she left.
    assert await accounts.get_instance(made["bobs"]) is not None  # type: ignore[arg-type]
    assert [m.email for m in await accounts.sharing.members(made["bobs"])] == []  # type: ignore[arg-type]
    bobs_events = [e.kind for e in await accounts.audit.for_instance(made["bobs"])]  # type: ignore[arg-type]
    assert EventType.MEMBER_REMOVED in bobs_events
    # His invitation stays in his records as accepted, by nobody that exists any more.
    [invitation] = await accounts.sharing.invitations(made["bobs"])  # type: ignore[arg-type]
    assert (invitation.status, invitation.accepted_by_email) == ("accepted", None)
    # The audit metadata stays until the purge, with the deletion itself.
    kept = [e.kind for e in await accounts.audit.export(alice.id)]
    assert ACCOUNT_DELETED in kept
    assert EventType.SIGNIN_SUCCEEDED in kept
    clock.advance(days=181)
    await accounts.audit.purge()
    assert await accounts.audit.export(alice.id) == []
    # The address is free again.
    again = await accounts.create_user("alice@example.com", PASSWORD)
    assert again.id != alice.id
    with pytest.raises(UnknownUser):
        await accounts.deletion.delete(alice.id)


async def test_the_operator_deletes_with_the_same_operation(
    accounts: Accounts, alice: User, bob: User
) -> None:
    home = await link(accounts, alice)
    bobs = await link(accounts, bob, 2)
    await accounts.add_member(bobs, alice.id)
    user, deleted = await Operator(accounts).delete_user("ALICE@example.com")
    assert user.id == alice.id
    assert (deleted.homes, deleted.memberships) == ((home,), (bobs,))
    kinds = [e.kind for e in await accounts.audit.export(alice.id)]
    assert ACCOUNT_DELETED_BY_OPERATOR in kinds
    assert ACCOUNT_DELETED not in kinds
    assert [m.email for m in await accounts.sharing.members(bobs)] == []


async def test_the_sweep_finds_what_ended_elsewhere(
    accounts: Accounts, alice: User, bob: User
) -> None:
    home = await link(accounts, alice)
    bobs = await link(accounts, bob, 2)
    _, doomed = await accounts.sharing.create_app_link(alice.id, home, "phone")
    _, kept = await accounts.sharing.create_app_link(bob.id, bobs, "tablet")
    assert await accounts.sharing.live_app_link_ids([doomed.id, kept.id, 12345]) == {
        doomed.id,
        kept.id,
    }
    assert await accounts.instances.existing([home, bobs, "a" * 26, "junk"]) == {home, bobs}
    await accounts.deletion.delete(alice.id)
    assert await accounts.sharing.live_app_link_ids([doomed.id, kept.id]) == {kept.id}
    assert await accounts.instances.existing([home, bobs]) == {bobs}
    await accounts.set_user_disabled(bob.id, True)
    assert await accounts.sharing.live_app_link_ids([kept.id]) == set()
