"""Slow, vanished and greedy browsers: each one hurts only itself.

* A browser that stops reading a huge download holds at most its stream's
  credit window in the relay, and the other streams of the same tunnel
  (small requests, a WebSocket) stay fast; when it reads again, every byte
  arrives intact.
* A browser that vanishes mid-transfer gets its stream reset; the add-on lets
  go of the upstream request (the backend sees the disconnect) and the
  tunnel carries on.
* A browser that opens more concurrent requests than a tunnel's stream
  limit gets quick 503s for the excess, and another home on the same relay
  keeps answering fast throughout.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from observed import Witness, start_observed_standin
from rawhttp import connect, read_head, tls_context
from stack import Browser, Stack
from tenants import extra_tenant

from homeport.addon.client import LocalhostResolver
from homeport.protocol.connection import Settings
from homeport.relay.tenant import SESSION_COOKIE
from homeport.standin import CHUNK, pattern_chunk
from homeport.tunnel.session import STALL_CHECK, STALL_GRACE, TunnelSession
from homeport.tunnel.stream import Stream

BIG = 200 * 1024 * 1024
STREAM_WINDOW = Settings().initial_stream_window
#: Room for one frame in flight and the scheduler's chunking on top of a full window.
MARGIN = 128 * 1024
QUICK = 2.0  # seconds: what "still fast" means for a small request or a WebSocket echo


@dataclass
class Home:
    stack: Stack
    witness: Witness
    browser: Browser
    token: str

    @property
    def authority(self) -> str:
        return self.stack.tenant_origin.removeprefix("https://")

    @property
    def tunnel(self) -> TunnelSession:
        session = self.stack.relay.hub.tunnel_for(self.stack.instance_id)
        assert session is not None
        return session

    def request_bytes(self, method: str, target: str, extra: str = "") -> bytes:
        return (
            f"{method} {target} HTTP/1.1\r\nHost: {self.authority}\r\n"
            f"Cookie: {SESSION_COOKIE}={self.token}\r\n{extra}\r\n"
        ).encode()

    async def open_raw(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sni = self.authority.rsplit(":", 1)[0]
        return await connect(self.stack.config.listen_port, sni, self.stack.ca_path)


@pytest.fixture
async def observed() -> AsyncIterator[tuple[str, Witness]]:
    """The stand-in for Home Assistant that records what reaches it: (URL, witness)."""
    runner, url, witness = await start_observed_standin()
    try:
        yield url, witness
    finally:
        await runner.cleanup()


@pytest.fixture
def stack_options(observed: tuple[str, Witness]) -> dict[str, Any]:
    return {"ha_url": observed[0]}


@pytest.fixture
async def home(stack: Stack, observed: tuple[str, Witness]) -> AsyncIterator[Home]:
    async with stack.browser() as browser:
        await browser.sign_in("/")
        jar = {c.key: c.value for c in browser.session.cookie_jar}
        yield Home(stack, observed[1], browser, jar[SESSION_COOKIE])


def relay_stream(session: TunnelSession, target: str) -> Stream | None:
    return next(
        (s for s in session.streams.values() if s.request and s.request.target == target), None
    )


def held(stream: Stream) -> int:
    """Body bytes the relay holds for a stream: received from the home and not yet
    taken by the browser (their credit is held back until it reads)."""
    return stream.held


async def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


async def small_requests(browser: Browser, origin: str, count: int) -> list[float]:
    """``count`` concurrent small GETs; each one's duration in seconds."""

    async def one(i: int) -> float:
        started = time.monotonic()
        async with browser.request("GET", f"{origin}/echo?n={i}") as r:
            assert r.status == 200
            assert (await r.json())["path_qs"] == f"/echo?n={i}"
        return time.monotonic() - started

    async with asyncio.timeout(30):
        return list(await asyncio.gather(*(one(i) for i in range(count))))


async def one_by_one(browser: Browser, origin: str, count: int) -> list[float]:
    """``count`` small GETs in a row on the browser's open connection, as a person's tab would."""
    times = []
    async with asyncio.timeout(30):
        for i in range(count):
            started = time.monotonic()
            async with browser.request("GET", f"{origin}/echo?seq={i}") as r:
                assert r.status == 200
                await r.read()
            times.append(time.monotonic() - started)
    return times


async def websocket_echoes(browser: Browser, origin: str, count: int) -> list[float]:
    ws_url = origin.replace("https://", "wss://") + "/ws/echo"
    times = []
    async with asyncio.timeout(30):
        async with browser.session.ws_connect(ws_url, origin=origin) as ws:
            for i in range(count):
                started = time.monotonic()
                await ws.send_str(f"ping {i}")
                assert await ws.receive_str() == f"ping {i}"
                times.append(time.monotonic() - started)
    return times


async def sample_open_streams(session: TunnelSession, into: list[int]) -> None:
    while True:
        into.append(session.connection.open_streams)
        await asyncio.sleep(0.01)


def summary(name: str, times: list[float]) -> str:
    return (
        f"{name}: n={len(times)} median={statistics.median(times) * 1000:.1f} ms "
        f"max={max(times) * 1000:.1f} ms"
    )


# ------------------------------------------------------------------ slow reader


async def start_stalled_download(
    home: Home, target: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Stream, hashlib._Hash, int]:
    """Open ``target``, read its head and the first MiB, then stop reading; waits for the stall.

    Returns the raw connection, the relay's stream, the digest so far and bytes read.
    """
    reader, writer = await home.open_raw()
    writer.write(home.request_bytes("GET", target))
    await writer.drain()
    async with asyncio.timeout(10):
        status, _, headers = await read_head(reader)
        assert status == 200
        assert dict(headers)["content-length"] == str(BIG)
        first = await reader.readexactly(1024 * 1024)
    digest = hashlib.sha256(first)
    stream = relay_stream(home.tunnel, target)
    assert stream is not None
    # Stalled once the relay's inbox for the stream stops changing.
    last, steady_since = -1, time.monotonic()
    async with asyncio.timeout(15):
        while time.monotonic() - steady_since < 0.5:
            await asyncio.sleep(0.05)
            now = held(stream)
            if now != last:
                last, steady_since = now, time.monotonic()
    return reader, writer, stream, digest, len(first)


async def test_slow_reader_does_not_stall_its_tunnel(
    home: Home, record_property: Callable[[str, object], None]
) -> None:
    target = f"/bytes/{BIG}"
    reader, writer, stream, digest, got = await start_stalled_download(home, target)
    try:
        stalled_at = held(stream)
        assert stalled_at <= STREAM_WINDOW + MARGIN, f"relay holds {stalled_at} bytes"
        assert home.tunnel.connection.buffered(stream.id) == 0  # nothing queued towards the home

        origin = home.stack.tenant_origin
        http_times = await small_requests(home.browser, origin, 50)
        ws_times = await websocket_echoes(home.browser, origin, 20)
        for name, times in (("http", http_times), ("ws", ws_times)):
            record_property(f"{name}_times_ms", [round(t * 1000, 1) for t in times])
            print(summary(name, times))
        assert max(http_times) < QUICK, summary("http", http_times)
        assert max(ws_times) < QUICK, summary("ws", ws_times)

        # Still stalled, still bounded, after all that traffic went past it.
        assert relay_stream(home.tunnel, target) is stream
        assert held(stream) <= STREAM_WINDOW + MARGIN
        print(f"relay holds {held(stream)} bytes for the stalled stream (window {STREAM_WINDOW})")

        # The reader wakes up: the rest arrives, byte for byte.
        block = pattern_chunk(CHUNK)
        expected = hashlib.sha256()
        for _ in range(BIG // CHUNK):
            expected.update(block)
        async with asyncio.timeout(60):
            while got < BIG:
                chunk = await reader.read(min(1024 * 1024, BIG - got))
                assert chunk, f"connection ended after {got} of {BIG} bytes"
                digest.update(chunk)
                got += len(chunk)
        assert digest.hexdigest() == expected.hexdigest()
    finally:
        writer.close()


async def test_many_slow_readers_do_not_freeze_their_tunnel(
    home: Home, record_property: Callable[[str, object], None]
) -> None:
    """More stalled downloads than the tunnel window has room for.

    Each stalled stream keeps its credit while its browser is not reading, so
    enough of them would hold the whole tunnel window and freeze every other
    stream of that home (a dashboard of paused camera streams).  The relay
    resets the longest-stalled ones once they hold half the window: the others
    wait at most the stall grace, and the unread bytes stay bounded.
    """
    window = Settings().connection_window
    count = window // STREAM_WINDOW + 2
    session = home.tunnel
    readers = []
    try:
        async with asyncio.timeout(60):
            for i in range(count):
                reader, writer = await home.open_raw()
                writer.write(home.request_bytes("GET", f"/bytes/{BIG}?reader={i}"))
                await writer.drain()
                readers.append((reader, writer))
                status, _, _ = await read_head(reader)
                assert status == 200
        stalled = [
            s for s in session.streams.values() if s.request and "reader=" in s.request.target
        ]
        assert len(stalled) == count
        # Let the stalled streams soak up the tunnel window.
        await wait_until(
            lambda: sum(s.held for s in stalled) * 2 >= window, 10, "half the window held"
        )
        await asyncio.sleep(0.5)
        started = time.monotonic()
        first = await small_requests(home.browser, home.stack.tenant_origin, 10)
        waited = time.monotonic() - started
        print(summary("http beside stalled readers", first))
        assert waited < STALL_GRACE + STALL_CHECK + QUICK, f"tunnel frozen for {waited:.1f} s"
        # The longest-stalled streams are reset until unread bytes are under half the window.
        await wait_until(
            lambda: sum(s.held for s in session.streams.values()) * 2 < window,
            STALL_GRACE + 2,
            "the stalled streams to give way",
        )
        reset = [s for s in stalled if s.error is not None]
        kept = [s for s in stalled if s.error is None]
        total = sum(s.held for s in session.streams.values())
        print(f"{len(reset)} stalled streams reset, {len(kept)} kept, {total} bytes held")
        record_property("stalled", {"reset": len(reset), "kept": len(kept), "held": total})
        assert reset, "some stalled stream had to give way"
        assert kept, "stalled readers are only reset while the tunnel needs the room"
        assert all(s.held <= STREAM_WINDOW for s in kept)
        # From now on the tunnel is fast again, with the survivors still stalled beside it.
        again = await small_requests(home.browser, home.stack.tenant_origin, 20)
        print(summary("http after the resets", again))
        assert max(again) < QUICK, summary("http", again)
        # A reset download is cut, never passed off as complete.
        victim = stalled.index(reset[0])
        reader = readers[victim][0]
        async with asyncio.timeout(30):
            received = 0
            while chunk := await reader.read(1024 * 1024):
                received += len(chunk)
        assert received < BIG
    finally:
        for _, writer in readers:
            writer.close()


# -------------------------------------------------------------- vanished peers


@pytest.mark.parametrize("when", ["reading", "stalled"])
async def test_vanished_browser_releases_the_upstream(home: Home, when: str) -> None:
    target = f"/bytes/{BIG}"
    session = home.tunnel
    if when == "stalled":
        _, writer, stream, _, _ = await start_stalled_download(home, target)
    else:
        reader, writer = await home.open_raw()
        writer.write(home.request_bytes("GET", target))
        await writer.drain()
        async with asyncio.timeout(10):
            await read_head(reader)
            await reader.readexactly(4 * 1024 * 1024)
        found = relay_stream(session, target)
        assert found is not None
        stream = found
    [seen] = home.witness.matching("/bytes/")
    assert seen.ended is None, "the backend is still sending"
    writer.transport.abort()  # gone: no TLS close, no FIN handshake to wait for

    # The relay resets the stream; the add-on drops its upstream request.
    await wait_until(lambda: stream.error is not None, 5, "the relay to reset the stream")
    await wait_until(lambda: not session.connection.has_stream(stream.id), 5, "stream cleanup")
    await home.witness.wait_for(lambda: seen.ended is not None, 10)
    assert seen.outcome in ("disconnected", "cancelled"), seen.outcome
    # The same tunnel carries on.
    assert home.tunnel is session
    assert home.stack.addon.status.connects == 1
    times = await small_requests(home.browser, home.stack.tenant_origin, 5)
    assert max(times) < QUICK
    await wait_until(lambda: session.connection.open_streams == 0, 5, "all streams closed")


async def test_vanished_uploader_releases_the_upstream(home: Home) -> None:
    size = BIG
    reader, writer = await home.open_raw()
    writer.write(home.request_bytes("PUT", "/upload", f"Content-Length: {size}\r\n"))
    block = pattern_chunk(CHUNK)
    async with asyncio.timeout(10):
        for _ in range(32):  # 8 MiB of 200
            writer.write(block)
            await writer.drain()
        await home.witness.wait_for(lambda: bool(home.witness.matching("/upload")), 5)
    [seen] = home.witness.matching("/upload")
    session = home.tunnel
    writer.transport.abort()
    reader.feed_eof()
    await home.witness.wait_for(lambda: seen.ended is not None, 10)
    assert seen.outcome in ("disconnected", "cancelled"), seen.outcome
    await wait_until(lambda: session.connection.open_streams == 0, 5, "all streams closed")
    assert home.tunnel is session
    times = await small_requests(home.browser, home.stack.tenant_origin, 5)
    assert max(times) < QUICK


# ----------------------------------------------------------------------- floods


async def test_stream_flood_gets_503s_and_other_homes_carry_on(
    home: Home, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    stack = home.stack
    limit = Settings().max_concurrent_streams
    flood_size = limit + 44
    seconds = 5
    results: list[tuple[int, float, bytes]] = []
    peak: list[int] = []

    # Time each answer from when its request head went out (not from the TLS set-up,
    # which this one process does for all the flood's connections on both ends).
    async def head_sent(
        _session: object, context: SimpleNamespace, _params: aiohttp.TraceRequestHeadersSentParams
    ) -> None:
        context.trace_request_ctx["sent"] = time.monotonic()

    tracing = aiohttp.TraceConfig()
    tracing.on_request_headers_sent.append(head_sent)
    # One browser without a connection cap of its own: every request is in flight at once.
    flooder = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=0, ssl=tls_context(stack.ca_path), resolver=LocalhostResolver()
        ),
        cookies={SESSION_COOKIE: home.token},
        trace_configs=[tracing],
    )

    async def one(i: int) -> None:
        ctx: dict[str, float] = {}
        url = f"{stack.tenant_origin}/slow?seconds={seconds}&i={i}"
        async with flooder.get(url, trace_request_ctx=ctx) as r:
            answered = time.monotonic()
            results.append((r.status, answered - ctx["sent"], await r.read()))

    sampler = asyncio.create_task(sample_open_streams(home.tunnel, peak))
    try:
        async with (
            extra_tenant(stack, tmp_path, email="neighbour@example.com") as neighbour,
            neighbour.browser() as other,
        ):
            await other.sign_in("/")
            async with asyncio.timeout(60):
                flood = asyncio.gather(*(one(i) for i in range(flood_size)))
                # While it rages, at its stream limit: the neighbour's home answers fast.
                await wait_until(
                    lambda: max(peak, default=0) >= limit, 15, "the flood to hit the limit"
                )
                neighbour_times = await one_by_one(other, neighbour.tenant_origin, 20)
                neighbour_ws = await websocket_echoes(other, neighbour.tenant_origin, 10)
                still_flooded = home.tunnel.connection.open_streams
                await flood
    finally:
        sampler.cancel()
        await flooder.close()
    peak_streams = max(peak)
    statuses = [status for status, _, _ in results]
    ok, busy = statuses.count(200), statuses.count(503)
    busy_times = [t for status, t, _ in results if status == 503]
    print(
        f"flood: {ok} x 200, {busy} x 503, open streams at peak {peak_streams}, "
        f"{still_flooded} when the neighbour was done"
    )
    print(summary("neighbour http during flood", neighbour_times))
    print(summary("neighbour ws during flood", neighbour_ws))
    if busy_times:
        print(summary("503 answers", busy_times))
    record_property("flood", {"ok": ok, "busy": busy, "peak_streams": peak_streams})
    assert len(results) == flood_size
    assert ok + busy == flood_size, sorted(set(statuses))
    assert ok >= limit, "every stream slot was used"
    assert busy >= 1, "the excess was refused"
    assert max(busy_times) < QUICK, "a refusal is quick, not queued behind the slow ones"
    assert all(b"too many open requests" in body for status, _, body in results if status == 503)
    assert peak_streams == limit
    assert still_flooded > 0, "the neighbour was measured during the flood"
    assert max(neighbour_times) < QUICK, summary("neighbour", neighbour_times)
    assert max(neighbour_ws) < QUICK, summary("neighbour ws", neighbour_ws)
    # The flooded home itself recovers at once.
    times = await small_requests(home.browser, stack.tenant_origin, 5)
    assert max(times) < QUICK
    await wait_until(
        lambda: stack.relay.hub.tunnels[stack.instance_id].connection.open_streams == 0,
        5,
        "the flood's streams to close",
    )
