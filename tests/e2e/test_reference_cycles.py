"""Finished connections and exchanges are freed by reference counting, on uvloop.

A browser connection that ends must not be left in a reference cycle: its
TLS state (OpenSSL's buffers, the memory BIOs) is native memory the cycle
collector does not count, so cycles of dead connections piled up between
full collections and the relay's memory swung by hundreds of MiB under
churn (``bench/soak.py``, docs/performance.md).  Through real sockets and
the production event loop: new and kept-alive connections, an upload, a
WebSocket closed and one cut, a download cut mid-body and a request given
up before its answer.  With the collector off, nothing of Homeport's may
be left for it afterwards; a failure names the cycle.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import ssl
from pathlib import Path

import aiohttp
import pytest
import uvloop
from stack import Browser, Stack, start_stack

pytestmark = pytest.mark.timeout(120)


def _edge(holder: object, held: object) -> str:
    """The attribute, key or slot of ``holder`` that refers to ``held``."""
    attributes = getattr(holder, "__dict__", None)
    if isinstance(attributes, dict):
        for name, value in attributes.items():
            if value is held:
                return f".{name}"
    for cls in type(holder).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if getattr(holder, name, None) is held:
                return f".{name}"
    if isinstance(holder, dict):
        for key, value in holder.items():
            if value is held:
                return f"[{key!r}]"
    return " ->"


def cycle_through(start: object, garbage: dict[int, object]) -> str:
    """The shortest reference cycle back to ``start`` within ``garbage``, as a path."""
    came_from: dict[int, int] = {}
    queue = collections.deque([id(start)])
    while queue:
        current = queue.popleft()
        for referent in gc.get_referents(garbage[current]):
            if referent is start:
                path = [current]
                while path[-1] != id(start):
                    path.append(came_from[path[-1]])
                hops = list(reversed(path))
                return " ".join(
                    type(garbage[a]).__qualname__ + _edge(garbage[a], garbage[b] if b else start)
                    for a, b in zip(hops, [*hops[1:], 0], strict=True)
                )
            key = id(referent)
            if key in garbage and key not in came_from and key != id(start):
                came_from[key] = current
                queue.append(key)
    return "(reachable from a cycle)"


async def _traffic(stack: Stack, browser: Browser) -> None:
    # The signed-in browser outlives the collection: what it holds is not garbage.
    ssl_context = browser.session.connector._ssl  # type: ignore[union-attr]
    resolver = browser.session.connector._resolver  # type: ignore[union-attr]

    def client(**options: object) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(ssl=ssl_context, resolver=resolver, **options)  # type: ignore[arg-type]
        return aiohttp.ClientSession(cookie_jar=browser.session.cookie_jar, connector=connector)

    async with client(force_close=True) as once:  # a new connection per request
        for _ in range(3):
            async with once.get(stack.tenant_origin + "/") as r:
                assert r.status == 200
                await r.read()
    async with client() as kept:
        for _ in range(3):
            async with kept.get(stack.tenant_origin + "/status/204") as r:
                assert r.status == 204
        async with kept.post(stack.tenant_origin + "/upload", data=b"x" * 300_000) as r:
            assert r.status == 200
            await r.read()
        ws_url = stack.tenant_origin.replace("https://", "wss://") + "/ws/echo"
        async with kept.ws_connect(ws_url, origin=stack.tenant_origin) as ws:
            await ws.send_str("closed cleanly")
            assert await ws.receive_str() == "closed cleanly"
        async with kept.ws_connect(ws_url, origin=stack.tenant_origin) as ws:
            await ws.send_str("cut")
            assert await ws.receive_str() == "cut"
            ws._response.connection.transport.abort()  # type: ignore[union-attr]
        download = await kept.get(stack.tenant_origin + "/bytes/20000000")
        await download.content.read(100_000)
        download.connection.transport.abort()  # type: ignore[union-attr]
        download.close()
        slow = asyncio.ensure_future(kept.get(stack.tenant_origin + "/slow?seconds=5"))
        await asyncio.sleep(0.3)
        slow.cancel()  # given up before the answer: the connection closes
        with contextlib.suppress(asyncio.CancelledError):
            await slow


async def _quiet(stack: Stack) -> None:
    """Until every stream is over on both sides, and closed sockets' last callbacks ran."""
    relay = stack.relay.hub.tunnel_for(stack.instance_id)
    addon = stack.addon.tunnel
    assert relay is not None
    assert addon is not None
    async with asyncio.timeout(30):
        while relay.streams or relay.connection.open_streams:
            await asyncio.sleep(0.02)
        while addon.streams or addon.connection.open_streams:
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)


def _watched(obj: object, *, tunnel_ends: bool) -> bool:
    """What must not be left for the collector.

    A TLS connection of ours above all (native memory the collector does not
    count): the relay's, server side, and on a tunnel's end both of the tunnel's.
    The test's own aiohttp clients leave theirs in cycles of their own (a
    client-side WebSocket writer), which are not Homeport's to fix.  Homeport's
    objects too, except on a tunnel's end: that is rare (a reconnect), and its
    session's own objects may wait for the collector as long as its TLS does not.
    """
    if isinstance(obj, ssl.SSLObject):
        return tunnel_ends or obj.server_side
    return not tunnel_ends and type(obj).__module__.startswith("homeport.")


async def _leftovers(tmp_path: Path, *, tunnel_ends: bool) -> list[str]:
    async with start_stack(tmp_path) as stack, stack.browser() as browser:
        await browser.sign_in("/")
        await _traffic(stack, browser)  # warms up too: first-use caches are not garbage
        gc.collect()
        gc.disable()
        try:
            if tunnel_ends:
                await stack.dial_again()
            else:
                await _traffic(stack, browser)
            await _quiet(stack)
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
        finally:
            gc.set_debug(0)
            gc.enable()
        garbage = {id(o): o for o in gc.garbage}
        gc.garbage.clear()
        named: dict[str, str] = {}
        for obj in garbage.values():
            name = f"{type(obj).__module__}.{type(obj).__qualname__}"
            if name not in named and _watched(obj, tunnel_ends=tunnel_ends):
                named[name] = cycle_through(obj, garbage)
        return [f"{name}: {path}" for name, path in sorted(named.items())]


def test_finished_connections_and_exchanges_leave_no_cycles(tmp_path: Path) -> None:
    leftovers = uvloop.run(_leftovers(tmp_path, tunnel_ends=False))
    assert leftovers == [], "\n".join(leftovers)


def test_a_tunnel_that_ends_leaves_no_tls_state_to_the_collector(tmp_path: Path) -> None:
    leftovers = uvloop.run(_leftovers(tmp_path, tunnel_ends=True))
    assert leftovers == [], "\n".join(leftovers)
