"""The tenant gate's session cache: one lookup for concurrent misses, never a stale grant."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from homeport.accounts import Accounts, Database, default_sqlite_url
from homeport.accounts.service import SessionInfo
from homeport.keys import public_key_text
from homeport.relay.gate import SessionGate

PASSWORD = "correct horse battery staple"


class CountingAccounts(Accounts):
    """The real accounts service; counts session lookups and can hold them open."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lookups = 0
        self.release = asyncio.Event()
        self.release.set()

    async def resolve_session(self, *args: Any, **kwargs: Any) -> SessionInfo | None:
        self.lookups += 1
        # Read first, then wait: like a lookup that read the row just before a revocation.
        info = await super().resolve_session(*args, **kwargs)
        await self.release.wait()
        return info


@pytest_asyncio.fixture
async def home(tmp_path: Path) -> AsyncIterator[tuple[CountingAccounts, str, int, str]]:
    """Accounts on SQLite, an owner with a linked home, and a tenant session for it."""
    database = Database(default_sqlite_url(tmp_path))
    await database.migrate()
    await database.connect()
    try:
        accounts = CountingAccounts(database)
        owner = await accounts.create_user("owner@example.com", PASSWORD)
        key = Ed25519PrivateKey.generate().public_key()
        code, _ = await accounts.create_link_code(public_key_text(key))
        instance = await accounts.link_instance(code, owner.email, "Home")
        token, row = await accounts.create_session(
            owner, "tenant", instance_id=instance.id, user_agent="t", ip="192.0.2.1"
        )
        yield accounts, token, row.id, instance.id
    finally:
        await database.close()


async def test_concurrent_misses_share_one_lookup(
    home: tuple[CountingAccounts, str, int, str],
) -> None:
    accounts, token, session_id, instance_id = home
    gate = SessionGate(accounts)
    answers = await asyncio.gather(*(gate.tenant_user(token, instance_id) for _ in range(32)))
    assert accounts.lookups == 1
    assert len(set(answers)) == 1
    assert answers[0] is not None
    assert answers[0][1] == session_id
    await gate.tenant_user(token, instance_id)
    assert accounts.lookups == 1  # cached now


async def test_one_caller_going_away_does_not_cancel_the_others(
    home: tuple[CountingAccounts, str, int, str],
) -> None:
    accounts, token, session_id, instance_id = home
    gate = SessionGate(accounts)
    accounts.release.clear()
    first = asyncio.create_task(gate.tenant_user(token, instance_id))
    second = asyncio.create_task(gate.tenant_user(token, instance_id))
    await asyncio.sleep(0.05)
    first.cancel()
    accounts.release.set()
    answer = await second
    assert answer is not None
    assert answer[1] == session_id
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_lookup_that_raced_a_revocation_is_not_cached(
    home: tuple[CountingAccounts, str, int, str],
) -> None:
    """Threat: a revoked session kept alive for the cache TTL by a lookup that read the
    row just before the revocation and cached its answer just after."""
    accounts, token, session_id, instance_id = home
    gate = SessionGate(accounts)
    accounts.release.clear()
    early = asyncio.create_task(gate.tenant_user(token, instance_id))
    await asyncio.sleep(0.05)  # the lookup has read the (still valid) session
    assert await accounts.revoke_session(session_id)
    gate.end_sessions([session_id])
    accounts.release.set()
    assert (await early) is not None  # it was in before the revocation
    assert await gate.tenant_user(token, instance_id) is None
    assert accounts.lookups == 2


async def test_no_request_joins_a_lookup_older_than_a_revocation(
    home: tuple[CountingAccounts, str, int, str],
) -> None:
    accounts, token, session_id, instance_id = home
    gate = SessionGate(accounts)
    accounts.release.clear()
    early = asyncio.create_task(gate.tenant_user(token, instance_id))
    await asyncio.sleep(0.05)
    assert await accounts.revoke_session(session_id)
    gate.end_sessions([session_id])
    late = asyncio.create_task(gate.tenant_user(token, instance_id))
    await asyncio.sleep(0.05)
    accounts.release.set()
    assert (await early) is not None
    assert (await late) is None  # its own lookup, which sees the revocation
    assert accounts.lookups == 2


async def test_failed_lookup_reaches_every_waiter_and_is_retried(
    home: tuple[CountingAccounts, str, int, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts, token, _session_id, instance_id = home
    gate = SessionGate(accounts)
    original = accounts.resolve_session

    async def broken(*args: Any, **kwargs: Any) -> SessionInfo | None:
        await asyncio.sleep(0.01)
        raise ConnectionError("database went away")

    monkeypatch.setattr(accounts, "resolve_session", broken)
    results = await asyncio.gather(
        *(gate.tenant_user(token, instance_id) for _ in range(4)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)
    monkeypatch.setattr(accounts, "resolve_session", original)
    assert await gate.tenant_user(token, instance_id) is not None
