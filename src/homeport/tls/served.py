"""The relay's TLS listener: which certificate each handshake gets, swapped live.

One listening context; its ``sni_callback`` hands each handshake the context
for the name asked for:

* a pending TLS-ALPN-01 challenge for that name, and a ClientHello offering
  ALPN ``acme-tls/1`` -> the challenge context (``homeport.tls.alpn``);
* ``<anything>.<tenant-domain>`` -> the tenant wildcard certificate, if one
  is configured;
* anything else (the account host, or no SNI) -> the account host certificate.

Renewal (:meth:`ServedCertificates.reload`) builds a fresh context from the
new files, checks them first (``homeport.tls.check``), then swaps it in:
handshakes from then on get the new chain, and connections and tunnels
already open keep the session they have, so nothing is dropped. The
listening context itself is reloaded too (``load_cert_chain`` on the live
context), for clients that send no SNI.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from aiohttp import web
from cryptography import x509

from homeport.tls.alpn import ACME_TLS_ALPN, AlpnGate, TlsAlpn01Responder
from homeport.tls.check import check_certificate_files
from homeport.tls.client_hello import HelloRecorder, recorded_alpn
from homeport.tls.context import local_certificate_sha256, server_context
from homeport.tls.proxy_listener import IPNetwork, ProxyHeaderReader

log = logging.getLogger(__name__)

__all__ = ["ACCOUNT", "TENANT", "CertPair", "GatedTLSSite", "ServedCertificates"]

ACCOUNT = "account"
_SniCallback = Callable[[Any, str | None, ssl.SSLContext], object]
TENANT = "tenant"


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


class ServedCertificates:
    """Certificates for the account host and the tenant wildcard, chosen by SNI."""

    def __init__(
        self,
        account: CertPair,
        *,
        account_names: Sequence[str],
        tenant_domain: str,
        tenant: CertPair | None = None,
        profile: str = "modern",
        alpn: TlsAlpn01Responder | None = None,
    ) -> None:
        self._profile = profile
        self._suffix = "." + tenant_domain.lower().rstrip(".")
        self._names = {ACCOUNT: list(account_names), TENANT: [f"*{self._suffix}"]}
        self._alpn = alpn
        self._lock = threading.Lock()
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._pairs: dict[str, CertPair] = {}
        self._not_after: dict[str, dt.datetime] = {}
        self._account_sha256 = b""
        self._tenant_sha256: bytes | None = None
        self.context = self._build(ACCOUNT, account)
        # context.server_context's callback, which records the SNI for the Host check.
        self._remember = cast(_SniCallback | None, self.context.sni_callback)
        self.context.sni_callback = self._select
        if alpn is not None:
            alpn.on_pending = HelloRecorder(self.context).enable
        self._install(ACCOUNT, account, self.context)
        if tenant is not None:
            self._install(TENANT, tenant, self._build(TENANT, tenant))

    # ----------------------------------------------------------- public

    def account_cert_sha256(self) -> bytes:
        """SHA-256 of the account host's leaf now served (the tunnel's channel binding)."""
        with self._lock:
            return self._account_sha256

    def cert_sha256_for(self, server_name: str | None) -> bytes:
        """SHA-256 of the leaf a handshake for ``server_name`` gets (as :meth:`_select` picks).

        The tunnel's channel binding when an add-on dials its tenant name.
        """
        name = server_name.lower().rstrip(".") if server_name else None
        with self._lock:
            if self._tenant_sha256 is not None and name and name.endswith(self._suffix):
                return self._tenant_sha256
            return self._account_sha256

    def pair(self, kind: str) -> CertPair | None:
        with self._lock:
            return self._pairs.get(kind)

    def not_after(self, kind: str) -> dt.datetime | None:
        """notAfter of the leaf now served for ``kind`` (read when it was installed)."""
        with self._lock:
            return self._not_after.get(kind)

    def reload(self, kind: str, pair: CertPair) -> None:
        """Serve ``pair`` for ``kind`` to every new handshake; open ones are untouched.

        Raises ``CertificateProblem`` (and keeps serving the old one) if the new
        files are not fit to serve.
        """
        context = self._build(kind, pair)
        if kind == ACCOUNT:
            # Clients without SNI get the listening context's own chain.
            self.context.load_cert_chain(certfile=pair.cert, keyfile=pair.key)
        self._install(kind, pair, context)
        log.info("tls.certificate_reloaded", extra={"kind": kind})

    # -------------------------------------------------------- internals

    def _build(self, kind: str, pair: CertPair) -> ssl.SSLContext:
        check_certificate_files(pair.cert, pair.key, self._names[kind])
        return server_context(pair.cert, pair.key, profile=self._profile)

    def _install(self, kind: str, pair: CertPair, context: ssl.SSLContext) -> None:
        digest = local_certificate_sha256(pair.cert)
        # Kept from the file as loaded: the file on disk may be replaced before a reload.
        not_after = x509.load_pem_x509_certificate(pair.cert.read_bytes()).not_valid_after_utc
        with self._lock:
            self._contexts[kind] = context
            self._pairs[kind] = pair
            self._not_after[kind] = not_after
            if kind == ACCOUNT:
                self._account_sha256 = digest
            else:
                self._tenant_sha256 = digest

    def _select(
        self,
        ssl_object: ssl.SSLObject | ssl.SSLSocket,
        server_name: str | None,
        ctx: ssl.SSLContext,
    ) -> None:
        if self._remember is not None:
            self._remember(ssl_object, server_name, ctx)
        name = server_name.lower().rstrip(".") if server_name else None
        challenge = self._alpn.context_for(name) if self._alpn is not None else None
        if challenge is not None and ACME_TLS_ALPN in recorded_alpn(ssl_object):
            ssl_object.context = challenge
            return
        with self._lock:
            tenant = self._contexts.get(TENANT)
            account = self._contexts[ACCOUNT]
        if tenant is not None and name is not None and name.endswith(self._suffix):
            ssl_object.context = tenant
        else:
            ssl_object.context = account


class GatedTLSSite(web.TCPSite):
    """A TCP site whose connections pass :class:`~homeport.tls.alpn.AlpnGate` first.

    Same as ``web.TCPSite`` (whose ``start`` this mirrors) except for the
    protocol factory: TLS-ALPN-01 validation connections are closed after
    their handshake and never reach aiohttp, and ``route`` may give a
    connection another protocol by its TLS session (see ``AlpnGate``).
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None = None,
        port: int | None = None,
        *,
        sock: socket.socket | None = None,
        route: Callable[[object], Callable[[], asyncio.BaseProtocol] | None] | None = None,
        proxy_from: Sequence[IPNetwork] = (),
        **kwargs: Any,
    ) -> None:
        """``sock``: serve on this already bound socket instead of binding ``host:port``;
        ``route``: another protocol for some connections (see ``AlpnGate``);
        ``proxy_from``: connections from these networks start with a PROXY v2
        header and no others are accepted (``homeport.tls.proxy_listener``)."""
        super().__init__(runner, host, port, **kwargs)
        self._sock = sock
        self._route = route
        self._proxy_from = tuple(proxy_from)

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        factory: Callable[[], asyncio.BaseProtocol] = server

        def gate() -> asyncio.BaseProtocol:
            return AlpnGate(factory, self._route)

        accept: Callable[[], asyncio.BaseProtocol] = gate
        ssl_context = self._ssl_context
        if self._proxy_from:
            assert ssl_context is not None
            tls, networks = ssl_context, self._proxy_from

            def reader() -> asyncio.BaseProtocol:
                return ProxyHeaderReader(gate, tls, networks)

            accept, ssl_context = reader, None  # TLS starts after the header
        if self._sock is not None:
            self._server = await loop.create_server(
                accept, sock=self._sock, ssl=ssl_context, backlog=self._backlog
            )
        else:
            self._server = await loop.create_server(
                accept,
                self._host,
                self._port,
                ssl=ssl_context,
                backlog=self._backlog,
                reuse_address=self._reuse_address,
                reuse_port=self._reuse_port,
            )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
