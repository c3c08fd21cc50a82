"""SSL contexts for the relay (server) and the add-on and other clients.

One place decides the TLS posture, so no caller can weaken it by accident
(security checklist section 1, R-ADD-01). Also the channel-binding values
the tunnel handshake signs: a hash of the relay's leaf certificate as each
side sees it (RFC 5929 "tls-server-end-point" style; Python's ``ssl`` has no
TLS 1.3 channel binding or keying-material exporter).
"""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = [
    "ALPN_PROTOCOLS",
    "SERVER_ALPN",
    "TLS12_CIPHERS",
    "TLS_PROFILES",
    "TUNNEL_ALPN",
    "NoPeerCertificateError",
    "client_context",
    "local_certificate_sha256",
    "peer_certificate_sha256",
    "server_context",
]

# WebSockets (RFC 6455) and the account site speak HTTP/1.1.
ALPN_PROTOCOLS = ["http/1.1"]
#: The add-on's tunnel straight on TLS (homeport.tunnel.raw); private-use ALPN id.
TUNNEL_ALPN = "homeport-tunnel/1"
#: What the relay's listener offers, in its order of preference (the server picks):
#: an add-on offers only the tunnel, browsers only HTTP/1.1 (and h2, not served).
SERVER_ALPN = [TUNNEL_ALPN, "http/1.1"]


class NoPeerCertificateError(ssl.SSLError):
    """The TLS peer presented no certificate, so there is nothing to bind to."""


#: ``--tls-profile`` values (Mozilla server-side TLS 5.7 names).
TLS_PROFILES = ("modern", "intermediate")

#: TLS 1.2 suites of the ``intermediate`` profile: Mozilla 5.7 intermediate
#: without the DHE ones, i.e. ECDHE (forward secrecy) + AEAD only. No CBC,
#: no static-RSA key exchange, no DHE (it would need >= 2048-bit parameters).
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)


def server_context(cert: Path, key: Path, *, profile: str = "modern") -> ssl.SSLContext:
    """Context for a TLS server presenting the chain in ``cert``.

    - ``profile="modern"`` (default): TLS 1.3 only (Mozilla "modern",
      R-TLS-01/02/03): every TLS 1.3 suite is AEAD with forward secrecy
      (R-TLS-04), so there is no cipher list to get wrong.
    - ``profile="intermediate"``: adds TLS 1.2 for old clients, restricted to
      :data:`TLS12_CIPHERS` (ECDHE + AEAD). Still A+ (checklist 0.1); OpenSSL
      answers TLS_FALLBACK_SCSV by itself (R-TLS-08).
    - Key-exchange groups are left to OpenSSL's defaults; R-TLS-05
      restricts them through ``OPENSSL_CONF`` (Python 3.11 can set only one).
    - ``OP_NO_COMPRESSION``: stops CRIME-style secret recovery (R-TLS-08).
    - ``OP_NO_RENEGOTIATION``: no client-initiated renegotiation (DoS and
      renegotiation attacks; R-TLS-08). TLS 1.3 has none anyway; this keeps
      it so if the minimum is ever lowered.
    - ``OP_NO_TICKET``: no stateless session tickets, whose long-lived
      ticket key would undo forward secrecy (R-TLS-10).
    - ``num_tickets = 0``: no session resumption at all. With stateless
      tickets off, OpenSSL's TLS 1.3 server sends *stateful* ones instead: two
      per connection, each a session kept in the context's cache (up to
      20,480, two hours each), resumption secrets included. Any client can fill
      that cache by connecting and churn it: the soak filled it in two minutes,
      about 30 MiB of the relay's heap, with not one resumption (in a cluster
      the next connection may reach another node anyway; docs/performance.md).
      A browser keeps its connection alive, so the price, a full handshake per
      new connection, is paid rarely.
    - ALPN ``homeport-tunnel/1`` (add-ons' tunnels, on the account host
      only) and ``http/1.1``: nothing else is served. No 0-RTT: Python's
      ``ssl`` never accepts early data (R-TLS-09).

    ``cert`` should hold leaf + intermediates, never the root (R-TLS-07).
    """
    if profile not in TLS_PROFILES:
        raise ValueError(f"unknown TLS profile {profile!r} (use one of {', '.join(TLS_PROFILES)})")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if profile == "modern":
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    else:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(TLS12_CIPHERS)  # TLS 1.2 only; TLS 1.3 suites are all AEAD
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET | ssl.OP_NO_RENEGOTIATION
    context.num_tickets = 0
    context.set_alpn_protocols(SERVER_ALPN)
    context.load_cert_chain(certfile=cert, keyfile=key)
    context.sni_callback = _remember_server_name
    return context


_SNI_ATTRIBUTE = "homeport_server_name"


def _remember_server_name(
    ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _context: ssl.SSLContext
) -> None:
    # A server-side SSLObject does not expose the SNI it received; keep it so the
    # relay can insist that Host names the site the TLS session was opened for.
    setattr(ssl_object, _SNI_ATTRIBUTE, server_name.lower().rstrip(".") if server_name else None)


def requested_server_name(ssl_object: object) -> str | None:
    """The server name (SNI) the client sent in its TLS hello, if any."""
    name = getattr(ssl_object, _SNI_ATTRIBUTE, None)
    return name if isinstance(name, str) else None


def client_context(
    extra_ca: Path | None = None, *, alpn: list[str] | None = None
) -> ssl.SSLContext:
    """Verifying client context: system trust, plus ``extra_ca`` if given.

    Certificate chain and host name are always checked (R-TLS-14, R-ADD-01):
    this stops an interceptor with a self-signed, unknown-CA or wrong-name
    certificate. ``extra_ca`` adds a trust anchor (the development CA); it
    never replaces verification. TLS 1.3 minimum, like our servers.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(alpn or ALPN_PROTOCOLS)
    if extra_ca is not None:
        context.load_verify_locations(cafile=extra_ca)
    # Belt and braces: create_default_context promises these; never ship without.
    if context.verify_mode != ssl.CERT_REQUIRED or not context.check_hostname:
        raise RuntimeError("TLS client context would not verify the server")
    return context


def peer_certificate_sha256(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> bytes:
    """SHA-256 of the DER leaf certificate the peer sent in this session.

    The add-on compares this with the hash the relay signed: an interceptor
    holding another valid certificate for the relay's name yields a
    different hash, so the relay's signature cannot be relayed through it.

    RFC 5929 would pick the hash from the certificate's signature algorithm
    (SHA-384 for Let's Encrypt's ECDSA intermediates); we fix SHA-256 on
    both sides so the two can never disagree, which is all the binding needs.
    """
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise NoPeerCertificateError("TLS peer presented no certificate")
    return hashlib.sha256(der).digest()


def local_certificate_sha256(cert_pem_path: Path) -> bytes:
    """SHA-256 of the DER of the first (leaf) certificate in a served chain file.

    The relay's side of :func:`peer_certificate_sha256`. Compute it from the
    same file loaded into the server context, and again whenever the
    certificate is renewed, or every handshake will fail.
    """
    try:
        certs = x509.load_pem_x509_certificates(cert_pem_path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{cert_pem_path} holds no PEM certificate") from exc
    return hashlib.sha256(certs[0].public_bytes(serialization.Encoding.DER)).digest()
