"""Control requests over two real sessions: answers, timeouts, bounds, and a dropped tunnel."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from session_pair import SessionPair, session_pair

from homeport.protocol.connection import MAX_PENDING_CONTROL, Settings
from homeport.tunnel.control import ControlFailed

ANSWERING = Settings(accept_control=True)


async def supported(pair: SessionPair) -> bool:
    """Whether the add-on side learned that the relay answers (after its SETTINGS)."""
    async with asyncio.timeout(10):
        while not pair.addon.connection._settings_received:
            await asyncio.sleep(0.01)
    return pair.addon.control.supported


async def test_a_request_gets_the_handlers_answer() -> None:
    seen: list[dict[str, Any]] = []

    async def handler(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body)
        return {"echo": body["name"]}

    async with session_pair(on_control=handler, relay_settings=ANSWERING) as pair:
        assert await supported(pair)
        replies = await asyncio.gather(
            *(pair.addon.control.request({"name": f"n{i}"}, timeout=10) for i in range(3))
        )
        assert replies == [{"echo": "n0"}, {"echo": "n1"}, {"echo": "n2"}]
        assert len(seen) == 3


async def test_a_failing_handler_answers_internal_and_the_tunnel_stays() -> None:
    async def handler(body: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("boom")

    async with session_pair(on_control=handler, relay_settings=ANSWERING) as pair:
        assert await supported(pair)
        reply = await pair.addon.control.request({"op": "x"}, timeout=10)
        assert reply["error"] == "internal"
        assert "boom" not in reply["message"]  # no internals reach the add-on
        assert not pair.relay.ended
        assert not pair.addon.ended


async def test_a_relay_without_the_capability_is_never_sent_a_request() -> None:
    async with session_pair() as pair:
        assert not await supported(pair)
        with pytest.raises(ControlFailed, match="does not accept control"):
            await pair.addon.control.request({"op": "x"}, timeout=10)
        await asyncio.sleep(0.2)
        assert not pair.relay.ended
        assert not pair.addon.ended


async def test_no_answer_times_out_and_pending_requests_are_bounded() -> None:
    release = asyncio.Event()

    async def handler(body: dict[str, Any]) -> dict[str, Any]:
        await release.wait()
        return {}

    async with session_pair(on_control=handler, relay_settings=ANSWERING) as pair:
        assert await supported(pair)
        with pytest.raises(ControlFailed, match="did not answer in time"):
            await pair.addon.control.request({"op": "slow"}, timeout=0.3)
        waiting = [
            asyncio.create_task(pair.addon.control.request({"op": str(i)}, timeout=30))
            for i in range(MAX_PENDING_CONTROL - 1)
        ]
        # The timed-out request still counts in the protocol until its late reply.
        await asyncio.sleep(0.1)
        with pytest.raises(ControlFailed):
            await pair.addon.control.request({"op": "one too many"}, timeout=30)
        release.set()
        assert await asyncio.wait_for(asyncio.gather(*waiting), 15) == [{}] * len(waiting)
        # The late reply to the timed-out request is dropped quietly, and room is back.
        async with asyncio.timeout(10):
            while pair.addon.connection.control_requests_pending:
                await asyncio.sleep(0.01)
        assert await pair.addon.control.request({"op": "again"}, timeout=10) == {}


async def test_a_dropped_tunnel_fails_the_waiter_at_once() -> None:
    started = asyncio.Event()

    async def handler(body: dict[str, Any]) -> dict[str, Any]:
        started.set()
        await asyncio.sleep(60)
        return {}

    grace = 0.5
    async with session_pair(
        on_control=handler, relay_settings=ANSWERING, control_grace=grace
    ) as pair:
        assert await supported(pair)
        waiter = asyncio.create_task(pair.addon.control.request({"op": "x"}, timeout=60))
        await asyncio.wait_for(started.wait(), 10)
        began = time.monotonic()
        await pair.relay.close("relay went away")
        with pytest.raises(ControlFailed, match="tunnel closed"):
            await asyncio.wait_for(waiter, 15)
        with pytest.raises(ControlFailed, match="closed"):
            await pair.addon.control.request({"op": "after"}, timeout=10)
        # The stuck handler had its grace to finish, then was cancelled.
        await asyncio.wait_for(pair.relay.closed.wait(), 15)
        assert grace <= time.monotonic() - began < grace + 5
