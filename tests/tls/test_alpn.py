"""TLS-ALPN-01 (RFC 8737) on the relay's TLS listener, against pebble (R-ACME-01/07)."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from acme import challenges
from aiohttp import web
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st
from josepy import b64encode
from josepy.jwk import JWKEC
from pebble import pebble_available, start_pebble

from homeport.tls.acme_bot import AcmeBot, RetryPolicy
from homeport.tls.alpn import (
    ACME_IDENTIFIER_OID,
    ACME_TLS_ALPN,
    TLSALPN01,
    TlsAlpn01Responder,
    challenge_certificate,
)
from homeport.tls.client_hello import offered_alpn
from homeport.tls.devca import create_independent_ca
from homeport.tls.served import CertPair, GatedTLSSite, ServedCertificates

NAME = "account.relay.test"
needs_pebble = pytest.mark.skipif(not pebble_available(), reason="scripts/system-deps: pebble")


@dataclass
class Listener:
    port: int
    served: ServedCertificates
    responder: TlsAlpn01Responder
    ca_file: Path


@pytest.fixture
async def listener(tmp_path: Path) -> AsyncIterator[Listener]:
    """The relay's TLS site (SNI selector + ALPN gate) in front of a tiny app."""
    ca = create_independent_ca(tmp_path / "ca")
    cert, key = ca.issue_server_certificate([NAME], tmp_path / "tls")
    responder = TlsAlpn01Responder()
    served = ServedCertificates(
        CertPair(cert, key),
        account_names=[NAME],
        tenant_domain="home.relay.test",
        alpn=responder,
    )
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = GatedTLSSite(runner, "127.0.0.1", 0, ssl_context=served.context)
    await site.start()
    try:
        yield Listener(site.port, served, responder, ca.cert_path)
    finally:
        await runner.cleanup()


def _client(alpn: list[str], ca_file: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if ca_file is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the challenge certificate is self-signed
    context.set_alpn_protocols(alpn)
    return context


async def handshake(
    port: int, alpn: list[str], ca_file: Path | None = None
) -> tuple[x509.Certificate, str | None, bytes]:
    """Connect, send one request, return (leaf, negotiated ALPN, whatever came back)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1", port, ssl=_client(alpn, ca_file), server_hostname=NAME
        ),
        20,
    )
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True)
    chosen = ssl_object.selected_alpn_protocol()
    writer.write(f"GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
    try:
        data = await asyncio.wait_for(reader.read(), 20)
    except (ConnectionError, ssl.SSLError):
        data = b""
    writer.close()
    return x509.load_der_x509_certificate(der), chosen, data


def test_challenge_certificate_profile() -> None:
    digest = hashlib.sha256(b"token.thumbprint").digest()
    cert, key = challenge_certificate(NAME, digest)
    ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    assert ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    assert ext.value.value == b"\x04\x20" + digest  # DER OCTET STRING (RFC 8737 §3)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [NAME]
    assert cert.public_key() == key.public_key()
    with pytest.raises(ValueError, match="SHA-256"):
        challenge_certificate(NAME, b"short")


def _challenge(token: bytes) -> TLSALPN01:
    jobj = {"type": "tls-alpn-01", "token": b64encode(token).decode()}
    chall = challenges.Challenge.from_json(jobj)
    assert isinstance(chall, TLSALPN01)
    return chall


async def test_challenge_served_only_for_acme_alpn_and_then_closed(listener: Listener) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    account = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    # No challenge pending: the real certificate and the application, for any ALPN.
    leaf, chosen, data = await handshake(listener.port, ["http/1.1"], listener.ca_file)
    assert chosen == "http/1.1"
    assert b"hello" in data
    _, chosen, data = await handshake(listener.port, [ACME_TLS_ALPN], listener.ca_file)
    assert chosen is None  # acme-tls/1 is never offered outside a validation
    assert b"hello" in data

    chall = _challenge(b"0123456789abcdef0123456789abcdef")
    listener.responder.prepare(NAME, chall, account)
    assert len(listener.responder) == 1
    cert, chosen, data = await handshake(listener.port, [ACME_TLS_ALPN])
    assert chosen == ACME_TLS_ALPN
    ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID).value
    assert isinstance(ext, x509.UnrecognizedExtension)
    assert ext.value[2:] == chall.validation(account)
    assert data == b""  # closed after the handshake: no request is ever served on it
    # A browser opening the same host meanwhile gets the real certificate and the app.
    for offered in (["h2", "http/1.1"], ["http/1.1"]):
        leaf_now, chosen, data = await handshake(listener.port, offered, listener.ca_file)
        assert leaf_now == leaf
        assert b"hello" in data
    # Another name is unaffected while the challenge is pending.
    _, writer = await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1",
            listener.port,
            ssl=_client([ACME_TLS_ALPN], None),
            server_hostname="other.relay.test",
        ),
        20,
    )
    other = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    assert x509.load_der_x509_certificate(other) == leaf

    listener.responder.cleanup()
    assert len(listener.responder) == 0
    leaf2, chosen, data = await handshake(listener.port, ["http/1.1"], listener.ca_file)
    assert leaf2 == leaf
    assert b"hello" in data


def test_wildcards_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    account = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ValueError, match="wildcard"):
        TlsAlpn01Responder().prepare("*.home.relay.test", _challenge(b"x" * 32), account)


@needs_pebble
async def test_issue_by_tls_alpn01_against_pebble(tmp_path: Path, listener: Listener) -> None:
    # pebble's default 5 % nonce rejection: the bot's retries carry it through.
    with start_pebble(tmp_path / "pebble", http_port=1, tls_port=listener.port) as pebble:
        bot = AcmeBot(
            pebble.directory_url,
            tmp_path / "acme" / "account.key",
            tmp_path / "certs",
            [NAME],
            listener.responder,
            pebble.ca_bundle,
            retry=RetryPolicy(order_attempts=2),
        )
        issued = await asyncio.wait_for(bot.obtain_async(), 90)
    san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == [NAME]
    assert issued.chain
    assert len(listener.responder) == 0


def client_hello(alpn: list[str] | None) -> bytes:
    """A real ClientHello from Python's ssl, as the handshake message (no record header)."""
    context = ssl.create_default_context()
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=NAME)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    record = outgoing.read()
    assert record[0] == 22  # handshake
    return record[5:]


def test_offered_alpn_parser() -> None:
    assert offered_alpn(client_hello(["acme-tls/1"])) == ("acme-tls/1",)
    assert offered_alpn(client_hello(["h2", "http/1.1"])) == ("h2", "http/1.1")
    assert offered_alpn(client_hello(None)) is None
    hello = client_hello(["acme-tls/1", "http/1.1"])
    # Truncated or corrupted input never raises; it just yields no (or less) ALPN.
    for cut in range(len(hello)):
        result = offered_alpn(hello[:cut])
        assert result is None or set(result) <= {"acme-tls/1", "http/1.1"}
    assert offered_alpn(b"\x02" + hello[1:]) is None  # not a ClientHello


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_offered_alpn_never_raises(data: bytes) -> None:
    result = offered_alpn(b"\x01" + data)
    assert result is None or isinstance(result, tuple)
