"""More homes on one relay: a second linked add-on, and a hand-driven (misbehaving) one.

``extra_tenant`` starts another real add-on, in front of its own stand-in,
linked to a new account on the *same* relay as an existing stack: the
"other user" whose service must carry on while someone else misbehaves.
``raw_tunnel`` dials ``/v1/tunnel`` and completes the real handshake with a
linked key, then hands over the bare WebSocket so a test can send whatever
bytes a broken or hostile add-on would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from stack import PASSWORD, Stack, make_addon

from homeport.addon.client import AddonStatus, LocalhostResolver, State
from homeport.keys import public_key_text
from homeport.protocol.handshake import AddonHandshake, Welcome
from homeport.standin import start_standin
from homeport.tls.context import client_context, peer_certificate_sha256
from homeport.tunnel.pipes import MAX_MESSAGE


@contextlib.asynccontextmanager
async def extra_tenant(
    stack: Stack, tmp_path: Path, *, email: str, ha_url: str | None = None
) -> AsyncIterator[Stack]:
    """Another account with its own linked add-on (and stand-in) on ``stack``'s relay."""
    standin = None
    if ha_url is None:
        standin, ha_url = await start_standin()
    relay = stack.relay
    await relay.accounts.create_user(email, PASSWORD)
    statuses: list[AddonStatus] = []
    state_dir = tmp_path / f"addon-{email.split('@')[0]}"
    addon = make_addon(stack.config, relay, ha_url, state_dir, statuses)
    await addon.__aenter__()
    task = asyncio.create_task(addon.run_forever())
    other = Stack(
        relay,
        stack.config,
        addon,
        task,
        ha_url,
        email,
        PASSWORD,
        stack.data_dir,
        statuses,
        standin,
    )
    try:
        async with asyncio.timeout(20):
            while addon.status.link_code is None and addon.status.state is not State.CONNECTED:
                await asyncio.sleep(0.02)
        if addon.status.state is not State.CONNECTED:
            assert addon.status.link_code is not None
            await relay.accounts.link_instance(addon.status.link_code, email)
        await other.wait_connected()
        yield other
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await addon.__aexit__(None, None, None)
        if standin is not None:
            await standin.cleanup()


async def linked_key(stack: Stack, email: str) -> tuple[Ed25519PrivateKey, str]:
    """A fresh add-on key linked to a new account ``email``: (key, instance id)."""
    await stack.relay.accounts.create_user(email, PASSWORD)
    key = Ed25519PrivateKey.generate()
    code, _ = await stack.relay.accounts.create_link_code(public_key_text(key.public_key()))
    instance = await stack.relay.accounts.link_instance(code, email)
    return key, instance.id


@dataclass
class RawTunnel:
    session: aiohttp.ClientSession
    ws: aiohttp.ClientWebSocketResponse
    welcome: Welcome


@contextlib.asynccontextmanager
async def raw_tunnel(stack: Stack, key: Ed25519PrivateKey) -> AsyncIterator[RawTunnel]:
    """Dial the hub and pass the real handshake with ``key``; then the WebSocket is yours."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            ssl=client_context(stack.ca_path), resolver=LocalhostResolver()
        )
    )
    try:
        url = f"wss://{stack.config.account_host}{stack.config.port_suffix}/v1/tunnel"
        ws = await session.ws_connect(url, max_msg_size=MAX_MESSAGE, compress=0, autoping=True)
        ssl_object = ws.get_extra_info("ssl_object")
        assert ssl_object is not None
        handshake = AddonHandshake(
            stack.config.account_host,
            (stack.relay.server_key.public_key(),),
            key,
            peer_certificate_sha256(ssl_object),
        )
        async with asyncio.timeout(10):
            await ws.send_str(handshake.hello())
            await ws.send_str(handshake.receive_server_proof(await ws.receive_str()))
            result = handshake.receive_result(await ws.receive_str())
        assert isinstance(result, Welcome), result
        yield RawTunnel(session, ws, result)
    finally:
        await session.close()
