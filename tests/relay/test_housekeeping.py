"""The relay's background chores: the live-session sweep and the hourly purge."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from homeport.accounts import Accounts, Database, default_sqlite_url
from homeport.accounts.audit import EventType
from homeport.relay.gate import SessionGate
from homeport.relay.housekeeping import Housekeeping
from homeport.relay.live import Principal

PASSWORD = "correct horse battery staple"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest_asyncio.fixture
async def accounts(tmp_path: Path) -> AsyncIterator[tuple[Accounts, Clock]]:
    database = Database(default_sqlite_url(tmp_path))
    await database.migrate()
    await database.connect()
    clock = Clock()
    try:
        yield Accounts(database, now=clock), clock
    finally:
        await database.close()


async def _until(condition: object, seconds: float = 10.0) -> None:
    assert callable(condition)
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.02)


async def test_sweep_cuts_sessions_revoked_elsewhere_and_keeps_live_ones(
    accounts: tuple[Accounts, Clock],
) -> None:
    service, _clock = accounts
    user = await service.create_user("alice@example.com", PASSWORD)
    _, doomed = await service.create_session(user, "account", user_agent="ua", ip="ip")
    _, kept = await service.create_session(user, "account", user_agent="ua", ip="ip")
    gate = SessionGate(service)
    cut: list[int] = []
    chores = Housekeeping(service, gate, sweep_seconds=0.05, purge_seconds=3600)
    with (
        gate.live.track(
            "home", "websocket", lambda _why: cut.append(doomed.id), Principal(user.id, doomed.id)
        ),
        gate.live.track(
            "home", "websocket", lambda _why: cut.append(kept.id), Principal(user.id, kept.id)
        ),
    ):
        chores.start()
        try:
            await asyncio.sleep(0.3)  # several sweeps: both valid, nothing cut
            assert cut == []
            await service.revoke_session(doomed.id)  # as another process would
            await _until(lambda: cut == [doomed.id])
            await asyncio.sleep(0.2)
            assert cut == [doomed.id]
        finally:
            await chores.stop()


async def test_purge_runs_on_its_schedule(accounts: tuple[Accounts, Clock]) -> None:
    service, clock = accounts
    user = await service.create_user("alice@example.com", PASSWORD)
    await service.audit.record(EventType.SIGNIN_FAILED, user_id=user.id)
    clock.advance(days=181)
    await service.audit.record(EventType.SIGNIN_SUCCEEDED, user_id=user.id)
    chores = Housekeeping(service, SessionGate(service), sweep_seconds=3600, purge_seconds=0.05)
    chores.start()
    try:
        for _ in range(200):
            events, _ = await service.audit.page(user.id)
            if len(events) == 1:
                break
            await asyncio.sleep(0.05)
        assert [e.kind for e in events] == ["signin.succeeded"]
    finally:
        await chores.stop()


async def test_a_failing_chore_is_logged_and_retried(
    accounts: tuple[Accounts, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    service, _clock = accounts
    chores = Housekeeping(service, SessionGate(service))
    calls: list[int] = []

    async def flaky() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database briefly away")
        return 0

    with caplog.at_level(logging.ERROR):
        task = asyncio.create_task(chores._every(0.02, flaky, "flaky"))
        try:
            await _until(lambda: len(calls) >= 3)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert "relay.housekeeping_failed" in caplog.text


class _Hub:
    """The tunnel registry as the sweep sees it (the real hub is in the e2e tests)."""

    def __init__(self, *homes: str) -> None:
        self.tunnels: dict[str, object] = dict.fromkeys(homes, object())
        self.closed: list[str] = []

    async def close_instance(self, instance_id: str, reason: str = "unlinked") -> bool:
        self.closed.append(instance_id)
        return self.tunnels.pop(instance_id, None) is not None


async def _home(service: Accounts, email: str, n: int) -> tuple[int, str]:
    user = await service.create_user(email, PASSWORD)
    key = "ed25519:" + base64.urlsafe_b64encode(n.to_bytes(32, "big")).decode().rstrip("=")
    code, _ = await service.create_link_code(key)
    return user.id, (await service.link_instance(code, email)).id


async def test_the_sweep_cuts_app_links_and_closes_tunnels_of_homes_gone_elsewhere(
    accounts: tuple[Accounts, Clock],
) -> None:
    service, _clock = accounts
    alice, alices = await _home(service, "alice@example.com", 1)
    bob, bobs = await _home(service, "bob@example.com", 2)
    _, doomed = await service.sharing.create_app_link(alice, alices, "phone")
    _, kept = await service.sharing.create_app_link(bob, bobs, "tablet")
    gate = SessionGate(service)
    hub = _Hub(alices, bobs)
    chores = Housekeeping(service, gate, hub=hub)
    cut: list[str] = []
    with (
        gate.live.track(
            alices, "websocket", lambda _w: cut.append("doomed"), Principal(app_link_id=doomed.id)
        ),
        gate.live.track(
            bobs, "websocket", lambda _w: cut.append("kept"), Principal(app_link_id=kept.id)
        ),
    ):
        assert await chores.tick() == 0  # all valid: nothing cut
        assert (cut, hub.closed) == ([], [])
        await service.deletion.delete(alice)  # as `homeport admin user delete` would
        assert await chores.sweep_app_links() == 1
        assert cut == ["doomed"]
        assert await chores.sweep_tunnels() == 1
        assert hub.closed == [alices]
        assert list(hub.tunnels) == [bobs]
        assert await chores.tick() == 0
