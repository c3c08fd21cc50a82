"""``homeport relay`` offers exactly X25519, P-256, P-384 for key exchange (R-TLS-05)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from relay_process import RelayProcess

from homeport.tls.openssl_groups import OPENSSL_CONFIG_NAME, openssl_config_text


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RelayProcess]:
    process = RelayProcess(tmp_path / "relay")
    await process.start(timeout=60)
    try:
        yield process
    finally:
        await process.close()


async def handshake_with(relay: RelayProcess, group: str) -> bool:
    context = ssl.create_default_context(cafile=str(relay.ca_path))
    context.set_ecdh_curve(group)  # the client offers this one group only
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", relay.port, ssl=context, server_hostname=relay.config.account_host
            ),
            20,
        )
    except (ssl.SSLError, ConnectionResetError):  # refused: alert, or reset mid-handshake
        return False
    writer.close()
    return True


async def test_only_the_three_groups_are_accepted(relay: RelayProcess) -> None:
    for group in ("X25519", "prime256v1", "secp384r1"):
        assert await handshake_with(relay, group), group
    for group in ("secp521r1", "X448"):
        assert not await handshake_with(relay, group), group
    conf = relay.data_dir / "tls" / OPENSSL_CONFIG_NAME
    assert conf.read_text() == openssl_config_text()


async def test_unrestricted_openssl_would_accept_p521(tmp_path: Path) -> None:
    """The control: the same client against a server without our config gets P-521."""
    from homeport.tls.context import server_context
    from homeport.tls.devca import create_independent_ca

    ca = create_independent_ca(tmp_path / "ca")
    cert, key = ca.issue_server_certificate(["localhost"], tmp_path / "tls")
    server = await asyncio.start_server(
        lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_context(cert, key)
    )
    port = server.sockets[0].getsockname()[1]
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    context.set_ecdh_curve("secp521r1")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost"),
            20,
        )
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
