"""The shared certificate store and the renewal lease (``homeport.tls.store`` / ``lease``).

On SQLite and a real PostgreSQL (``conftest.py``): the lease has one holder and a
growing fencing token; a write with an older token is refused; a tampered or
wrongly sealed row is refused and logged, never handed out; migration 0014 goes
up and down.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from pathlib import Path

import pytest
from acme import challenges
from alembic import command
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwk import JWKEC
from sqlalchemy import Connection, inspect, text, update

from homeport.accounts import Database
from homeport.accounts.db import alembic_config
from homeport.accounts.models import AcmeChallenge, CertificateRow
from homeport.accounts.secretbox import SecretBox
from homeport.tls.devca import create_independent_ca
from homeport.tls.lease import RenewalLease
from homeport.tls.shared_http01 import SharedHttp01Responder
from homeport.tls.store import CertificateRefused, CertificateStore, FencingError

NAME = "account.relay.test"


def _pair(tmp_path: Path, tag: str) -> tuple[bytes, bytes]:
    ca = create_independent_ca(tmp_path / f"ca-{tag}")
    cert, key = ca.issue_server_certificate([NAME], tmp_path / f"tls-{tag}")
    return cert.read_bytes(), key.read_bytes()


def _box() -> SecretBox:
    return SecretBox(secrets.token_bytes(32))


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


async def test_one_holder_at_a_time_and_the_token_grows(db: Database) -> None:
    clock = Clock()
    a = RenewalLease(db, "node-a", ttl=dt.timedelta(seconds=60), now=clock)
    b = RenewalLease(db, "node-b", ttl=dt.timedelta(seconds=60), now=clock)
    held_a = await a.acquire()
    assert held_a is not None
    assert await b.acquire() is None  # A holds it
    clock.now += dt.timedelta(seconds=50)
    assert await a.extend(held_a)
    clock.now += dt.timedelta(seconds=50)
    assert await b.acquire() is None  # extended: still A's
    clock.now += dt.timedelta(seconds=11)  # A stopped extending: expired
    held_b = await b.acquire()
    assert held_b is not None
    assert held_b.token == held_a.token + 1
    assert not await a.extend(held_a)  # A finds it lost
    assert held_a.lost
    await a.release(held_a)  # a stale release does nothing
    assert await a.acquire() is None
    await b.release(held_b)
    again = await a.acquire()  # released: free at once
    assert again is not None
    assert again.token == held_b.token + 1


async def test_the_lease_is_extended_while_held_and_released_after(db: Database) -> None:
    """A renewal longer than the lease's lifetime keeps it (the holder extends it)."""
    ttl = dt.timedelta(seconds=0.6)
    a = RenewalLease(db, "node-a", ttl=ttl)
    b = RenewalLease(db, "node-b", ttl=ttl)
    async with a.hold() as held:
        assert held is not None
        async with b.hold() as other:
            assert other is None
        await asyncio.sleep(3 * ttl.total_seconds())  # the work outlasts the lifetime
        assert await b.acquire() is None
        assert not held.lost
    again = await b.acquire()  # released on the way out
    assert again is not None
    assert again.token == held.token + 1


async def test_two_nodes_racing_for_the_lease_get_one_holder(db: Database) -> None:
    leases = [RenewalLease(db, f"node-{i}") for i in range(4)]
    got = await asyncio.gather(*(lease.acquire() for lease in leases))
    assert sum(held is not None for held in got) == 1


async def test_store_and_load_sealed(db: Database, tmp_path: Path) -> None:
    box = _box()
    store = CertificateStore(db, box, node="node-a")
    lease = RenewalLease(db, "node-a")
    held = await lease.acquire()
    assert held is not None
    chain, key = _pair(tmp_path, "1")
    assert await store.load("account") is None
    assert await store.put("account", chain, key, fence=held.token) == 1
    assert await store.stamps() == {"account": (held.token, 1)}
    loaded = await CertificateStore(db, box, node="node-b").load("account")
    assert loaded is not None
    assert (loaded.chain_pem, loaded.key_pem, loaded.version) == (chain, key, 1)
    assert "PRIVATE" not in repr(loaded)
    async with db.session() as s:
        row = await s.get(CertificateRow, "account")
        assert row is not None
        assert b"PRIVATE KEY" not in row.key_sealed  # sealed at rest
        assert key[30:60] not in row.key_sealed
    chain2, key2 = _pair(tmp_path, "2")
    assert await store.put("account", chain2, key2, fence=held.token) == 2
    with pytest.raises(ValueError, match="does not belong"):
        await store.put("account", chain, key2, fence=held.token)


async def test_a_write_with_an_older_fencing_token_is_refused(db: Database, tmp_path: Path) -> None:
    """A renewer paused past its lease cannot overwrite what the new holder stored."""
    clock = Clock()
    box = _box()
    a = RenewalLease(db, "node-a", ttl=dt.timedelta(seconds=30), now=clock)
    b = RenewalLease(db, "node-b", ttl=dt.timedelta(seconds=30), now=clock)
    held_a = await a.acquire()
    assert held_a is not None
    clock.now += dt.timedelta(seconds=31)  # A pauses; its lease runs out
    held_b = await b.acquire()
    assert held_b is not None
    store_a = CertificateStore(db, box, node="node-a")
    store_b = CertificateStore(db, box, node="node-b")
    # Refused even before B has written anything: the lease has seen B's token.
    old_chain, old_key = _pair(tmp_path, "a")
    with pytest.raises(FencingError):
        await store_a.put("account", old_chain, old_key, fence=held_a.token)
    assert await store_a.stamps() == {}
    new_chain, new_key = _pair(tmp_path, "b")
    await store_b.put("account", new_chain, new_key, fence=held_b.token)
    await b.release(held_b)
    with pytest.raises(FencingError):  # and after B released: the row has seen B's token
        await store_a.put("account", old_chain, old_key, fence=held_a.token)
    loaded = await store_a.load("account")
    assert loaded is not None
    assert loaded.chain_pem == new_chain
    assert loaded.fence == held_b.token


@pytest.mark.parametrize(
    "tamper",
    ["other chain", "version", "fence", "sealed bytes", "other key file", "kind swap"],
)
async def test_a_tampered_or_wrongly_sealed_row_is_refused_and_logged(
    db: Database, tmp_path: Path, tamper: str, caplog: pytest.LogCaptureFixture
) -> None:
    box = _box()
    store = CertificateStore(db, box, node="node-a")
    held = await RenewalLease(db, "node-a").acquire()
    assert held is not None
    chain, key = _pair(tmp_path, "1")
    other_chain, other_key = _pair(tmp_path, "2")
    await store.put("account", chain, key, fence=held.token)
    await store.put("tenant", other_chain, other_key, fence=held.token)
    reader = store
    async with db.session(write=True) as s, s.begin():
        match tamper:
            case "other chain":  # a certificate of the attacker's in place of ours
                values: dict[str, object] = {"chain_pem": other_chain.decode()}
            case "version":  # force a reload of the same row
                values = {"version": 7}
            case "fence":
                values = {"fence": held.token + 100}
            case "sealed bytes":
                async with db.session() as r:
                    row = await r.get(CertificateRow, "account")
                    assert row is not None
                    sealed = bytearray(row.key_sealed)
                sealed[-1] ^= 1
                values = {"key_sealed": bytes(sealed)}
            case "kind swap":  # the tenant row's sealed key pasted into the account row
                async with db.session() as r:
                    row = await r.get(CertificateRow, "tenant")
                    assert row is not None
                values = {"key_sealed": row.key_sealed, "chain_pem": row.chain_pem}
            case _:
                values = {}
                reader = CertificateStore(db, _box(), node="node-b")  # wrong key file
        if values:
            await s.execute(
                update(CertificateRow).where(CertificateRow.kind == "account").values(**values)
            )
    caplog.set_level(logging.INFO)
    with pytest.raises(CertificateRefused):
        await reader.load("account")
    assert reader.refused == 1
    [line] = [r for r in caplog.records if r.message == "tls.stored_certificate_refused"]
    assert line.kind == "account"  # type: ignore[attr-defined]
    assert "PRIVATE" not in caplog.text
    assert key.decode() not in caplog.text


async def test_migration_0014_down_and_up(database_url: str) -> None:
    database = Database(database_url)
    await database.migrate()
    await database.connect()

    def run(command_name: str, revision: str) -> object:
        def go(connection: Connection) -> list[str]:
            config = alembic_config()
            config.attributes["connection"] = connection
            getattr(command, command_name)(config, revision)
            return inspect(connection).get_table_names()

        return go

    try:
        async with database.engine.begin() as conn:
            tables = await conn.run_sync(run("downgrade", "0013_integrations"))
            assert "certificates" not in tables
            assert "renewal_leases" not in tables
            assert "acme_challenges" not in tables
            assert "instance_integrations" in tables
        async with database.engine.begin() as conn:
            tables = await conn.run_sync(run("upgrade", "head"))
            assert {"certificates", "renewal_leases", "acme_challenges"} <= set(tables)
            rows = (await conn.execute(text("SELECT name, token FROM renewal_leases"))).all()
            assert rows == [("acme", 0)]
    finally:
        await database.close()
    # The re-created tables work.
    await database.connect()
    try:
        assert await RenewalLease(database, "node-a").acquire() is not None
    finally:
        await database.close()


async def test_http01_answers_are_shared_only_while_validated(db: Database) -> None:
    """Any node answers the CA for the node that ordered; only while it validates."""
    ordering, other = SharedHttp01Responder(db), SharedHttp01Responder(db)
    ordering.bind(asyncio.get_running_loop())
    challenge = challenges.HTTP01(token=secrets.token_bytes(32))
    account_key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    token = challenge.encode("token")
    assert await other.lookup(token) is None
    await asyncio.to_thread(ordering.prepare, NAME, challenge, account_key)  # the bot's thread
    assert await other.lookup(token) == challenge.key_authorization(account_key)
    assert await other.lookup(token + "x") is None
    assert await other.lookup("../" + token) is None
    await asyncio.to_thread(ordering.cleanup)
    assert await other.lookup(token) is None
    assert await ordering.lookup(token) is None
    # A row left behind by a node that died mid-validation stops answering.
    async with db.session(write=True) as s, s.begin():
        s.add(
            AcmeChallenge(
                token=token,
                key_authorization="left",
                expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1),
            )
        )
    assert await other.lookup(token) is None
