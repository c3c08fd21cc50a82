"""A tunnel session whose own task fails: it ends, and says why."""

from __future__ import annotations

import asyncio
import logging

import pytest
from session_pair import session_pair


async def test_a_session_task_that_dies_of_a_bug_ends_the_tunnel_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in the writer must not look like the peer hanging up: it is logged, with
    the task's name, and it becomes the close reason the owner sees."""
    async with session_pair() as pair:

        def broken(limit: int = 0) -> bytes:
            raise KeyError("a bug")

        pair.relay.connection.data_to_send = broken  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="homeport.tunnel.session"):
            pair.relay.kick()
            async with asyncio.timeout(10):
                await pair.relay.closed.wait()
                await pair.addon.closed.wait()
    assert pair.relay.close_reason == "internal error in pair-relay-writer"
    assert [r.message for r in caplog.records] == ["tunnel.task_failed"]
    assert pair.addon.close_reason == "peer closed the tunnel"
