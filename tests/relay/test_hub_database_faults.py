"""A database that fails under the hub never leaves a tunnel half-made (found by bench/idle.py).

Before the fix, a failed connect-time write left the tunnel registered but never
served (the add-on believed it was up; its home answered nothing until a keepalive
timeout), and a failed key lookup left the add-on's connection open and silent
until its handshake timed out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from stack import Stack, start_stack

from homeport.addon.client import State


def locked(*_args: Any, **_kwargs: Any) -> Any:
    raise OperationalError("UPDATE instances", {}, Exception("database is locked"))


async def reconnect(stack: Stack) -> None:
    """The relay drops the tunnel; the add-on dials again at once (short back-off)."""
    stack.addon.config = dataclasses.replace(stack.addon.config, backoff_base=0.05, backoff_cap=0.2)
    assert await stack.relay.hub.close_instance(stack.instance_id, "test")


async def browse(stack: Stack) -> int:
    async with stack.browser() as browser:
        async with asyncio.timeout(20):
            page = await browser.sign_in("/")
        return page.status


async def test_a_failing_presence_write_never_keeps_a_tunnel_from_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with start_stack(tmp_path) as stack:
        instances = stack.relay.accounts.instances
        monkeypatch.setattr(instances, "record_presence", locked, raising=False)
        monkeypatch.setattr(instances, "mark_connected", locked)
        await reconnect(stack)
        await stack.wait_connected(recorded=False)  # it cannot be: the database fails
        assert await browse(stack) == 200  # the home answers while the write fails
        presence = stack.relay.hub.presence
        async with asyncio.timeout(10):
            while not presence._failures:
                await asyncio.sleep(0.02)
        assert presence.pending >= 1  # kept for the next try, not dropped
        monkeypatch.undo()  # the database is back: the retry lands
        async with asyncio.timeout(15):
            while presence.pending:
                await asyncio.sleep(0.05)
        (row,) = await stack.relay.accounts.list_instances()
        assert row.connected


async def test_a_failing_key_lookup_sends_the_addon_away_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with start_stack(tmp_path) as stack:
        monkeypatch.setattr(stack.relay.accounts.instances, "for_key", locked)
        began = time.monotonic()
        await reconnect(stack)
        async with asyncio.timeout(8):  # the add-on's handshake timeout is 15 s
            while "1013" not in (stack.addon.status.last_error or ""):
                await asyncio.sleep(0.02)
        print(f"told to try again after {time.monotonic() - began:.2f} s")
        assert stack.relay.hub.tunnel_for(stack.instance_id) is None
        hub = stack.relay.hub
        async with asyncio.timeout(5):  # nothing held open on the relay for it
            while hub._raw_tasks:
                await asyncio.sleep(0.02)
        monkeypatch.undo()
        await stack.wait_connected()
        assert stack.addon.status.state is State.CONNECTED
        assert await browse(stack) == 200
