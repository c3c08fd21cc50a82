"""ACME TLS-ALPN-01 (RFC 8737): proving control of a name on the TLS port itself.

The CA connects to port 443 with SNI = the name and ALPN ``acme-tls/1`` only,
and expects a self-signed certificate for exactly that name carrying the
critical ``acmeIdentifier`` extension (SHA-256 of the key authorization).
The ``acme`` library has no helper for it (it dropped TLS-ALPN-01), so the
challenge type is registered here and the certificate built with
``cryptography``.

Threats handled (R-ACME-07):

* the challenge certificate exists only while its challenge is validated
  (:class:`TlsAlpn01Responder` holds it in memory; nothing on disk);
* it is presented only to a handshake for exactly that name whose ClientHello
  offers ``acme-tls/1`` (read by ``homeport.tls.client_hello`` before the
  certificate is chosen), from a context whose only ALPN protocol is
  ``acme-tls/1``; a browser opening the same host meanwhile gets the real
  certificate. A connection made through a challenge context is closed right
  after the handshake (:class:`AlpnGate`) and never reaches the application,
  so no request is ever served under it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ssl
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from acme import challenges
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ObjectIdentifier
from josepy.jwk import JWK

__all__ = [
    "ACME_IDENTIFIER_OID",
    "ACME_TLS_ALPN",
    "TLSALPN01",
    "AlpnGate",
    "TLSALPN01Response",
    "TlsAlpn01Responder",
    "challenge_certificate",
]

ACME_TLS_ALPN = "acme-tls/1"
#: id-pe-acmeIdentifier (RFC 8737 §6.1)
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
_CONTEXT_MARK = "homeport_acme_challenge"


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """Response to tls-alpn-01: an empty JSON object, like every RFC 8555 response."""

    typ = "tls-alpn-01"


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """The tls-alpn-01 challenge; :meth:`validation` is the extension's digest."""

    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: JWK, **unused_kwargs: Any) -> bytes:
        return hashlib.sha256(self.key_authorization(account_key).encode()).digest()


def challenge_certificate(
    name: str, digest: bytes
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Self-signed certificate for ``name`` with the critical acmeIdentifier ``digest``.

    RFC 8737 §3: exactly one dNSName SAN, the extension value is the DER
    ``OCTET STRING`` of the SHA-256 digest, and it must be critical so no
    ordinary client could ever accept the certificate.
    """
    if len(digest) != 32:
        raise ValueError("acmeIdentifier takes a SHA-256 digest")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _challenge_context(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8737 §3: TLS 1.2 or later
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols([ACME_TLS_ALPN])
    # load_cert_chain reads files only: a private temporary directory, removed at once.
    with tempfile.TemporaryDirectory(prefix="homeport-alpn-") as tmp:
        cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.touch(mode=0o600)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context.load_cert_chain(cert_path, key_path)
    setattr(context, _CONTEXT_MARK, True)
    return context


def is_challenge_context(context: ssl.SSLContext) -> bool:
    return bool(getattr(context, _CONTEXT_MARK, False))


class TlsAlpn01Responder:
    """Challenge contexts by name, present only while their challenge is validated.

    A :class:`~homeport.tls.acme_bot.ChallengeSolver`; the relay's SNI
    selector asks :meth:`context_for`. Thread-safe (the bot runs in a worker
    thread, handshakes on the event loop).
    """

    challenge_type = TLSALPN01.typ

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._prepared: list[str] = []
        #: told True when the first challenge is pending, False when none is left
        #: (the listener records ClientHello ALPN only meanwhile)
        self.on_pending: Callable[[bool], None] | None = None

    def context_for(self, name: str | None) -> ssl.SSLContext | None:
        if name is None:
            return None
        with self._lock:
            return self._contexts.get(name.lower().rstrip("."))

    def prepare(
        self, name: str, challenge: challenges.KeyAuthorizationChallenge, account_key: JWK
    ) -> None:
        if not isinstance(challenge, TLSALPN01):
            raise TypeError("not a tls-alpn-01 challenge")
        if name.startswith("*."):
            raise ValueError("RFC 8737 §3: no TLS-ALPN-01 for wildcard names")
        name = name.lower().rstrip(".")
        digest = challenge.validation(account_key)
        context = _challenge_context(*challenge_certificate(name, digest))
        with self._lock:
            first = not self._contexts
            self._contexts[name] = context
        self._prepared.append(name)
        if first and self.on_pending is not None:
            self.on_pending(True)  # before the CA is told to connect

    def wait_ready(self) -> None:
        """Nothing to wait for: the listener answers from memory."""

    def cleanup(self) -> None:
        with self._lock:
            while self._prepared:
                self._contexts.pop(self._prepared.pop(), None)
            idle = not self._contexts
        if idle and self.on_pending is not None:
            self.on_pending(False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._contexts)


class AlpnGate(asyncio.Protocol):
    """Stands in front of the HTTP protocol of each TLS connection.

    A connection whose handshake used a challenge context (or negotiated
    ``acme-tls/1``) is closed at once: it exists only for the CA to see the
    certificate (RFC 8737 §3) and must never carry a request. Any other
    connection is handed to the real protocol, which then owns the transport.
    """

    def __init__(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        route: Callable[[object], Callable[[], asyncio.BaseProtocol] | None] | None = None,
    ) -> None:
        self._factory = protocol_factory
        #: Picks another protocol for a connection from its TLS session (its SNI):
        #: the relay serves tenant hosts below aiohttp (homeport.relay.proxy).
        self._route = route

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and (
            ssl_object.selected_alpn_protocol() == ACME_TLS_ALPN
            or is_challenge_context(ssl_object.context)
        ):
            transport.close()
            return
        factory = self._route(ssl_object) if self._route is not None else None
        protocol = (factory or self._factory)()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        """Only reached for connections this gate closed itself."""
