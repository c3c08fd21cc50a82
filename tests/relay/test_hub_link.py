"""An add-on waiting for its link code: woken at once by a link made in the relay's process,
found by the database poll when another process made it, and forgotten when it leaves."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ports import listening_socket
from sqlalchemy.exc import OperationalError
from stack import PASSWORD, make_addon

from homeport.accounts import Accounts, Database
from homeport.addon.client import AddonClient, AddonStatus, State
from homeport.relay.app import Relay
from homeport.relay.config import RelayConfig

EMAIL = "owner@example.com"


@contextlib.asynccontextmanager
async def waiting_addon(
    tmp_path: Path, *, link_poll_seconds: float
) -> AsyncIterator[tuple[Relay, AddonClient]]:
    """A relay and an add-on that holds a link code, not yet linked."""
    sock = listening_socket()
    config = RelayConfig(
        data_dir=tmp_path / "relay",
        listen_port=sock.getsockname()[1],
        link_poll_seconds=link_poll_seconds,
    )
    relay = Relay(config)
    await relay.start(sock=sock)
    statuses: list[AddonStatus] = []
    addon = make_addon(config, relay, "http://127.0.0.1:9", tmp_path / "addon", statuses)
    try:
        await relay.accounts.create_user(EMAIL, PASSWORD)
        async with addon:
            task = asyncio.create_task(addon.run_forever())
            try:
                async with asyncio.timeout(20):
                    while addon.status.link_code is None:
                        await asyncio.sleep(0.01)
                yield relay, addon
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await relay.stop()


async def connected_within(relay: Relay, addon: AddonClient, seconds: float) -> float:
    """Seconds until the add-on's tunnel is up; AssertionError after ``seconds``."""
    began = time.monotonic()
    try:
        async with asyncio.timeout(seconds):
            while not (
                addon.status.state is State.CONNECTED
                and addon.status.instance_id is not None
                and relay.hub.tunnel_for(addon.status.instance_id) is not None
            ):
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"the add-on was not connected within {seconds} s") from None
    return time.monotonic() - began


async def test_a_link_made_in_the_relay_wakes_the_waiting_addon_at_once(tmp_path: Path) -> None:
    # The poll alone would take a minute: only the in-process wake-up can be this quick.
    async with waiting_addon(tmp_path, link_poll_seconds=60) as (relay, addon):
        assert addon.status.link_code is not None
        await relay.accounts.link_instance(addon.status.link_code, EMAIL)
        took = await connected_within(relay, addon, 10)
        print(f"connected {took:.2f} s after the link")


async def test_a_link_made_by_another_process_is_found_by_the_poll(tmp_path: Path) -> None:
    async with waiting_addon(tmp_path, link_poll_seconds=0.2) as (relay, addon):
        assert addon.status.link_code is not None
        # Another process (``homeport admin link``): its own Accounts over the same
        # database, so the relay hears nothing and must find the link itself.
        other = Database(relay.database.url)
        await other.connect()
        try:
            await Accounts(other).link_instance(addon.status.link_code, EMAIL)
        finally:
            await other.close()
        await connected_within(relay, addon, 10)


async def test_an_addon_that_leaves_while_waiting_is_forgotten(tmp_path: Path) -> None:
    async with waiting_addon(tmp_path, link_poll_seconds=60) as (relay, addon):
        assert relay.hub._link_waiters, "the hub holds no waiting connection"
        await addon.__aexit__(None, None, None)  # the add-on goes away mid-wait
        async with asyncio.timeout(10):
            while relay.hub._link_waiters:
                await asyncio.sleep(0.01)


async def test_a_database_outage_while_waiting_keeps_the_code_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: the first failed poll sent the add-on away with 1013 and it came back
    # with a new code, while the person was typing the old one.
    async with waiting_addon(tmp_path, link_poll_seconds=0.05) as (relay, addon):
        code = addon.status.link_code
        assert code is not None
        monkeypatch.setattr(relay.accounts.instances, "for_key", _database_locked)
        with caplog.at_level(logging.WARNING, logger="homeport.relay.hub"):
            await asyncio.sleep(1.0)  # about 20 polls, every one failing
        assert addon.status.link_code == code
        assert "1013" not in (addon.status.last_error or "")
        assert relay.hub._link_waiters, "the waiting add-on was sent away"
        failures = [r for r in caplog.records if r.message == "hub.link_poll_failed"]
        assert len(failures) == 1, "one warning per outage, not one per poll"
        monkeypatch.undo()  # the database is back: the code still links
        other = Database(relay.database.url)
        await other.connect()
        try:
            await Accounts(other).link_instance(code, EMAIL)
        finally:
            await other.close()
        await connected_within(relay, addon, 10)


def _database_locked(*_args: Any, **_kwargs: Any) -> Any:
    raise OperationalError("SELECT instances", {}, Exception("database is locked"))
