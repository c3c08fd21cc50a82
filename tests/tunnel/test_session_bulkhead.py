"""One exchange's fate never reaches the tunnel (R-MT-15).

A waiter that gives up (a browser that closes its tab during a WebSocket
upgrade, a timeout) must release its stream, and a later event for that
stream must not end the tunnel for everybody else using the home.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from session_pair import session_pair

from homeport.protocol import ErrorCode, Event, RequestHead, ResponseHead
from homeport.tunnel.session import TunnelSession
from homeport.tunnel.stream import Stream, StreamClosed


async def test_an_abandoned_upgrade_answered_later_leaves_the_tunnel_up() -> None:
    answer = asyncio.Event()

    async def handler(stream: Stream) -> None:
        await answer.wait()
        stream.respond(ResponseHead(101))
        await stream.receive_ws()

    async with asyncio.timeout(20), session_pair(on_stream=handler) as pair:
        stream = pair.relay.open_stream(
            RequestHead("GET", "/api/websocket"), websocket=True, end_stream=False
        )
        waiter = asyncio.create_task(stream.response_head())
        await asyncio.sleep(0.05)
        waiter.cancel()  # the browser closed the tab
        await asyncio.sleep(0.05)
        answer.set()  # Home Assistant answers after all
        await asyncio.sleep(0.2)
        assert not pair.relay.ended
        assert not pair.relay.closed.is_set()
        # Another exchange still works.
        other = pair.relay.open_stream(
            RequestHead("GET", "/api/websocket"), websocket=True, end_stream=False
        )
        assert (await other.response_head()).status == 101


async def _read_all(stream: Stream) -> bytes:
    await stream.response_head()
    return b"".join([chunk async for chunk in stream.iter_body()])


async def _settled(*sessions: TunnelSession) -> None:
    """Both sides forget every stream (bounded wait)."""
    async with asyncio.timeout(10):
        while any(s.streams or s.connection.open_streams for s in sessions):
            await asyncio.sleep(0.01)


async def test_a_waiter_that_times_out_releases_its_stream_on_both_sides() -> None:
    async def handler(stream: Stream) -> None:
        await asyncio.sleep(0.3)  # Home Assistant is slow
        stream.respond(ResponseHead(200))
        await stream.write(b"late", end=True)

    async with asyncio.timeout(20), session_pair(on_stream=handler) as pair:
        for _ in range(3):
            with (
                pair.relay.open_stream(
                    RequestHead("GET", "/slow"), websocket=False, end_stream=True
                ) as stream,
                contextlib.suppress(TimeoutError),
            ):
                async with asyncio.timeout(0.05):
                    await stream.response_head()
        await _settled(pair.relay, pair.addon)
        assert not pair.relay.ended
        assert not pair.addon.ended


async def test_a_failing_stream_event_resets_only_that_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bulkhead: a bug while filing one stream's event is that stream's problem only."""

    async def handler(stream: Stream) -> None:
        stream.respond(ResponseHead(200))
        await stream.write(b"hello", end=True)

    async with asyncio.timeout(20), session_pair(on_stream=handler) as pair:
        doomed = pair.relay.open_stream(RequestHead("GET", "/a"), websocket=False, end_stream=True)

        def broken(event: Event) -> None:
            raise KeyError("a bug")

        doomed.received = broken  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="homeport.tunnel.session"), doomed:
            with pytest.raises(StreamClosed) as failure:
                await doomed.response_head()
            assert failure.value.code is ErrorCode.INTERNAL
        assert "tunnel.event_failed" in [r.message for r in caplog.records]
        with pair.relay.open_stream(
            RequestHead("GET", "/b"), websocket=False, end_stream=True
        ) as fine:
            assert (await fine.response_head()).status == 200
            assert [chunk async for chunk in fine.iter_body()] == [b"hello"]
        await _settled(pair.relay, pair.addon)
        assert not pair.relay.ended


async def test_a_handler_that_returns_early_releases_its_stream() -> None:
    async def handler(stream: Stream) -> None:
        stream.respond(ResponseHead(200))
        await stream.write(b"half")
        # ... and returns without ending the body (a bug, or a cancelled handler).

    async with asyncio.timeout(20), session_pair(on_stream=handler) as pair:
        with pair.relay.open_stream(
            RequestHead("GET", "/"), websocket=False, end_stream=True
        ) as stream:
            # A reset overtakes what was queued: the head may or may not make it first.
            with pytest.raises(StreamClosed) as failure:
                await _read_all(stream)
            assert failure.value.code is ErrorCode.CANCEL
        await _settled(pair.relay, pair.addon)


async def test_an_answer_to_an_unread_upload_arrives_whole() -> None:
    """Home Assistant answers before reading the body: the answer is not cut short."""
    body = bytes(range(256)) * 8192  # 2 MiB, more than the writer's high-water mark

    async def handler(stream: Stream) -> None:
        stream.respond(ResponseHead(200))
        await stream.write(body, end=True)

    async with asyncio.timeout(30), session_pair(on_stream=handler) as pair:
        with pair.relay.open_stream(
            RequestHead("POST", "/upload"), websocket=False, end_stream=False
        ) as stream:
            await stream.write(b"x" * 1000)
            assert (await stream.response_head()).status == 200
            got = b"".join([chunk async for chunk in stream.iter_body()])
        assert got == body
        await _settled(pair.relay, pair.addon)
