"""Offline alerts: one mail when a home stays offline longer than its owner chose, one
when it is back, never a flood; through the relay's housekeeping and real SMTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from smtp_sink import SmtpSink

from homeport.accounts import Accounts, Database, default_sqlite_url
from homeport.accounts.errors import UnknownInstance
from homeport.mail.mailer import Outbox, SmtpMailer
from homeport.mail.messages import MailWriter
from homeport.mail.settings import SmtpSettings
from homeport.relay.gate import SessionGate
from homeport.relay.housekeeping import Housekeeping

PASSWORD = "correct horse battery staple"
OWNER = "owner@example.com"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


@pytest_asyncio.fixture
async def world(
    tmp_path: Path, sink: SmtpSink
) -> AsyncIterator[tuple[Accounts, Clock, Housekeeping, str]]:
    database = Database(default_sqlite_url(tmp_path))
    await database.migrate()
    await database.connect()
    clock = Clock()
    accounts = Accounts(database, now=clock)
    owner = await accounts.create_user(OWNER, PASSWORD)
    code, _ = await accounts.create_link_code("ed25519:" + "A" * 43)
    instance = await accounts.link_instance(code, owner.email, "Cabin")
    settings = SmtpSettings(
        host="127.0.0.1", port=sink.port, security="none", mail_from="relay@homeport.example"
    )
    outbox = Outbox(SmtpMailer(settings))
    keeper = Housekeeping(
        accounts,
        SessionGate(accounts),
        mail=(outbox, MailWriter("https://homeport.example")),
        manage_url=lambda instance_id: f"https://homeport.example/instances/{instance_id}",
    )
    try:
        yield accounts, clock, keeper, instance.id
    finally:
        await outbox.drain()
        await database.close()


async def _mails(sink: SmtpSink, count: int) -> list[str]:
    async with asyncio.timeout(10):
        while len(sink.to(OWNER)) < count:
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # and no more than that
    return [r.message["Subject"] for r in sink.to(OWNER)]


async def test_one_mail_per_outage_and_one_when_back(
    world: tuple[Accounts, Clock, Housekeeping, str], sink: SmtpSink
) -> None:
    accounts, clock, keeper, home = world
    owner = await accounts.users.by_email(OWNER)
    assert owner is not None
    await accounts.offline_alerts.choose(owner.id, home, 15)
    await accounts.mark_connected(home)
    clock.advance(minutes=1)

    # A short drop (an update, a restart) sends nothing.
    await accounts.mark_disconnected(home)
    clock.advance(minutes=14)
    assert await keeper.alert() == 0
    clock.advance(seconds=30)
    await accounts.mark_connected(home)
    clock.advance(minutes=30)
    assert await keeper.alert() == 0

    # A long one: one mail, however often housekeeping looks.
    await accounts.mark_disconnected(home)
    clock.advance(minutes=16)
    assert await keeper.alert() == 1
    for _ in range(3):
        clock.advance(minutes=10)
        assert await keeper.alert() == 0
    assert await _mails(sink, 1) == ["Your home Cabin is offline"]
    offline = sink.to(OWNER)[0].text
    assert "https://homeport.example/instances/" + home in offline

    # Back: one mail, then quiet again.
    await accounts.mark_connected(home)
    assert await keeper.alert() == 1
    assert await keeper.alert() == 0
    assert await _mails(sink, 2) == ["Your home Cabin is offline", "Your home Cabin is back online"]

    # A flapping home: drops shorter than the chosen time never mail.
    for _ in range(5):
        await accounts.mark_disconnected(home)
        clock.advance(minutes=5)
        assert await keeper.alert() == 0
        await accounts.mark_connected(home)
        clock.advance(minutes=1)
        assert await keeper.alert() == 0
    assert len(sink.to(OWNER)) == 2


async def test_alerts_off_and_only_for_the_owner(
    world: tuple[Accounts, Clock, Housekeeping, str],
) -> None:
    accounts, clock, keeper, home = world
    other = await accounts.create_user("other@example.com", PASSWORD)
    with pytest.raises(UnknownInstance):
        await accounts.offline_alerts.choose(other.id, home, 15)
    owner = await accounts.users.by_email(OWNER)
    assert owner is not None
    with pytest.raises(ValueError, match="offered times"):
        await accounts.offline_alerts.choose(owner.id, home, 1)
    await accounts.offline_alerts.choose(owner.id, home, 5)
    await accounts.offline_alerts.choose(owner.id, home, None)
    assert await accounts.offline_alerts.after(home) is None
    await accounts.mark_disconnected(home)
    clock.advance(hours=5)
    assert await keeper.alert() == 0  # not asked for: no mail


async def test_unlinking_removes_the_alert(
    world: tuple[Accounts, Clock, Housekeeping, str],
) -> None:
    accounts, _clock, _keeper, home = world
    owner = await accounts.users.by_email(OWNER)
    assert owner is not None
    await accounts.offline_alerts.choose(owner.id, home, 60)
    assert await accounts.instances.unlink(home)
    assert await accounts.offline_alerts.after(home) is None
