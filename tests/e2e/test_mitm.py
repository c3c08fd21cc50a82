"""The add-on proves the relay is genuine before it says anything secret.

A man in the middle on 127.0.0.1 terminates the add-on's TLS with another
*valid* certificate (from an independent CA the add-on also trusts) and
relays the WebSocket byte for byte to the real relay.  The relay's signature
binds the certificate it serves, so the add-on refuses with
``bad_relay_signature`` and never sends its client proof; the relay never
registers a tunnel.  The same interceptor holding the relay's *own*
certificate is transparent (positive control: the add-on connects and the
interceptor sees the client proof), which shows the harness and its frame
decoder work.  Also: unknown CA, wrong host name, a pin for another relay
key, and an add-on key the relay does not know (a link code, no tunnel).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ports import listening_socket
from stack import PASSWORD
from tls_interceptor import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, TlsInterceptor

from homeport.addon.client import AddonClient, AddonConfig, LocalhostResolver, State
from homeport.keys import load_or_create_private_key, public_key_text
from homeport.protocol import events as ev
from homeport.protocol.connection import Role, TunnelConnection
from homeport.protocol.handshake import (
    AddonHandshake,
    HandshakeError,
    HandshakeErrorCode,
    Unlinked,
    Welcome,
)
from homeport.relay.app import Relay
from homeport.relay.config import RelayConfig
from homeport.standin import start_standin
from homeport.tls.context import TUNNEL_ALPN, client_context, peer_certificate_sha256
from homeport.tls.devca import create_independent_ca, ensure_dev_ca
from homeport.tunnel.pipes import WebSocketPipe
from homeport.tunnel.raw import record

pytestmark = pytest.mark.timeout(60)

EMAIL = "owner@example.com"


@dataclass
class Setup:
    relay: Relay
    config: RelayConfig
    backend_url: str
    tmp: Path
    #: State dir of an add-on whose key is already linked to an instance.
    linked_state: Path
    instance_id: str

    @property
    def dev_ca(self) -> Path:
        return self.config.data_dir / "tls" / "dev-ca.pem"

    def url(self, port: int, host: str = "homeport.localhost") -> str:
        return f"wss://{host}:{port}/v1/tunnel"

    def addon(
        self,
        url: str,
        *,
        ca: Path | None = None,
        pins: tuple[object, ...] | None = None,
        state_dir: Path | None = None,
        transport: str = "auto",
    ) -> AddonClient:
        config = AddonConfig(
            relay_url=url,
            ha_url=self.backend_url,
            state_dir=state_dir or self.linked_state,
            pinned_keys=pins or (self.relay.server_key.public_key(),),  # type: ignore[arg-type]
            relay_ca=ca or self.dev_ca,
            ping_interval=2.0,
            ping_timeout=3.0,
            transport=transport,
        )
        return AddonClient(config)

    def interceptor(
        self, cert: Path, key: Path, *, alpn: list[str] | None = None
    ) -> TlsInterceptor:
        return TlsInterceptor(
            cert,
            key,
            upstream_port=self.config.listen_port,
            upstream_name=self.config.account_host,
            upstream_ca=self.dev_ca,
            alpn=alpn,
        )

    def assert_no_tunnel(self) -> None:
        assert self.relay.hub.tunnels == {}
        assert self.relay.hub.tunnel_for(self.instance_id) is None
        assert not self.relay.hub._sessions


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    sock = listening_socket()
    config = RelayConfig(
        data_dir=tmp_path / "relay", listen_port=sock.getsockname()[1], drain_seconds=1.0
    )
    relay = Relay(config)
    await relay.start(sock=sock)
    standin, backend_url = await start_standin()
    try:
        await relay.accounts.create_user(EMAIL, PASSWORD)
        # Link the add-on's key up front, as if it had been linked long ago: had
        # it sent its client proof through an interceptor, it would get a tunnel.
        key = load_or_create_private_key(tmp_path / "addon" / "addon-key.pem")
        code, _ = await relay.accounts.create_link_code(public_key_text(key.public_key()))
        instance = await relay.accounts.link_instance(code, EMAIL)
        yield Setup(relay, config, backend_url, tmp_path, tmp_path / "addon", instance.id)
    finally:
        await relay.stop()
        await standin.cleanup()


async def run_until(addon: AddonClient, done: Callable[[], bool], timeout: float = 10) -> None:
    """Run the add-on's reconnect loop until ``done()`` holds (bounded), then stop it."""
    async with addon:
        task = asyncio.create_task(addon.run_forever())
        try:
            async with asyncio.timeout(timeout):
                while not done():
                    assert not task.done(), task.exception()
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def failed_to_connect(addon: AddonClient) -> bool:
    """The add-on has just failed to connect.

    Both at once: between two attempts ``last_error`` stays set while the state
    is already back to CONNECTING, so waiting for the error alone races the retry.
    """
    return addon.status.state is State.DISCONNECTED and addon.status.last_error is not None


def other_valid_certificate(setup: Setup, name: str = "mitm") -> tuple[Path, Path, Path]:
    """A certificate for the relay's names from an independent CA; and a bundle
    that trusts both that CA and the relay's (as a mis-issuing public CA would be)."""
    ca = create_independent_ca(setup.tmp / name / "ca")
    cert, key = ca.issue_server_certificate(
        [setup.config.account_host, f"*.{setup.config.tenant_domain}", "localhost"],
        setup.tmp / name / "leaf",
    )
    bundle = setup.tmp / name / "trusted.pem"
    bundle.write_bytes(setup.dev_ca.read_bytes() + ca.cert_path.read_bytes())
    return cert, key, bundle


# ------------------------------------------------------------------ controls


async def test_interceptor_with_the_relays_own_certificate_is_transparent(
    setup: Setup,
) -> None:
    """Positive control: the harness relays faithfully and sees a client proof when sent.

    (An attacker with the relay's TLS private key is outside what the
    handshake can stop; see protocol/handshake.py.)
    """
    async with setup.interceptor(setup.relay.tls.cert, setup.relay.tls.key) as mitm:
        addon = setup.addon(setup.url(mitm.port))
        await run_until(
            addon,
            lambda: (
                addon.status.state is State.CONNECTED
                and setup.relay.hub.tunnel_for(setup.instance_id) is not None
            ),
        )
        assert addon.status.instance_id == setup.instance_id
        assert len(mitm.connections) == 1
        seen = mitm.connections[0]
        assert seen.client_json_types() == ["hello", "client_proof"]
        assert seen.server_json_types() == ["server_proof", "welcome"]
        assert any(op == OP_BINARY for op, _ in seen.client_messages())  # tunnel frames
        assert seen.alpn == TUNNEL_ALPN  # the tunnel straight on TLS, by default


# ------------------------------------------------------------------ transports


async def test_an_addon_behind_an_http_only_path_falls_back_to_a_websocket(
    setup: Setup,
) -> None:
    """A relay (or a proxy on the way) that does not choose the tunnel's ALPN: the add-on
    dials again over a WebSocket, and keeps to it (no second dial every time)."""
    async with setup.interceptor(
        setup.relay.tls.cert, setup.relay.tls.key, alpn=["http/1.1"]
    ) as mitm:
        addon = setup.addon(setup.url(mitm.port))
        pipes: list[object] = []
        await run_until(addon, lambda: _pipe_of(setup, pipes))
        assert isinstance(pipes[0], WebSocketPipe)
        # First the raw dial (no protocol in common), then the WebSocket (HTTP/1.1).
        assert [c.alpn for c in mitm.connections] == [None, "http/1.1"]
        assert mitm.connections[1].client_json_types() == ["hello", "client_proof"]


async def test_an_addon_told_to_use_the_raw_tunnel_does_not_fall_back(setup: Setup) -> None:
    async with setup.interceptor(
        setup.relay.tls.cert, setup.relay.tls.key, alpn=["http/1.1"]
    ) as mitm:
        addon = setup.addon(setup.url(mitm.port), transport="raw")
        await run_until(addon, lambda: failed_to_connect(addon))
        assert "does not offer the raw tunnel" in str(addon.status.last_error)
        assert all(not c.from_client for c in mitm.connections)  # not a byte sent
        setup.assert_no_tunnel()


async def test_an_addon_told_to_use_a_websocket_uses_one(setup: Setup) -> None:
    addon = setup.addon(setup.url(setup.config.listen_port), transport="websocket")
    pipes: list[object] = []
    await run_until(addon, lambda: _pipe_of(setup, pipes))
    assert isinstance(pipes[0], WebSocketPipe)


def _pipe_of(setup: Setup, found: list[object]) -> bool:
    """True once the relay has a tunnel for the home; its pipe goes into ``found``."""
    session = setup.relay.hub.tunnel_for(setup.instance_id)
    if session is not None:
        found.append(session.pipe)
    return session is not None


async def _raw_connection(
    setup: Setup, server_name: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    context = client_context(setup.dev_ca, alpn=[TUNNEL_ALPN])
    return await asyncio.open_connection(
        "127.0.0.1", setup.config.listen_port, ssl=context, server_hostname=server_name
    )


@pytest.mark.parametrize("host", ["localhost", "www.home.localhost"])
async def test_the_raw_tunnel_is_refused_on_any_other_host(setup: Setup, host: str) -> None:
    """ALPN homeport-tunnel/1 is served on the account host and on a home's own tenant
    name only (tests/e2e/test_tenant_tunnel.py): elsewhere, closed unread."""
    reader, writer = await _raw_connection(setup, host)
    writer.write(record(json.dumps({"type": "hello"})))
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()
    setup.assert_no_tunnel()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xff\xff\xff" + b"x" * 64,  # a record longer than any handshake message
        record("not json at all"),
        record(json.dumps({"type": "close", "code": 4001, "reason": "linked"})),
    ],
    ids=["oversized-record", "not-json", "close-record-first"],
)
async def test_a_raw_handshake_that_makes_no_sense_is_closed(setup: Setup, garbage: bytes) -> None:
    reader, writer = await _raw_connection(setup, setup.config.account_host)
    writer.write(garbage)
    async with asyncio.timeout(15):
        rest = await reader.read()
    writer.close()
    # At most a close record (and an error) came back, never a server proof.
    assert b"server_proof" not in rest
    setup.assert_no_tunnel()


# ------------------------------------------------------- the man in the middle


async def test_mitm_with_another_valid_certificate_is_refused(setup: Setup) -> None:
    cert, key, bundle = other_valid_certificate(setup)
    async with setup.interceptor(cert, key) as mitm:
        addon = setup.addon(setup.url(mitm.port), ca=bundle)
        await run_until(addon, lambda: failed_to_connect(addon))
        status = addon.status
        assert status.state is State.DISCONNECTED
        assert "bad_relay_signature" in (status.last_error or ""), status.last_error
        assert status.instance_id is None
        assert status.connects == 0

        # Once more, one connection by hand, to see the exact error.
        async with setup.addon(setup.url(mitm.port), ca=bundle) as direct:
            with pytest.raises(HandshakeError) as refused:
                await direct.connect_once()
        assert refused.value.code is HandshakeErrorCode.BAD_RELAY_SIGNATURE

        # The add-on's TLS accepted the interceptor's certificate (so this is the
        # handshake's doing, not TLS's), the real relay answered through it, and
        # the only message the add-on ever sent after TLS is its hello.
        assert len(mitm.connections) >= 2
        for seen in mitm.connections:
            assert seen.server_json_types() == ["server_proof"]
            assert seen.client_json_types() == ["hello"]
            assert {op for op, _ in seen.client_messages()} <= {1, OP_CLOSE, OP_PING, OP_PONG}
            assert b"client_proof" not in seen.from_client
    setup.assert_no_tunnel()
    (row,) = await setup.relay.accounts.list_instances()
    assert row.last_connected_at is None


async def test_certificate_from_an_unknown_ca_is_refused(setup: Setup) -> None:
    cert, key, _bundle = other_valid_certificate(setup)
    async with setup.interceptor(cert, key) as mitm:
        addon = setup.addon(setup.url(mitm.port))  # trusts the relay's CA only
        await run_until(addon, lambda: failed_to_connect(addon))
    error = addon.status.last_error or ""
    assert addon.status.state is State.DISCONNECTED
    assert "CERTIFICATE_VERIFY_FAILED" in error, error
    assert "unable to get local issuer certificate" in error, error
    assert all(not seen.from_client for seen in mitm.connections)  # not one byte of plaintext
    setup.assert_no_tunnel()


@pytest.mark.parametrize("where", ["genuine relay", "interceptor"])
async def test_certificate_for_another_host_name_is_refused(setup: Setup, where: str) -> None:
    if where == "genuine relay":
        # The real relay, reached under a name its certificate does not carry.
        url = setup.url(setup.config.listen_port, host="wrong.localhost")
        addon = setup.addon(url)
        await run_until(addon, lambda: failed_to_connect(addon))
    else:
        # An interceptor with a certificate from the *trusted* CA, for another name.
        dev_ca = ensure_dev_ca(setup.config.data_dir)
        cert, key = dev_ca.issue_server_certificate(
            ["evil.localhost"], setup.tmp / "wrong-name", ip_addresses=()
        )
        async with setup.interceptor(cert, key) as mitm:
            addon = setup.addon(setup.url(mitm.port))
            await run_until(addon, lambda: failed_to_connect(addon))
        assert all(not seen.from_client for seen in mitm.connections)
    error = addon.status.last_error or ""
    assert addon.status.state is State.DISCONNECTED
    assert "CERTIFICATE_VERIFY_FAILED" in error, error
    assert "Hostname mismatch" in error, error
    setup.assert_no_tunnel()


async def test_addon_pinning_another_relay_key_refuses_the_genuine_relay(setup: Setup) -> None:
    other_key = Ed25519PrivateKey.generate().public_key()
    # Watched through the transparent interceptor to see what the add-on sends.
    async with setup.interceptor(setup.relay.tls.cert, setup.relay.tls.key) as mitm:
        addon = setup.addon(setup.url(mitm.port), pins=(other_key,))
        await run_until(addon, lambda: failed_to_connect(addon))
    assert addon.status.state is State.DISCONNECTED
    assert "relay_key_not_pinned" in (addon.status.last_error or ""), addon.status.last_error
    assert mitm.connections
    for seen in mitm.connections:
        assert seen.client_json_types() == ["hello"]
    setup.assert_no_tunnel()


# ------------------------------------------------------ the relay's side


async def _raw_handshake(
    setup: Setup, key: Ed25519PrivateKey
) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse, Welcome | Unlinked]:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            ssl=client_context(setup.dev_ca), resolver=LocalhostResolver()
        )
    )
    ws = await session.ws_connect(setup.url(setup.config.listen_port))
    ssl_object = ws.get_extra_info("ssl_object")
    handshake = AddonHandshake(
        setup.config.account_host,
        (setup.relay.server_key.public_key(),),
        key,
        peer_certificate_sha256(ssl_object),
    )
    await ws.send_str(handshake.hello())
    await ws.send_str(handshake.receive_server_proof(await ws.receive_str(timeout=5)))
    result = handshake.receive_result(await ws.receive_str(timeout=5))
    assert isinstance(result, Welcome | Unlinked), result
    return session, ws, result


async def _pong_within(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> bool:
    """Send a tunnel PING frame; True if a PONG for it comes back within ``seconds``."""
    connection = TunnelConnection(Role.ADDON)
    payload = struct.pack(">Q", 0x486F6D65706F7274)
    connection.ping(payload)
    await ws.send_bytes(connection.data_to_send())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            msg = await ws.receive(timeout=left)
        except TimeoutError:
            return False
        if msg.type is not aiohttp.WSMsgType.BINARY:
            return False
        for event in connection.receive_data(msg.data):
            if isinstance(event, ev.PongReceived) and event.payload == payload:
                return True
    return False


async def test_unknown_addon_key_gets_a_link_code_and_no_tunnel(setup: Setup) -> None:
    # The real add-on with a fresh key: it is shown a link code, nothing else.
    fresh = setup.addon(setup.url(setup.config.listen_port), state_dir=setup.tmp / "fresh")
    await run_until(fresh, lambda: fresh.status.state is State.UNLINKED)
    assert fresh.status.link_code
    assert fresh.status.instance_id is None
    setup.assert_no_tunnel()

    # By hand: after "unlinked", tunnel frames get no answer (no tunnel is served) ...
    session, ws, result = await _raw_handshake(setup, Ed25519PrivateKey.generate())
    try:
        assert isinstance(result, Unlinked)
        assert not await _pong_within(ws, 1.5)
        setup.assert_no_tunnel()
    finally:
        await ws.close()
        await session.close()

    # ... while the linked key's tunnel answers the same PING (positive control).
    linked = load_or_create_private_key(setup.linked_state / "addon-key.pem")
    session, ws, result = await _raw_handshake(setup, linked)
    try:
        assert isinstance(result, Welcome)
        assert result.instance_id == setup.instance_id
        assert await _pong_within(ws, 5)
        assert setup.relay.hub.tunnel_for(setup.instance_id) is not None
    finally:
        await ws.close()
        await session.close()
