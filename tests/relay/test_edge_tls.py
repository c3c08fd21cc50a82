"""``--tls-profile``: modern (TLS 1.3 only) and intermediate (adds TLS 1.2, ECDHE + AEAD only).

Real handshakes on 127.0.0.1 between the server context and stdlib clients
restricted to one protocol version and one family of cipher suites, the way a
scanner probes a server (R-TLS-02/03/04).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ports import listening_socket

from homeport.relay.app import Relay
from homeport.relay.config import RelayConfig
from homeport.tls.context import TLS12_CIPHERS, server_context
from homeport.tls.devca import DevCA, ensure_dev_ca

HOST = "homeport.localhost"
ECDHE_AEAD = set(TLS12_CIPHERS.split(":"))
#: Every TLS 1.2 CBC suite OpenSSL knows, with and without forward secrecy.
CBC_ONLY = "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:" + (
    "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:AES128-SHA:AES256-SHA:"
    "AES128-SHA256:AES256-SHA256:DHE-RSA-AES128-SHA:DHE-RSA-AES256-SHA"
)
#: How a refused handshake surfaces: the server's alert, or the reset after it.
REFUSED = (ssl.SSLError, ConnectionResetError)
#: Static-RSA key exchange (no forward secrecy), even with AEAD.
RSA_KX_ONLY = "AES128-GCM-SHA256:AES256-GCM-SHA384"


@pytest.fixture
def ca(tmp_path: Path) -> DevCA:
    return ensure_dev_ca(tmp_path / "data")


@contextlib.asynccontextmanager
async def tls_server(context: ssl.SSLContext) -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            writer.write(await reader.readline())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    async with server:
        yield server.sockets[0].getsockname()[1]


def client(
    ca: DevCA,
    *,
    version: ssl.TLSVersion,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1, on purpose
        context.minimum_version = version
        context.maximum_version = version
    if ciphers is not None:
        # SECLEVEL 0 so the client really offers what the string names: the
        # refusal under test must come from the server, not the client's policy.
        context.set_ciphers(ciphers + ":@SECLEVEL=0")
    return context


async def handshake(port: int, context: ssl.SSLContext) -> tuple[str, str]:
    """(protocol version, cipher) of a completed handshake and echo; raises on refusal."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=HOST), 10
    )
    try:
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readline(), 10) == b"ping\n"
        ssl_object = writer.get_extra_info("ssl_object")
        version, cipher = ssl_object.version(), ssl_object.cipher()[0]
        return str(version), str(cipher)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


def _server(ca: DevCA, tmp_path: Path, profile: str) -> ssl.SSLContext:
    cert, key = ca.issue_server_certificate([HOST], tmp_path / "srv")
    return server_context(cert, key, profile=profile)


@pytest.mark.parametrize("profile", ["modern", "intermediate"])
async def test_tls13_served_by_both_profiles(tmp_path: Path, ca: DevCA, profile: str) -> None:
    async with tls_server(_server(ca, tmp_path, profile)) as port:
        version, _cipher = await handshake(port, client(ca, version=ssl.TLSVersion.TLSv1_3))
    assert version == "TLSv1.3"


async def test_modern_refuses_a_tls12_client(tmp_path: Path, ca: DevCA) -> None:
    async with tls_server(_server(ca, tmp_path, "modern")) as port:
        with pytest.raises(REFUSED):
            await handshake(port, client(ca, version=ssl.TLSVersion.TLSv1_2))


async def test_intermediate_accepts_tls12_with_an_ecdhe_aead_suite_only(
    tmp_path: Path, ca: DevCA
) -> None:
    async with tls_server(_server(ca, tmp_path, "intermediate")) as port:
        # A client offering everything gets an ECDHE + AEAD suite ...
        version, cipher = await handshake(
            port, client(ca, version=ssl.TLSVersion.TLSv1_2, ciphers="ALL")
        )
        assert version == "TLSv1.2"
        assert cipher in ECDHE_AEAD
        # ... and each allowed suite works on its own (only the ECDSA ones: the
        # certificate is ECDSA P-256).
        for suite in sorted(s for s in ECDHE_AEAD if "-ECDSA-" in s):
            version, cipher = await handshake(
                port, client(ca, version=ssl.TLSVersion.TLSv1_2, ciphers=suite)
            )
            assert (version, cipher) == ("TLSv1.2", suite)


@pytest.mark.parametrize("profile", ["modern", "intermediate"])
@pytest.mark.parametrize("ciphers", [CBC_ONLY, RSA_KX_ONLY], ids=["cbc", "rsa-kx"])
async def test_tls12_without_ecdhe_aead_is_refused(
    tmp_path: Path, ca: DevCA, profile: str, ciphers: str
) -> None:
    async with tls_server(_server(ca, tmp_path, profile)) as port:
        with pytest.raises(REFUSED):
            await handshake(port, client(ca, version=ssl.TLSVersion.TLSv1_2, ciphers=ciphers))


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
async def test_intermediate_refuses_tls10_and_tls11(
    tmp_path: Path, ca: DevCA, version: ssl.TLSVersion
) -> None:
    async with tls_server(_server(ca, tmp_path, "intermediate")) as port:
        with pytest.raises(REFUSED):
            await handshake(port, client(ca, version=version, ciphers="ALL"))


def test_unknown_profile_is_an_error(tmp_path: Path, ca: DevCA) -> None:
    with pytest.raises(ValueError, match="unknown TLS profile"):
        _server(ca, tmp_path, "old")


async def test_relay_serves_the_configured_profile(tmp_path: Path) -> None:
    """The profile reaches the relay's real listener through RelayConfig."""
    for profile, tls12_accepted in (("modern", False), ("intermediate", True)):
        sock = listening_socket()
        config = RelayConfig(
            data_dir=tmp_path / profile, listen_port=sock.getsockname()[1], tls_profile=profile
        )
        relay = Relay(config)
        await relay.start(sock=sock)
        try:
            ca = ensure_dev_ca(config.data_dir)
            context = client(ca, version=ssl.TLSVersion.TLSv1_2)
            try:
                _reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        "127.0.0.1", config.listen_port, ssl=context, server_hostname=HOST
                    ),
                    10,
                )
            except REFUSED:
                accepted = False
            else:
                accepted = True
                writer.close()
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    await writer.wait_closed()
            assert accepted is tls12_accepted, profile
        finally:
            await relay.stop()
