"""The relay's side of integrations (relay/integrations.py): cached switches, rate, audit.

Real accounts store on SQLite; the clock of the call bucket is the real one,
so the rate is set low enough that no token comes back during a test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from homeport.accounts import Accounts, Database, User, default_sqlite_url
from homeport.accounts.integrations import CALL_EVENT, Switches
from homeport.cli import build_parser, relay_config
from homeport.keys import public_key_text
from homeport.relay import integrations as integrations_module
from homeport.relay.config import RelayConfig
from homeport.relay.integration_paths import IntegrationPath
from homeport.relay.integrations import IntegrationGate


@pytest_asyncio.fixture
async def accounts(tmp_path: Path) -> AsyncIterator[Accounts]:
    db = Database(default_sqlite_url(tmp_path))
    await db.migrate()
    await db.connect()
    try:
        yield Accounts(db)
    finally:
        await db.close()


@pytest_asyncio.fixture
async def home(accounts: Accounts) -> tuple[User, str]:
    owner = await accounts.create_user("owner@example.com", "correct horse battery staple 42")
    key = public_key_text(Ed25519PrivateKey.generate().public_key())
    code, _ = await accounts.create_link_code(key)
    return owner, (await accounts.link_instance(code, owner.email)).id


def gate_for(accounts: Accounts, tmp_path: Path, **options: object) -> IntegrationGate:
    config = RelayConfig(data_dir=tmp_path, **options)  # type: ignore[arg-type]
    return IntegrationGate(config, accounts.integrations)


async def test_switches_are_cached_until_forgotten(
    accounts: Accounts, home: tuple[User, str], tmp_path: Path
) -> None:
    owner, instance = home
    gate = gate_for(accounts, tmp_path)
    assert gate.cached(instance) is None
    assert await gate.switches(instance) == Switches()
    assert gate.cached(instance) == Switches()
    await accounts.integrations.set(owner.id, instance, Switches(webhooks=True))
    assert await gate.switches(instance) == Switches()  # cached: a few seconds at most
    gate.forget(instance)
    assert gate.cached(instance) is None
    assert await gate.switches(instance) == Switches(webhooks=True)
    assert gate.allows(Switches(webhooks=True), IntegrationPath.WEBHOOK)
    assert not gate.allows(Switches(webhooks=True), IntegrationPath.TOKEN)
    assert gate.allows(Switches(voice=True), IntegrationPath.GOOGLE_ASSISTANT)


async def test_the_call_rate_is_per_home(tmp_path: Path, accounts: Accounts) -> None:
    gate = gate_for(accounts, tmp_path, integration_rate=0.001, integration_burst=3)
    assert [gate.take_call("home-a") for _ in range(5)] == [True, True, True, False, False]
    assert gate.take_call("home-b")  # another home's bucket is its own
    gate.forget("home-a")  # the owner changed the switches: a fresh bucket
    assert gate.take_call("home-a")


async def test_no_rate_means_no_limit(tmp_path: Path, accounts: Accounts) -> None:
    gate = gate_for(accounts, tmp_path, integration_rate=0.0)
    assert all(gate.take_call("home") for _ in range(1000))


async def test_calls_are_audited_once_per_kind_and_address_per_minute(
    accounts: Accounts, home: tuple[User, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _owner, instance = home
    gate = gate_for(accounts, tmp_path)
    for _ in range(5):
        gate.audit(instance, IntegrationPath.WEBHOOK, "198.51.100.1")
    gate.audit(instance, IntegrationPath.WEBHOOK, "198.51.100.2")
    gate.audit(instance, IntegrationPath.TOKEN, "198.51.100.1")
    await gate.drain()
    events = [e for e in await accounts.audit.for_instance(instance) if e.kind == CALL_EVENT]
    assert sorted((e.detail, e.ip) for e in events) == [
        ("auth_token", "198.51.100.1"),
        ("webhook", "198.51.100.1"),
        ("webhook", "198.51.100.2"),
    ]
    # A minute later the same caller is recorded again.
    monkeypatch.setattr(integrations_module, "AUDIT_COALESCE", 0.0)
    gate.audit(instance, IntegrationPath.WEBHOOK, "198.51.100.1")
    await gate.drain()
    events = [e for e in await accounts.audit.for_instance(instance) if e.kind == CALL_EVENT]
    assert len(events) == 4


async def test_the_audit_backlog_is_bounded(
    accounts: Accounts, home: tuple[User, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _owner, instance = home
    gate = gate_for(accounts, tmp_path)
    for n in range(integrations_module.AUDIT_BACKLOG + 10):
        gate.audit(instance, IntegrationPath.WEBHOOK, f"198.51.100.{n}")
    assert len(gate._audit_tasks) == integrations_module.AUDIT_BACKLOG
    await gate.drain()
    events = [e for e in await accounts.audit.for_instance(instance) if e.kind == CALL_EVENT]
    assert len(events) == integrations_module.AUDIT_BACKLOG
    assert "integration.audit_dropped" in caplog.text


def test_the_limits_come_from_flags_environment_and_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["relay", "--data-dir", str(tmp_path)]
    config = relay_config(build_parser().parse_args(base))
    assert (config.integration_rate, config.integration_burst) == (2.0, 60)
    assert (config.integration_max_requests, config.integration_max_body) == (16, 1024 * 1024)
    monkeypatch.setenv("HOMEPORT_INTEGRATION_RATE", "0.5")
    args = [*base, "--integration-burst", "5", "--integration-max-body", "64K"]
    config = relay_config(build_parser().parse_args(args))
    assert (config.integration_rate, config.integration_burst) == (0.5, 5)
    assert config.integration_max_body == 64 * 1024
    for flag, value in (("--integration-rate", "fast"), ("--integration-rate", "-1")):
        with pytest.raises(SystemExit, match="--integration-rate"):
            relay_config(build_parser().parse_args([*base, flag, value]))
    with pytest.raises(SystemExit, match="--integration-max-requests"):
        relay_config(build_parser().parse_args([*base, "--integration-max-requests", "lots"]))
