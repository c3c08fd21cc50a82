"""Single use under races: many concurrent consumers of one code, exactly one wins.

Every single-use secret is used up through :func:`consume_once` (an ``UPDATE``
that matches only the unused row, or a ``DELETE`` of the row); this races it
once per kind of statement, on SQLite and on PostgreSQL (the ``backend``
parameter of every accounts test), each consumer in its own transaction.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from accounts_support import Clock, addon_key
from sqlalchemy import select

from homeport.accounts import Accounts, Database
from homeport.accounts.identifiers import sha256_hex
from homeport.accounts.models import LinkCode, SingleUse
from homeport.accounts.passkeys import RelyingParty
from homeport.accounts.secretbox import SecretBox
from homeport.accounts.single_use import consume_once

CONSUMERS = 8
RP = RelyingParty(id="homeport.localhost", name="Homeport", origin="https://homeport.localhost")


async def _warm(db: Database) -> None:
    """Open a connection per consumer first, so the consumers start together."""

    async def hold() -> None:
        async with db.session() as s:
            await s.execute(select(1))
            await asyncio.sleep(0.05)

    await asyncio.gather(*(hold() for _ in range(CONSUMERS)))


async def _race(db: Database, code_hash: str, clock: Clock) -> list[bool]:
    await _warm(db)

    async def consume() -> bool:
        async with db.session(write=True) as s, s.begin():
            return await consume_once(s, LinkCode.use(LinkCode.code_hash == code_hash, at=clock()))

    return await asyncio.gather(*(consume() for _ in range(CONSUMERS)))


async def test_one_of_many_concurrent_uses_wins(db: Database, clock: Clock) -> None:
    async with db.session(write=True) as s, s.begin():
        s.add(
            LinkCode(
                code_hash=sha256_hex("code"),
                addon_public_key=addon_key(1),
                created_at=clock(),
                expires_at=clock() + timedelta(minutes=10),
                used_at=None,
            )
        )
    outcomes = await _race(db, sha256_hex("code"), clock)
    assert outcomes.count(True) == 1, outcomes
    async with db.session() as s:
        row = await s.get(LinkCode, sha256_hex("code"))
        assert row is not None
        assert row.used_at == clock()
    assert await _race(db, sha256_hex("code"), clock) == [False] * CONSUMERS  # and never again


async def test_an_unknown_code_is_never_used(db: Database, clock: Clock) -> None:
    assert await _race(db, sha256_hex("nobody issued this"), clock) == [False] * CONSUMERS


def test_every_used_at_row_is_single_use() -> None:
    """The mixin carries the one ``used_at`` column; no model declares its own."""
    for model in LinkCode.registry.mappers:
        cls = model.class_
        if "used_at" in cls.__table__.c:
            assert issubclass(cls, SingleUse), cls.__name__


async def test_a_link_code_links_one_home_however_many_try_at_once(accounts: Accounts) -> None:
    owner = await accounts.users.create("owner@example.com", "correct horse battery staple")
    code, _expires = await accounts.instances.create_link_code(addon_key(2))
    outcomes = await asyncio.gather(
        *(accounts.instances.link(code, owner.email) for _ in range(CONSUMERS)),
        return_exceptions=True,
    )
    linked = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(linked) == 1, outcomes
    assert len(await accounts.instances.find(user_id=owner.id)) == 1


async def test_a_passkey_challenge_is_taken_once(db: Database, accounts: Accounts) -> None:
    """The ceremony row is deleted by the one response that takes it (a ``DELETE``)."""
    token, _options = await accounts.passkeys.authentication_options(RP, ip="192.0.2.1")
    await _warm(db)
    taken = await asyncio.gather(
        *(accounts.passkeys._take(token, "signin") for _ in range(CONSUMERS))
    )
    assert sum(t is not None for t in taken) == 1, taken


async def test_an_openid_flow_comes_back_once(db: Database, clock: Clock, tmp_path: Path) -> None:
    """A status change (``started`` → ``claimed``) is a use too: one callback claims it."""
    accounts = Accounts(db, now=clock, secret_box=SecretBox.load_or_create(tmp_path / "box.key"))
    flow = await accounts.oidc.start("idp", "signin", next_path="/")
    claims = await asyncio.gather(
        *(accounts.oidc.claim(flow.state, "idp", flow.binding) for _ in range(CONSUMERS))
    )
    assert sum(c is not None for c in claims) == 1, claims


@pytest.mark.parametrize("used", [False, True])
async def test_use_matches_only_an_unused_row(db: Database, clock: Clock, used: bool) -> None:
    async with db.session(write=True) as s, s.begin():
        s.add(
            LinkCode(
                code_hash=sha256_hex("x"),
                addon_public_key=addon_key(3),
                created_at=clock(),
                expires_at=clock() + timedelta(minutes=10),
                used_at=clock() if used else None,
            )
        )
    async with db.session(write=True) as s, s.begin():
        won = await consume_once(s, LinkCode.use(LinkCode.code_hash == sha256_hex("x"), at=clock()))
    assert won is not used
