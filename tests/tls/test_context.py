"""SSL contexts over real TLS sockets on 127.0.0.1, and the channel-binding hashes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from homeport.tls.context import (
    NoPeerCertificateError,
    client_context,
    local_certificate_sha256,
    peer_certificate_sha256,
    server_context,
)
from homeport.tls.devca import DevCA, create_independent_ca, ensure_dev_ca

HOST = "relay.home.localhost"
NAMES = [HOST, "*.home.localhost"]


@dataclass
class Server:
    port: int
    cert: Path
    seen: list[bytes | None]  # what each handler saw as the client's certificate


@pytest.fixture
def ca(tmp_path: Path) -> DevCA:
    return ensure_dev_ca(tmp_path / "data")


@contextlib.asynccontextmanager
async def echo_server(context: ssl.SSLContext, cert: Path) -> AsyncIterator[Server]:
    seen: list[bytes | None] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        seen.append(ssl_object.getpeercert(binary_form=True))
        with contextlib.suppress(ConnectionError):
            writer.write(await reader.readline())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    async with server:
        yield Server(server.sockets[0].getsockname()[1], cert, seen)


async def _connect(
    port: int, context: ssl.SSLContext, name: str = HOST
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=name), 10
    )


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()


async def test_verified_tls13_connection_and_channel_binding(tmp_path: Path, ca: DevCA) -> None:
    cert, key = ca.issue_server_certificate(NAMES, tmp_path / "srv")
    async with echo_server(server_context(cert, key), cert) as server:
        reader, writer = await _connect(server.port, client_context(extra_ca=ca.cert_path))
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object.version() == "TLSv1.3"
        assert ssl_object.selected_alpn_protocol() == "http/1.1"
        writer.write(b"ping\n")
        assert await reader.readline() == b"ping\n"
        # Both sides agree on the hash the tunnel handshake signs.
        assert peer_certificate_sha256(ssl_object) == local_certificate_sha256(cert)
        await _close(writer)


async def test_wildcard_name_accepted(tmp_path: Path, ca: DevCA) -> None:
    cert, key = ca.issue_server_certificate(NAMES, tmp_path / "srv")
    async with echo_server(server_context(cert, key), cert) as server:
        _, writer = await _connect(server.port, client_context(ca.cert_path), "abc.home.localhost")
        await _close(writer)


async def test_client_refuses_wrong_name(tmp_path: Path, ca: DevCA) -> None:
    cert, key = ca.issue_server_certificate(NAMES, tmp_path / "srv")
    async with echo_server(server_context(cert, key), cert) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match=r"match|mismatch"):
            await _connect(server.port, client_context(ca.cert_path), "relay.evil.example")
        # A wildcard covers one label only.
        with pytest.raises(ssl.SSLCertVerificationError):
            await _connect(server.port, client_context(ca.cert_path), "a.b.home.localhost")


async def test_client_refuses_certificate_from_unknown_ca(tmp_path: Path, ca: DevCA) -> None:
    rogue = create_independent_ca(tmp_path / "rogue")  # same look-alike CA name
    cert, key = rogue.issue_server_certificate(NAMES, tmp_path / "srv")
    async with echo_server(server_context(cert, key), cert) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            await _connect(server.port, client_context(extra_ca=ca.cert_path))


async def test_client_without_extra_ca_refuses_dev_certificate(tmp_path: Path, ca: DevCA) -> None:
    cert, key = ca.issue_server_certificate(NAMES, tmp_path / "srv")
    async with echo_server(server_context(cert, key), cert) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            await _connect(server.port, client_context())


async def _server_handshake_error(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> BaseException | None:
    """Handshake over a real socket; return what the *server* side failed with.

    The refusing side aborts the connection, so the other side often sees a
    bare reset; the handler upgrades with start_tls to learn the real reason.
    """
    outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(server_ctx)
        except (ssl.SSLError, ConnectionError) as exc:
            outcome.set_result(exc)
        else:
            outcome.set_result(None)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            _, writer = await _connect(port, client_ctx)
            await _close(writer)
        return await asyncio.wait_for(outcome, 10)


async def test_server_refuses_tls12_client(tmp_path: Path, ca: DevCA) -> None:
    cert, key = ca.issue_server_certificate(NAMES, tmp_path / "srv")
    old_client = ssl.create_default_context(cafile=ca.cert_path)
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    async with echo_server(server_context(cert, key), cert) as server:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _connect(server.port, old_client)
        assert server.seen == []  # no handler ever ran
    error = await _server_handshake_error(server_context(cert, key), old_client)
    assert isinstance(error, ssl.SSLError)
    assert error.reason == "UNSUPPORTED_PROTOCOL"
    # Control: the same client setup minus the TLS 1.2 cap gets through.
    modern = ssl.create_default_context(cafile=ca.cert_path)
    assert await _server_handshake_error(server_context(cert, key), modern) is None


async def test_client_refuses_tls12_only_server(tmp_path: Path, ca: DevCA) -> None:
    cert, key = ca.issue_server_certificate(NAMES, tmp_path / "srv")
    weak = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.load_cert_chain(cert, key)
    async with echo_server(weak, cert) as server:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _connect(server.port, client_context(ca.cert_path))
        assert server.seen == []
    # The client offered TLS 1.3 only, so the weak server found nothing to agree on.
    error = await _server_handshake_error(weak, client_context(ca.cert_path))
    assert isinstance(error, ssl.SSLError)
    assert error.reason == "UNSUPPORTED_PROTOCOL"


async def test_peer_hash_requires_a_certificate(tmp_path: Path, ca: DevCA) -> None:
    # The server side of a connection has no peer certificate (no client
    # certs are used): hashing "nothing" must fail loudly, not bind to b"".
    cert, key = ca.issue_server_certificate(NAMES, tmp_path / "srv")
    async with echo_server(server_context(cert, key), cert) as server:
        reader, writer = await _connect(server.port, client_context(ca.cert_path))
        writer.write(b"x\n")
        await reader.readline()
        await _close(writer)
    assert server.seen == [None]

    class NoCert:
        def getpeercert(self, binary_form: bool = False) -> None:
            return None

    with pytest.raises(NoPeerCertificateError):
        peer_certificate_sha256(NoCert())  # type: ignore[arg-type]


def test_server_context_settings(tmp_path: Path, ca: DevCA) -> None:
    cert, key = ca.issue_server_certificate(NAMES, tmp_path / "srv")
    context = server_context(cert, key)
    assert context.minimum_version is ssl.TLSVersion.TLSv1_3
    for option in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_TICKET, ssl.OP_NO_RENEGOTIATION):
        assert context.options & option


async def test_the_server_offers_no_session_resumption(tmp_path: Path, ca: DevCA) -> None:
    """No ticket of either kind: nothing to resume, nothing kept per connection.

    Without ``num_tickets = 0``, TLS 1.3 with ``OP_NO_TICKET`` still sends two
    stateful tickets per connection and keeps both sessions in the context's
    cache, which any client can fill.
    """
    cert, key = ca.issue_server_certificate(NAMES, tmp_path / "srv")
    context = server_context(cert, key)
    async with echo_server(context, cert) as server:
        for _ in range(5):
            reader, writer = await _connect(server.port, client_context(extra_ca=ca.cert_path))
            writer.write(b"ping\n")
            assert await reader.readline() == b"ping\n"  # tickets come after the handshake
            session = writer.get_extra_info("ssl_object").session
            assert session is None or not session.has_ticket
            await _close(writer)
    stats = context.session_stats()
    assert stats["accept"] == 5
    assert stats["number"] == 0


def test_client_context_always_verifies(ca: DevCA) -> None:
    for context in (client_context(), client_context(ca.cert_path)):
        assert context.verify_mode is ssl.CERT_REQUIRED
        assert context.check_hostname
        assert context.minimum_version is ssl.TLSVersion.TLSv1_3


def test_client_context_rejects_missing_ca_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        client_context(tmp_path / "nope.pem")


def test_local_hash_is_of_the_first_certificate(tmp_path: Path, ca: DevCA) -> None:
    cert, _ = ca.issue_server_certificate(NAMES, tmp_path / "srv")
    leaf_der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    chain = tmp_path / "chain.pem"
    chain.write_bytes(cert.read_bytes() + ca.cert_path.read_bytes())
    assert local_certificate_sha256(chain) == hashlib.sha256(leaf_der).digest()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("no certificate here\n")
    with pytest.raises(ValueError, match="no PEM certificate"):
        local_certificate_sha256(garbage)
