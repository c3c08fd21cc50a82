"""Reading HAProxy's PROXY v2 header before TLS, and the client address it names.

With ``--proxy-protocol-from`` the relay's TLS listener accepts connections
without TLS (``create_server(ssl=None)``) and gives each a
:class:`ProxyHeaderReader`; it reads exactly the header, then starts TLS on
the same transport (``loop.start_tls``) with the protocol aiohttp would have
had (``AlpnGate``), so nothing else changes below.

Threats it stops:

* **one client standing for everyone**: behind HAProxy every connection comes
  from HAProxy's address, so per-address limits and the per-network sign-in
  throttles would count all people as one and one attacker could lock out
  every user. The header's address is used instead (:func:`client_address`);
* **spoofing**: only a connection whose socket peer is inside the trusted
  networks may say where it came from, and it MUST (no header: closed);
  a connection from anywhere else is closed before a byte is read, so a
  client that reaches a node past HAProxy cannot claim another address;
* **losing the ClientHello**: :meth:`ProxyHeaderReader.get_buffer` hands out
  exactly the bytes still missing (16, then the announced length), so no TLS
  byte is consumed by the header reader;
* **holding sockets for free**: a peer that sends half a header and stalls is
  closed after :data:`HEADER_TIMEOUT`; the TLS handshake then has the same
  timeout as without the option; a malformed, oversized or v1 header closes
  that connection only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

from aiohttp import web

from homeport.logs import LogThrottle
from homeport.tls.proxy_header import HEAD_SIZE, ProxyHeaderError, body_length, parse_header

log = logging.getLogger(__name__)

__all__ = [
    "HEADER_TIMEOUT",
    "IPNetwork",
    "ProxyHeaderReader",
    "client_address",
    "parse_networks",
    "proxied_remote",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: A trusted peer has this long to send its whole header.
HEADER_TIMEOUT = 5.0
#: The TLS handshake after it: asyncio's default, which the listener without the option uses.
HANDSHAKE_TIMEOUT = 60.0

#: Each proxied connection's client address, by its TLS session (``ssl.SSLObject``):
#: set once per connection, gone with it; no wrapper around the transport.
_proxied: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()
#: TLS handshakes under way (kept referenced until done).
_starting: set[asyncio.Future[None]] = set()
#: Refusals are caused by whoever reaches the port: logged, but not one line each.
_refusals = LogThrottle(burst=10, interval=60.0)


def client_address(transport: asyncio.BaseTransport | None) -> str:
    """The client's address for limits, throttles, audit and ``X-Forwarded-For``.

    The address HAProxy's PROXY header named, for a connection that had one;
    otherwise the socket peer. Empty when the transport has neither.
    """
    if transport is None:
        return ""
    if _proxied:
        ssl_object = transport.get_extra_info("ssl_object")
        found = _proxied.get(ssl_object) if ssl_object is not None else None
        if found is not None:
            return found
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


@web.middleware
async def proxied_remote(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """``request.remote`` is :func:`client_address` on the account site (every throttle,
    limit and audit line there reads it); outermost, so every other middleware sees it."""
    address = client_address(request.transport)
    if address and address != request.remote:
        request = request.clone(remote=address)
    return await handler(request)


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """``--proxy-protocol-from``: comma-separated networks (``10.0.0.5/32,fd00::/64``)."""
    networks = []
    for part in text.split(","):
        if part.strip():
            try:
                networks.append(ipaddress.ip_network(part.strip(), strict=True))
            except ValueError as exc:
                raise ValueError(f"--proxy-protocol-from: {exc}") from None
    if not networks:
        raise ValueError("--proxy-protocol-from: at least one network, e.g. 10.0.0.5/32")
    return tuple(networks)


def _log_refusal(event: str, peer: object, why: str | None) -> None:
    suppressed = _refusals.allow()
    if suppressed is None:
        return
    extra: dict[str, object] = {"peer": _peer_text(peer), "suppressed": suppressed}
    if why is not None:
        extra["why"] = why
    log.warning(event, extra=extra)


def _trusted(peer: object, networks: Sequence[IPNetwork]) -> bool:
    if not isinstance(peer, tuple) or not peer:
        return False
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class ProxyHeaderReader(asyncio.BufferedProtocol):
    """One connection until its PROXY header is read; then TLS with ``app_factory()``."""

    def __init__(
        self,
        app_factory: Callable[[], asyncio.BaseProtocol],
        ssl_context: ssl.SSLContext,
        trusted: Sequence[IPNetwork],
        *,
        header_timeout: float = HEADER_TIMEOUT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self._app_factory = app_factory
        self._ssl_context = ssl_context
        self._trusted = trusted
        self._header_timeout = header_timeout
        self._handshake_timeout = handshake_timeout
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray(HEAD_SIZE)
        self._filled = 0
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transport is a Transport in all but name (not a subclass).
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if not _trusted(peer, self._trusted):
            _log_refusal("relay.proxy_untrusted_peer", peer, None)
            self._transport.abort()
            return
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._header_timeout, self._refuse, "header timeout")

    def get_buffer(self, sizehint: int) -> memoryview:
        # Exactly what is still missing: never a byte of the ClientHello behind the header.
        return memoryview(self._buffer)[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        if self._filled < len(self._buffer):
            return
        try:
            if len(self._buffer) == HEAD_SIZE:
                length = body_length(bytes(self._buffer))
                if length:
                    self._buffer = self._buffer + bytearray(length)
                    return
            header = parse_header(bytes(self._buffer))
        except ProxyHeaderError as exc:
            self._refuse(str(exc))
            return
        assert self._transport is not None
        self._transport.pause_reading()
        client = header.client[0] if header.client is not None else None
        task = asyncio.ensure_future(self._start_tls(client))
        _starting.add(task)
        task.add_done_callback(_starting.discard)

    def eof_received(self) -> bool:
        return False  # close: a header never came

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()

    def _refuse(self, reason: str) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        peer = self._transport.get_extra_info("peername")
        _log_refusal("relay.proxy_header_refused", peer, reason)
        self._transport.abort()

    async def _start_tls(self, client: str | None) -> None:
        transport = self._transport
        assert transport is not None
        if self._deadline is not None:
            self._deadline.cancel()
        if transport.is_closing():
            return
        app = _Handover(self._app_factory())
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport,
                app,
                self._ssl_context,
                server_side=True,
                ssl_handshake_timeout=self._handshake_timeout,
            )
        except (OSError, TimeoutError, RuntimeError):  # ssl.SSLError is an OSError
            transport.abort()  # as a failed handshake without the option: that connection only
            return
        if tls is None:  # pragma: no cover - the transport closed during the handshake
            transport.abort()
            return
        if client is not None:
            _proxied[tls.get_extra_info("ssl_object")] = client
        try:
            # start_tls does not tell the protocol; the listener without the option would.
            app.hand_over(tls)
        except Exception:
            log.exception("relay.proxy_handover_failed")  # that connection only
            tls.abort()


class _Handover(asyncio.Protocol):
    """The TLS protocol's first app protocol, from ``start_tls`` until :meth:`hand_over`.

    ``start_tls`` finishes the handshake and goes on reading before the awaiting
    task resumes, so what the client sent right behind its Finished (a TLS 1.3
    client's first request, or an add-on's hello) reaches this protocol before
    the real one is told ``connection_made``. It is kept here and replayed, so
    not a byte is lost; after that the real protocol owns the transport (the
    gate calls ``set_protocol``) and this object is out of the path.
    """

    def __init__(self, app: asyncio.BaseProtocol) -> None:
        self._app = app
        self._early: list[bytes] = []
        self._eof = False
        self._lost: tuple[Exception | None] | None = None

    def data_received(self, data: bytes) -> None:
        self._early.append(data)

    def eof_received(self) -> None:
        self._eof = True  # replayed to the real protocol (TLS ignores "keep open" anyway)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = (exc,)

    def hand_over(self, transport: asyncio.BaseTransport) -> None:
        self._app.connection_made(transport)
        protocol = transport.get_protocol()
        if protocol is self:  # the gate closed it (a TLS-ALPN-01 validation)
            protocol = self._app
        for data in self._early:
            _deliver(protocol, data)
        self._early.clear()
        eof_kind = asyncio.Protocol | asyncio.BufferedProtocol
        if self._eof and isinstance(protocol, eof_kind) and not protocol.eof_received():
            transport.close()
        if self._lost is not None:
            protocol.connection_lost(self._lost[0])


def _deliver(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """``data`` to ``protocol`` as the transport would: ``data_received`` or its buffers."""
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:  # bounded: each round hands over at least one byte
            buffer = memoryview(protocol.get_buffer(len(view))).cast("B")
            size = min(len(buffer), len(view))
            if size == 0:
                raise RuntimeError("protocol gave an empty buffer")
            buffer[:size] = view[:size]
            protocol.buffer_updated(size)
            view = view[size:]
    elif isinstance(protocol, asyncio.Protocol):
        protocol.data_received(data)


def _peer_text(peer: object) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"
