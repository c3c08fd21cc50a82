"""The add-on's connection to the relay: dial out, verify, authenticate, stay up.

The add-on checks the relay *before* it reveals anything: the relay must sign
our fresh challenge together with the certificate hash we observed in this
TLS session, with a key we pin.  Only then do we prove our own key.  The
tunnel then lives until it breaks, and we dial again with full-jitter
exponential backoff (1 s doubling to 30 s); a relay's GOAWAY or a fresh link
makes us reconnect at once.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from yarl import URL

from homeport import __version__
from homeport.addon import app_links
from homeport.addon.forward import HomeAssistantForwarder
from homeport.addon.gate import RemoteAccessGate
from homeport.addon.ha_trust import TrustMonitor
from homeport.addon.upstream import Origin, UpstreamPool
from homeport.keys import load_or_create_private_key
from homeport.memory import MemoryTrimmer
from homeport.protocol.connection import Role, TunnelConnection
from homeport.protocol.events import GoAwayReceived
from homeport.protocol.handshake import (
    AddonHandshake,
    HandshakeError,
    HandshakeErrorCode,
    RelayRefused,
    Unlinked,
    Welcome,
    normalise_host,
)
from homeport.tls.context import client_context, peer_certificate_sha256
from homeport.tunnel.pipes import MAX_MESSAGE, Pipe, WebSocketPipe
from homeport.tunnel.raw import TUNNEL_ALPN, ChannelClosed, RawPipe
from homeport.tunnel.session import GOAWAY_REPLACED, TunnelSession
from homeport.waits import wait_for_event

log = logging.getLogger(__name__)

BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0
HANDSHAKE_TIMEOUT = 15.0
#: Close codes from the relay that mean "dial again right away" (see relay.hub).
RECONNECT_NOW = frozenset({4001, 4002, 1012})
#: Where a linked add-on's tunnel dials (its own tenant name, learnt from the relay).
TUNNEL_HOST_FILE = "tunnel-host"
#: The relay's refusal of a key on a tenant name it does not own (relay.hub.WRONG_HOME).
WRONG_HOME = "wrong_home"
#: Failed dials of the tenant name in a row before one dial of the account host.
TENANT_DIAL_TRIES = 3


class State(enum.Enum):
    CONNECTING = "connecting"
    UNLINKED = "unlinked"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass
class AddonStatus:
    state: State = State.CONNECTING
    link_code: str | None = None
    link_expires_in: int | None = None
    instance_id: str | None = None
    public_url: str | None = None
    last_error: str | None = None
    connects: int = 0


@dataclass(frozen=True)
class AddonConfig:
    relay_url: str
    ha_url: str
    state_dir: Path
    pinned_keys: tuple[Ed25519PublicKey, ...]
    relay_ca: Path | None = None
    ping_interval: float = 15.0
    ping_timeout: float = 10.0
    #: "auto": the tunnel on TLS itself (ALPN), falling back to a WebSocket for a relay
    #: that does not offer it; "raw" or "websocket" to insist on one.
    transport: str = "auto"
    #: Reconnect back-off (full jitter, ``backoff_base`` doubling to ``backoff_cap``)
    #: and the bound on one dial plus handshake, in seconds.
    backoff_base: float = BACKOFF_BASE
    backoff_cap: float = BACKOFF_CAP
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    extra: dict[str, Any] = field(default_factory=dict)


def backoff_delay(attempt: int, *, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 16)))


class LocalhostResolver(AbstractResolver):
    """Resolve ``*.localhost`` to loopback ourselves (RFC 6761 §6.3); glibc does not."""

    def __init__(self) -> None:
        self._default = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host == "localhost" or host.endswith(".localhost"):
            return [
                ResolveResult(
                    hostname=host,
                    host="127.0.0.1",
                    port=port,
                    family=socket.AF_INET,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
            ]
        return await self._default.resolve(host, port, family)

    async def close(self) -> None:
        await self._default.close()


class AddonClient:
    def __init__(
        self,
        config: AddonConfig,
        *,
        on_status: Callable[[AddonStatus], None] | None = None,
        gate: RemoteAccessGate | None = None,
        trust: TrustMonitor | None = None,
    ) -> None:
        url = URL(config.relay_url)
        if url.scheme != "wss" or not url.host:
            raise ValueError("the relay URL must be wss://host[:port]/v1/tunnel")
        self.config = config
        self.host = url.host
        self.status = AddonStatus()
        self._on_status = on_status
        self._gate = gate
        self._trust = trust
        self._key = load_or_create_private_key(config.state_dir / "addon-key.pem")
        self._ssl: ssl.SSLContext = client_context(config.relay_ca)
        self._relay: aiohttp.ClientSession | None = None
        self._ha: aiohttp.ClientSession | None = None
        self._upstream: UpstreamPool | None = None
        self._reconnect_now = asyncio.Event()
        self._sessions: set[TunnelSession] = set()
        #: The tunnel new work goes over (a replaced one may still be draining).
        self._live: TunnelSession | None = None
        self._stopping = False
        self._raw_unsupported = False
        #: The connection waiting for its link code to be used, if any.
        self._waiting: _Channel | None = None
        self._memory = MemoryTrimmer()
        #: The tenant name ``<instance-id>.<tenant-domain>`` this add-on's tunnel dials
        #: once linked (the relay says so in its welcome); None: the account host.
        self._tunnel_host = _load_tunnel_host(config.state_dir / TUNNEL_HOST_FILE, self.host)
        self._tenant_failures = 0

    def _set(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self.status, name, value)
        if self._on_status is not None:
            self._on_status(self.status)

    @property
    def tunnel(self) -> TunnelSession | None:
        """The tunnel new work goes over, while one is up."""
        return self._live

    def app_links_supported(self) -> bool | None:
        """Whether the relay creates app links over the tunnel; None while not connected."""
        return app_links.supported(self._live)

    async def create_app_link(self, name: str) -> app_links.CreatedAppLink:
        """A new app link for this home, from the relay; :class:`AppLinkRefused` otherwise."""
        return await app_links.create_app_link(self._live, name)

    async def __aenter__(self) -> AddonClient:
        self._relay = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, resolver=LocalhostResolver()),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        # The data path: raw keep-alive connections to Home Assistant (addon/upstream.py).
        self._upstream = UpstreamPool(Origin.parse(self.config.ha_url))
        # The add-on's own questions to Home Assistant (the trust probe).  No cookie
        # jar: nothing one answer sets may ride along on another request.
        self._ha = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=4, resolver=LocalhostResolver()),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10),
        )
        self._memory.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True
        await self._memory.stop()
        if self._waiting is not None:  # waiting for a link: the relay must see us go
            await self._waiting.close()
        for session in list(self._sessions):
            await session.close("add-on stopping")
        if self._relay is not None:
            await self._relay.close()
        if self._ha is not None:
            await self._ha.close()
        if self._upstream is not None:
            await self._upstream.close()

    async def run_forever(self) -> None:
        attempt = 0
        while not self._stopping:
            self._set(state=State.CONNECTING)
            try:
                outcome = await self.connect_once()
            except (aiohttp.ClientError, OSError, TimeoutError, HandshakeError) as exc:
                outcome = "error"
                self._set(state=State.DISCONNECTED, last_error=_describe(exc))
                log.warning("addon.connect_failed", extra={"error": _describe(exc)})
            if outcome == "served":
                attempt = 0
            if outcome in ("served", "reconnect") and self._reconnect_now.is_set():
                self._reconnect_now.clear()
                continue
            if outcome == "reconnect":
                continue
            delay = backoff_delay(
                attempt, base=self.config.backoff_base, cap=self.config.backoff_cap
            )
            attempt += 1
            log.info("addon.retry", extra={"seconds": round(delay, 2)})
            self._reconnect_now.clear()
            await wait_for_event(self._reconnect_now, delay)

    async def connect_once(self) -> str:
        """One connection: "served", "replaced", "reconnect" (dial again now) or "refused"."""
        assert self._relay is not None
        assert self._ha is not None
        # Bounded: a relay that accepts TCP and then stalls (hung, paused, a black
        # hole) must not hold the add-on for aiohttp's default five minutes.
        host = self._dial_host()
        try:
            async with asyncio.timeout(self.config.handshake_timeout):
                channel = await self._dial(host)
        except BaseException:
            self._tenant_dial_failed(host)
            raise
        try:
            ssl_object = channel.ssl_object()
            if ssl_object is None:
                raise HandshakeError(HandshakeErrorCode.MALFORMED, "no TLS session")
            cert_sha256 = peer_certificate_sha256(ssl_object)
            handshake = AddonHandshake(
                host,
                self.config.pinned_keys,
                self._key,
                cert_sha256,
                agent=f"homeport-addon/{__version__}",
            )
            async with asyncio.timeout(self.config.handshake_timeout):
                await channel.send_text(handshake.hello())
                await channel.send_text(
                    handshake.receive_server_proof(await channel.receive_text())
                )
                result = handshake.receive_result(await channel.receive_text())
        except BaseException:
            self._tenant_dial_failed(host)
            await channel.close()
            raise
        self._tenant_failures = 0
        if isinstance(result, RelayRefused) and host != self.host and result.code == WRONG_HOME:
            # Our key no longer owns that name (unlinked, or linked anew): back to the
            # account host, which tells us what we are now.
            await channel.close()
            log.warning("addon.tunnel_host_refused")
            self._remember_tunnel_host(None)
            return "reconnect"
        if isinstance(result, Unlinked):
            self._waiting = channel
            try:
                return await self._await_link(channel, result)
            finally:
                self._waiting = None
                await channel.close()
        if isinstance(result, RelayRefused):
            await channel.close()
            self._set(state=State.DISCONNECTED, last_error=f"relay refused: {result.message}")
            log.error("addon.refused", extra={"code": result.code, "reason": result.message})
            return "refused"
        moving = self._learn_tunnel_host(host, result)
        return await self._serve(channel.pipe(), result, moving=moving)

    def _dial_host(self) -> str:
        """The tenant name once known (the raw tunnel only), else the account host."""
        if (
            self._tunnel_host is None
            or self.config.transport == "websocket"
            or self._raw_unsupported
            or self._tenant_failures >= TENANT_DIAL_TRIES
        ):
            self._tenant_failures = 0
            return self.host
        return self._tunnel_host

    def _tenant_dial_failed(self, host: str) -> None:
        if host != self.host:
            self._tenant_failures += 1

    def _learn_tunnel_host(self, dialled: str, welcome: Welcome) -> bool:
        """Keep the tenant name the relay's welcome names; whether to move there now.

        Only a name of the form ``<our instance id>.<domain>`` that is also the
        host of our public URL is taken: the welcome comes from the relay we have
        just verified, but a wrong name must not send the tunnel astray.
        """
        if self.config.transport == "websocket":
            return False
        wanted = welcome.settings.get("tunnel_host")
        if not isinstance(wanted, str):
            return False  # an older relay: the account host it is
        try:
            name = normalise_host(wanted)
        except ValueError:
            return False
        if not name.startswith(welcome.instance_id.lower() + ".") or URL(welcome.url).host != name:
            log.warning("addon.tunnel_host_ignored")
            return False
        if name != self._tunnel_host:
            self._remember_tunnel_host(name)
        return dialled != name

    def _remember_tunnel_host(self, name: str | None) -> None:
        self._tunnel_host = name
        path = self.config.state_dir / TUNNEL_HOST_FILE
        try:
            if name is None:
                path.unlink(missing_ok=True)
            else:
                temporary = path.with_suffix(".tmp")
                temporary.write_text(name + "\n")
                temporary.replace(path)
        except OSError as exc:  # kept in memory; the next welcome says it again
            log.warning("addon.tunnel_host_not_saved", extra={"error": type(exc).__name__})

    async def _dial(self, host: str) -> _Channel:
        """The tunnel on TLS itself if the relay offers it, else inside a WebSocket.

        ``host`` other than the account host (our tenant name): the raw tunnel only.
        """
        transport = self.config.transport
        if host != self.host:
            tenant = await self._dial_raw(host)
            if tenant is None:
                raise ConnectionError("the relay does not offer the tunnel on our tenant name")
            return tenant
        if transport != "websocket" and not self._raw_unsupported:
            raw = await self._dial_raw(host)
            if raw is not None:
                return raw
            if transport == "raw":
                raise ConnectionError("the relay does not offer the raw tunnel (ALPN)")
            # An older relay: remember it until the add-on restarts (no double dial).
            self._raw_unsupported = True
            log.info("addon.raw_tunnel_unsupported")
        assert self._relay is not None
        ws = await self._relay.ws_connect(
            self.config.relay_url,
            max_msg_size=MAX_MESSAGE,
            compress=0,
            autoping=True,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10),
        )
        return _WebSocketChannel(ws)

    async def _dial_raw(self, host: str) -> _RawChannel | None:
        """A raw tunnel connection, or None if the relay did not choose our ALPN."""
        url = URL(self.config.relay_url)
        address = host
        if address == "localhost" or address.endswith(".localhost"):
            address = "127.0.0.1"  # RFC 6761 §6.3 (see LocalhostResolver)
        context = client_context(self.config.relay_ca, alpn=[TUNNEL_ALPN])
        transport, pipe = await asyncio.get_running_loop().create_connection(
            RawPipe, address, url.port or 443, ssl=context, server_hostname=host
        )
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != TUNNEL_ALPN:
            transport.abort()
            return None
        return _RawChannel(pipe)

    async def _await_link(self, channel: _Channel, result: Unlinked) -> str:
        self._set(
            state=State.UNLINKED, link_code=result.link_code, link_expires_in=result.expires_in
        )
        print(f"Link code: {result.link_code}", flush=True)
        log.info("addon.unlinked", extra={"expires_in": result.expires_in})
        code = await channel.closed_code()  # the relay closes when linked or expired
        return "reconnect" if code in RECONNECT_NOW else "error"

    async def _serve(self, pipe: Pipe, welcome: Welcome, *, moving: bool = False) -> str:
        """Serve one tunnel until it ends or we dial again (GOAWAY, or ``moving``).

        ``moving``: we were welcomed on the account host but have a tenant name to
        dial; this tunnel serves until the new one is up (make-before-break), and
        the relay retires it when the new one registers.
        """
        assert self._ha is not None
        assert self._upstream is not None
        send_forwarded: Callable[[], bool] = _always
        checking: asyncio.Task[Any] | None = None
        if self._trust is not None:
            # On every (re)connect, in the background (the tunnel must answer the
            # relay's pings meanwhile); until it answers, the last verdict holds.
            checking = asyncio.create_task(self._trust.check(self._ha))
            send_forwarded = self._trust.send_forwarded
        forwarder = HomeAssistantForwarder(
            self._upstream, send_forwarded=send_forwarded, gate=self._gate
        )
        replaced: list[GoAwayReceived] = []

        def on_goaway(event: GoAwayReceived) -> None:
            if event.reason == GOAWAY_REPLACED:
                # A newer connection with our key took over (a second copy of this
                # add-on?): dialling straight back would take over again, forever.
                replaced.append(event)
            else:
                self._reconnect_now.set()

        session = TunnelSession(
            pipe,
            TunnelConnection(Role.ADDON, version=welcome.version),
            on_open=forwarder.open,
            on_goaway=on_goaway,
            ping_interval=self.config.ping_interval,
            ping_timeout=self.config.ping_timeout,
            name="addon",
        )
        self._sessions.add(session)
        self._live = session
        self._set(
            state=State.CONNECTED,
            link_code=None,
            instance_id=welcome.instance_id,
            public_url=welcome.url,
            last_error=None,
            connects=self.status.connects + 1,
        )
        log.info(
            "addon.connected",
            extra={
                "instance": welcome.instance_id,
                "transport": "websocket" if isinstance(pipe, WebSocketPipe) else "raw",
            },
        )
        runner = asyncio.create_task(session.run())
        runner.add_done_callback(lambda _t: self._retire(session))
        if moving:
            log.info("addon.moving_to_tunnel_host")
            self._reconnect_now.set()
        reconnect = asyncio.create_task(self._reconnect_now.wait())
        await asyncio.wait({runner, reconnect}, return_when=asyncio.FIRST_COMPLETED)
        reconnect.cancel()
        if checking is not None:
            checking.cancel()
        if not runner.done():
            # GOAWAY: dial the next relay now; this tunnel finishes its streams
            # in the background and closes when the relay closes it.
            log.info("addon.goaway")
            return "served"
        if replaced:
            # Back off without resetting the attempt count: two copies sharing one
            # key take turns ever more slowly instead of flapping.
            reason = "replaced by a newer connection with this add-on's key"
            self._set(state=State.DISCONNECTED, last_error=reason)
            log.warning("addon.replaced")
            return "replaced"
        self._set(state=State.DISCONNECTED, last_error=session.close_reason)
        log.warning("addon.disconnected", extra={"reason": session.close_reason})
        return "served"

    def _retire(self, session: TunnelSession) -> None:
        self._sessions.discard(session)
        if self._live is session:
            self._live = None


def _always() -> bool:
    return True


def _load_tunnel_host(path: Path, account_host: str) -> str | None:
    """The tenant name saved by an earlier run, if it is a sane host name."""
    try:
        name = normalise_host(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return None if name == account_host else name


class _Channel(Protocol):
    """The handshake over either transport, then the tunnel's pipe."""

    def ssl_object(self) -> ssl.SSLObject | None: ...
    async def send_text(self, text: str) -> None: ...
    async def receive_text(self) -> str: ...
    async def closed_code(self) -> int: ...
    async def close(self) -> None: ...
    def pipe(self) -> Pipe: ...


class _WebSocketChannel:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws

    def ssl_object(self) -> ssl.SSLObject | None:
        found = self._ws.get_extra_info("ssl_object")
        return found if isinstance(found, ssl.SSLObject) else None

    async def send_text(self, text: str) -> None:
        await self._ws.send_str(text)

    async def receive_text(self) -> str:
        msg = await self._ws.receive()
        if msg.type is aiohttp.WSMsgType.TEXT:
            return str(msg.data)
        raise ConnectionError(
            f"relay closed the connection during the handshake ({self._ws.close_code})"
        )

    async def closed_code(self) -> int:
        async for _msg in self._ws:
            pass  # the relay sends nothing more
        return self._ws.close_code or 0

    async def close(self) -> None:
        await self._ws.close()

    def pipe(self) -> Pipe:
        return WebSocketPipe(self._ws)


class _RawChannel:
    def __init__(self, raw: RawPipe) -> None:
        self._raw = raw

    def ssl_object(self) -> ssl.SSLObject | None:
        found = self._raw.get_extra_info("ssl_object")
        return found if isinstance(found, ssl.SSLObject) else None

    async def send_text(self, text: str) -> None:
        self._raw.send_text(text)

    async def receive_text(self) -> str:
        try:
            return await self._raw.receive_text()
        except ChannelClosed as closed:
            raise ConnectionError(
                f"relay closed the connection during the handshake ({closed.code})"
            ) from None

    async def closed_code(self) -> int:
        try:
            await self._raw.receive_text()
        except ChannelClosed as closed:
            return closed.code
        self._raw.abort()
        return 0  # anything but a close: not what a waiting relay sends

    async def close(self) -> None:
        self._raw.close()

    def pipe(self) -> Pipe:
        return self._raw


def _describe(exc: BaseException) -> str:
    if isinstance(exc, HandshakeError):
        return f"handshake failed: {exc.code}: {exc.message}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        # The same words over both transports: the verifier's reason and OpenSSL's code.
        return f"relay certificate not trusted: {exc.verify_message} ({exc.reason})"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason = getattr(exc, "verify_message", None) or str(exc)
        return f"relay certificate not trusted: {reason}"
    return f"{type(exc).__name__}: {exc}"
