"""Stream priorities end to end: the home's interactive traffic first, bulk never starved.

Through real sockets (browser → relay → tunnel → add-on → stand-in).  Timing on a
loaded 2-core machine is too noisy for tight figures (``bench/run.py --only wsload``
measures them); these tests check what must hold whatever the load: the classes the
relay and the add-on chose, every echo answered in order beside a saturating
download, and the download still moving.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator

from stack import Stack

from homeport.protocol.heads import PRIORITY_BULK, PRIORITY_DEFAULT, PRIORITY_INTERACTIVE
from homeport.tunnel.session import TunnelSession

MiB = 1024 * 1024
ENDLESS = 1000 * 1000 * MiB


def addon_priorities(stack: Stack) -> dict[str, int]:
    """Request target -> the class the add-on sends that stream in, right now."""
    return priorities(stack.addon._sessions)


def relay_priorities(stack: Stack) -> dict[str, int]:
    """Request target -> the class the relay sends that stream in, right now."""
    return priorities(set(stack.relay.hub.tunnels.values()))


def priorities(sessions: set[TunnelSession]) -> dict[str, int]:
    out: dict[str, int] = {}
    for session in sessions:
        for sid, stream in session.streams.items():
            priority = session.connection.priority(sid)
            if stream.request is not None and priority is not None:
                out[stream.request.target.split("?")[0]] = priority
    return out


async def test_websocket_answers_in_order_beside_a_saturating_download(stack: Stack) -> None:
    async with stack.browser() as browser:
        await browser.sign_in("/")
        received = 0

        async def download() -> None:
            nonlocal received
            async with browser.request("GET", f"{stack.tenant_origin}/bytes/{ENDLESS}") as r:
                assert r.status == 200
                async for chunk in r.content.iter_any():
                    received += len(chunk)

        loader = asyncio.create_task(download())
        try:
            async with asyncio.timeout(60):
                while received < 16 * MiB:
                    await asyncio.sleep(0.05)
            # A plain path, but an endless content-length: the add-on made it bulk.
            assert addon_priorities(stack)[f"/bytes/{ENDLESS}"] == PRIORITY_BULK
            ws_url = stack.tenant_origin.replace("https://", "wss://") + "/ws/echo"
            async with browser.session.ws_connect(ws_url, origin=stack.tenant_origin) as ws:
                assert addon_priorities(stack)["/ws/echo"] == PRIORITY_INTERACTIVE
                before = received
                times = []
                async with asyncio.timeout(120):
                    for i in range(200):
                        began = time.monotonic()
                        await ws.send_str(f"{i:06d}" + "x" * 1000)
                        assert (await ws.receive_str())[:6] == f"{i:06d}"
                        times.append(time.monotonic() - began)
                moved = received - before
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
    assert moved >= 4 * MiB, "the download starved beside the WebSocket"
    # Generous: a loaded 2-core machine, all four parties in this one process.
    assert statistics.median(times) < 0.25, sorted(times)[::20]


async def test_camera_stream_is_sent_as_bulk_from_its_content_type(stack: Stack) -> None:
    async with stack.browser() as browser:
        await browser.sign_in("/")
        url = f"{stack.tenant_origin}/mjpeg?frames=40&interval=0.05"
        async with browser.request("GET", url) as r:
            assert r.status == 200
            await r.content.readany()
            assert addon_priorities(stack)["/mjpeg"] == PRIORITY_BULK
            assert (await r.read()).count(b"--frame") >= 30


async def test_an_upload_of_unknown_length_turns_bulk_once_it_is_large(stack: Stack) -> None:
    async with stack.browser() as browser:
        await browser.sign_in("/")
        seen: list[int] = []
        block = b"\x07" * (256 * 1024)

        async def body() -> AsyncIterator[bytes]:
            yield block
            async with asyncio.timeout(30):  # until the relay has opened the stream
                while "/upload" not in relay_priorities(stack):
                    await asyncio.sleep(0.02)
            seen.append(relay_priorities(stack)["/upload"])  # small so far: as classed
            for _ in range(7):
                yield block
            async with asyncio.timeout(30):  # until the relay has written past BULK_SIZE
                while relay_priorities(stack)["/upload"] != PRIORITY_BULK:
                    await asyncio.sleep(0.02)
            seen.append(relay_priorities(stack)["/upload"])
            for _ in range(8):
                yield block

        # No Content-Length (chunked): the request alone does not say it is large.
        async with browser.request("POST", f"{stack.tenant_origin}/upload", data=body()) as r:
            assert r.status == 200
            assert (await r.json())["length"] == 16 * len(block)
    assert seen == [PRIORITY_DEFAULT, PRIORITY_BULK]
