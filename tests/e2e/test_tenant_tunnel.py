"""An add-on's tunnel on its own tenant name (``<instance-id>.<tenant-domain>``).

Behind a load balancer that hashes on SNI, the add-on dials its tenant name so
that its tunnel lands where its browsers do. Real parts: the relay and the
add-on's key from the ``stack`` fixture, the raw tunnel on TLS (ALPN
``homeport-tunnel/1``), the real handshake, which binds the dialled name and the
SHA-256 of the certificate served on that connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from stack import Stack

from homeport.addon.client import TUNNEL_HOST_FILE, AddonClient, State
from homeport.keys import load_or_create_private_key, public_key_text
from homeport.protocol.handshake import AddonHandshake, RelayRefused, Unlinked, Welcome
from homeport.relay.hub import CLOSE_WRONG_HOME, WRONG_HOME
from homeport.tls.context import TUNNEL_ALPN, client_context, peer_certificate_sha256
from homeport.tunnel.raw import ChannelClosed, RawPipe

pytestmark = pytest.mark.timeout(60)


@dataclass
class Dialled:
    result: Welcome | Unlinked | RelayRefused
    raw: RawPipe
    transport: asyncio.BaseTransport


async def dial(stack: Stack, host: str, key: Ed25519PrivateKey) -> Dialled:
    """The add-on's raw dial and handshake to ``host`` on the relay's port."""
    context: ssl.SSLContext = client_context(stack.ca_path, alpn=[TUNNEL_ALPN])
    pinned = (stack.relay.server_key.public_key(),)
    transport, raw = await asyncio.get_running_loop().create_connection(
        RawPipe, "127.0.0.1", stack.config.listen_port, ssl=context, server_hostname=host
    )
    ssl_object = transport.get_extra_info("ssl_object")
    assert ssl_object.selected_alpn_protocol() == TUNNEL_ALPN
    handshake = AddonHandshake(host, pinned, key, peer_certificate_sha256(ssl_object))
    async with asyncio.timeout(10):
        raw.send_text(handshake.hello())
        raw.send_text(handshake.receive_server_proof(await raw.receive_text()))
        result = handshake.receive_result(await raw.receive_text())
    return Dialled(result, raw, transport)


async def close_code(raw: RawPipe) -> int:
    try:
        async with asyncio.timeout(5):
            await raw.receive_text()
    except ChannelClosed as closed:
        return closed.code
    raise AssertionError("the relay sent more than its refusal")


async def link_another_home(stack: Stack) -> str:
    """A second home on the same account, linked the way ``homeport admin link`` does it."""
    key = Ed25519PrivateKey.generate()
    accounts = stack.relay.accounts
    code, _ = await accounts.create_link_code(public_key_text(key.public_key()))
    await accounts.link_instance(code, stack.email, "Other home")
    instance = await accounts.instance_for_key(public_key_text(key.public_key()))
    assert instance is not None
    return instance.id


def addon_key(stack: Stack) -> Ed25519PrivateKey:
    return load_or_create_private_key(stack.addon.config.state_dir / "addon-key.pem")


async def test_an_addon_is_served_on_its_own_tenant_name(stack: Stack) -> None:
    name = stack.config.tenant_host(stack.instance_id)
    before = stack.relay.hub.tunnels[stack.instance_id]
    dialled = await dial(stack, name, addon_key(stack))
    try:
        # The handshake verified: the relay proved this name and the certificate
        # it served for it (the add-on checks both against its own view).
        assert isinstance(dialled.result, Welcome)
        assert dialled.result.instance_id == stack.instance_id
        async with asyncio.timeout(5):
            while stack.relay.hub.tunnels.get(stack.instance_id) is before:
                await asyncio.sleep(0.02)
    finally:
        dialled.transport.abort()


async def test_a_key_dialling_another_homes_name_is_refused(stack: Stack) -> None:
    """Home X's key on home Y's name: refused before any tunnel frame, nothing registered."""
    other = await link_another_home(stack)
    mine = stack.relay.hub.tunnels[stack.instance_id]
    dialled = await dial(stack, stack.config.tenant_host(other), addon_key(stack))
    try:
        assert dialled.result == RelayRefused(WRONG_HOME, "this key does not own this home")
        assert await close_code(dialled.raw) == CLOSE_WRONG_HOME
    finally:
        dialled.transport.abort()
    assert other not in stack.relay.hub.tunnels
    assert stack.relay.hub.tunnels[stack.instance_id] is mine  # X's own tunnel untouched


async def test_an_unlinked_key_gets_no_link_code_on_a_tenant_name(stack: Stack) -> None:
    stranger = Ed25519PrivateKey.generate()
    dialled = await dial(stack, stack.config.tenant_host(stack.instance_id), stranger)
    try:
        assert isinstance(dialled.result, RelayRefused)
        assert dialled.result.code == WRONG_HOME
    finally:
        dialled.transport.abort()
    assert stack.relay.hub.tunnels[stack.instance_id] is not None


async def test_a_name_that_is_no_home_of_ours_is_closed_at_once(stack: Stack) -> None:
    with pytest.raises((ConnectionError, ChannelClosed, ssl.SSLError)):
        await dial(stack, "not-an-instance.home.localhost", addon_key(stack))


async def test_an_addon_refused_on_a_stored_name_goes_back_to_the_account_host(
    stack: Stack,
) -> None:
    """A stored tunnel name the key does not own (the home was linked anew, say): the
    add-on is refused there, forgets it and connects through the account host."""
    other = await link_another_home(stack)
    state_dir = stack.addon.config.state_dir
    (state_dir / TUNNEL_HOST_FILE).write_text(stack.config.tenant_host(other) + "\n")
    second = AddonClient(stack.addon.config)
    async with second:
        assert second._dial_host() == stack.config.tenant_host(other)
        runner = asyncio.create_task(second.run_forever())
        try:
            async with asyncio.timeout(20):
                while second.status.state is not State.CONNECTED:
                    await asyncio.sleep(0.02)
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        assert second.status.instance_id == stack.instance_id
        assert not (state_dir / TUNNEL_HOST_FILE).exists()
        assert second._dial_host() == stack.config.account_host
    assert other not in stack.relay.hub.tunnels
