"""The relay's answers to an add-on's owner actions, on a real database and a real SMTP sink."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from smtp_sink import SmtpSink

from homeport.accounts import Accounts, Database, default_sqlite_url
from homeport.accounts.audit import EventType
from homeport.accounts.sharing import MAX_APP_LINKS
from homeport.mail.mailer import Outbox, SmtpMailer
from homeport.mail.messages import MailWriter
from homeport.mail.settings import SmtpSettings
from homeport.relay.addon_control import ADDON_APP_LINKS, AddonControl
from homeport.relay.config import RelayConfig

PASSWORD = "correct horse battery staple"
OWNER = "owner@example.com"
PEER = "203.0.113.7"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Home:
    accounts: Accounts
    clock: Clock
    config: RelayConfig
    control: AddonControl
    instance_id: str
    owner_id: int


def addon_key(n: int) -> str:
    return "ed25519:" + base64.urlsafe_b64encode(n.to_bytes(32, "big")).decode().rstrip("=")


@pytest_asyncio.fixture
async def home(tmp_path: Path) -> AsyncIterator[Home]:
    database = Database(default_sqlite_url(tmp_path))
    await database.migrate()
    await database.connect()
    clock = Clock()
    accounts = Accounts(database, now=clock)
    owner = await accounts.create_user(OWNER, PASSWORD)
    code, _ = await accounts.create_link_code(addon_key(1))
    instance = await accounts.link_instance(code, OWNER, "Beach house")
    config = RelayConfig(data_dir=tmp_path / "relay")
    try:
        yield Home(accounts, clock, config, AddonControl(config, accounts), instance.id, owner.id)
    finally:
        await database.close()


async def create(home: Home, name: object = "Anna's phone") -> dict[str, object]:
    handler = home.control.handler_for(home.instance_id, PEER)
    return await handler({"op": "create_app_link", "name": name})


async def test_creates_a_working_link_for_the_owner_and_audits_it(
    home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        reply = await create(home)
    url = reply["url"]
    assert isinstance(url, str)
    assert reply["name"] == "Anna's phone"
    assert reply["manage_url"] == f"{home.config.account_origin}/instances/{home.instance_id}"
    label = url.removeprefix("https://").split(".", 1)[0]
    access = await home.accounts.sharing.resolve_app_link(label)
    assert access is not None
    assert access.instance_id == home.instance_id
    (link,) = await home.accounts.sharing.app_links(home.instance_id)
    assert link.created_by == home.owner_id
    events = await home.accounts.audit.export(home.owner_id)
    created = [e for e in events if e.kind == EventType.APP_LINK_CREATED]
    assert len(created) == 1
    assert created[0].detail == f"app link {link.id}, from the add-on panel"
    assert created[0].instance_id == home.instance_id
    assert created[0].ip == PEER
    assert created[0].device == "Homeport add-on panel"
    # The label is a credential: never in a log line.
    logged = caplog.text + " ".join(str(vars(r)) for r in caplog.records)
    assert label not in logged


async def test_unknown_op_and_bad_names_are_refused_without_creating(home: Home) -> None:
    handler = home.control.handler_for(home.instance_id, PEER)
    assert (await handler({"op": "delete_everything"}))["error"] == "unknown_op"
    assert (await handler({}))["error"] == "unknown_op"
    for name in (None, 42, "", "   ", "x" * 65, "bad\x00name"):
        reply = await create(home, name)
        assert reply["error"] == "invalid", name
        assert reply["message"]
    assert await home.accounts.sharing.app_links(home.instance_id) == []
    # Bad names do not use up the hour's budget.
    for i in range(ADDON_APP_LINKS.limit):
        assert "url" in await create(home, f"phone {i}")


async def test_rate_limit_per_home_and_hour(home: Home) -> None:
    for i in range(ADDON_APP_LINKS.limit):
        assert "url" in await create(home, f"phone {i}")
    refused = await create(home, "one too many")
    assert refused["error"] == "too_many"
    assert "minute" in str(refused["message"])
    assert len(await home.accounts.sharing.app_links(home.instance_id)) == ADDON_APP_LINKS.limit
    home.clock.now += timedelta(hours=1, seconds=1)
    assert "url" in await create(home, "next hour")


async def test_the_per_home_cap_gives_its_message(home: Home) -> None:
    for i in range(MAX_APP_LINKS):
        await home.accounts.sharing.create_app_link(home.owner_id, home.instance_id, f"d{i}")
    reply = await create(home)
    assert reply["error"] == "limit"
    assert str(MAX_APP_LINKS) in str(reply["message"])


async def test_unlinked_home_and_disabled_owner_are_refused(home: Home) -> None:
    await home.accounts.set_user_disabled(home.owner_id, True)
    assert (await create(home))["error"] == "owner_disabled"
    await home.accounts.set_user_disabled(home.owner_id, False)
    await home.accounts.sharing.unlink(home.owner_id, home.instance_id)
    assert (await create(home))["error"] == "unlinked"
    body = {"op": "create_app_link", "name": "phone"}
    assert (await home.control.handle("no-such-home", PEER, body))["error"] == "unlinked"
    assert await home.accounts.sharing.app_links(home.instance_id) == []


async def test_the_owner_is_mailed_without_the_link(home: Home) -> None:
    with SmtpSink() as sink:
        settings = SmtpSettings.build(
            host="127.0.0.1", port=sink.port, security="none", mail_from="relay@example.com"
        )
        outbox = Outbox(SmtpMailer(settings))
        control = AddonControl(
            home.config,
            home.accounts,
            outbox=outbox,
            writer=MailWriter(home.config.account_origin),
        )
        reply = await control.handle(
            home.instance_id, PEER, {"op": "create_app_link", "name": "Kitchen tablet"}
        )
        mail = await sink.wait_for(OWNER)
        await outbox.drain()
    assert mail.message["Subject"] == 'New app link "Kitchen tablet" for your home on Homeport'
    assert "Beach house" in mail.text
    assert "add-on" in mail.text
    assert str(reply["manage_url"]) in mail.text
    assert str(reply["url"]) not in mail.text  # shown once, in the panel only
    assert PEER in mail.text
