"""The tunnel hub: where add-ons connect, prove themselves, and stay.

``GET /v1/tunnel`` on the account host upgrades to a WebSocket.  The relay
proves itself first (see :mod:`homeport.protocol.handshake`); only then does
the add-on prove its own key.  A known key gets ``welcome`` and its tunnel is
registered for its instance; an unknown key gets a short-lived link code and
waits, and is asked to reconnect once someone links it.  Link codes are
rate-limited per peer network (:data:`homeport.accounts.throttle.LINK_NETWORK`,
10 an hour per IPv4 address or IPv6 /64): beyond that the hub answers
``error``/``rate_limited`` and closes, so a key generator cannot flood the
code space or the database.

A registered tunnel may also carry the add-on's owner actions (CONTROL
frames, answered by :mod:`homeport.relay.addon_control`), always for the
instance its handshake proved, never another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol

from aiohttp import WSMsgType, web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from homeport.accounts.db import DATABASE_ERRORS
from homeport.accounts.service import Accounts
from homeport.accounts.throttle import LINK_NETWORK, network_key
from homeport.keys import public_key_text
from homeport.protocol.connection import RateBudget, Role, Settings, TunnelConnection
from homeport.protocol.handshake import (
    HandshakeError,
    HandshakeErrorCode,
    JSONValue,
    RelayHandshake,
)
from homeport.relay.cluster.messages import key_fingerprint
from homeport.relay.config import RelayConfig
from homeport.relay.presence import PresenceRecorder
from homeport.tls.proxy_listener import client_address
from homeport.tunnel.control import ControlHandler
from homeport.tunnel.pipes import MAX_MESSAGE, Pipe, WebSocketPipe
from homeport.tunnel.raw import RawPipe
from homeport.tunnel.session import GOAWAY_REPLACED, TunnelSession
from homeport.waits import wait_for_event

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
#: How long a cluster node holds a browser's request for a tunnel on its way here.
ARRIVAL_WAIT = 5.0
#: WebSocket close codes the add-on acts on (private range, RFC 6455 §7.4.2).
CLOSE_LINKED = 4001  # reconnect now: you have been linked
CLOSE_CODE_EXPIRED = 4002  # reconnect now: fetch a fresh link code
CLOSE_HANDSHAKE_FAILED = 4400
#: Tunnels a home may open at once, then one a minute; a tunnel ended for flooding
#: empties its budget (see TunnelHub._tunnel_budget).
TUNNEL_BURST = 10
TUNNEL_RATE = 1 / 60
TUNNEL_BUDGETS = 100_000
#: The close reason a session gives when its peer went past a protocol budget.
FLOODED = "protocol error: FLOOD"
CLOSE_TRY_LATER = 1013  # the relay is restarting: dial again after the usual back-off
CLOSE_RATE_LIMITED = 4429
RATE_LIMITED = "rate_limited"  # handshake ``error`` code: too many link codes
#: Handshake ``error`` code and close code: the key proven on a tenant name does not
#: own that home (or is linked to none); nothing is served on the connection.
WRONG_HOME = "wrong_home"
CLOSE_WRONG_HOME = 4403
_CLOSED = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})


class TunnelHub:
    def __init__(
        self,
        config: RelayConfig,
        accounts: Accounts,
        server_key: Ed25519PrivateKey,
        cert_sha256: Callable[[], bytes],
    ) -> None:
        self.config = config
        self.accounts = accounts
        self.server_key = server_key
        self.cert_sha256 = cert_sha256
        self.tunnels: dict[str, TunnelSession] = {}
        self._sessions: set[TunnelSession] = set()
        #: Tunnels each home may still open (see _tunnel_budget), least recent first.
        self._tunnel_budgets: OrderedDict[str, RateBudget] = OrderedDict()
        #: Raw tunnel connections being served (handshake, link wait, tunnel).
        self._raw_tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        #: Owner actions from add-ons (relay/addon_control.py), given (instance id, peer);
        #: with None the relay does not advertise CONTROL.
        self.control_handler: Callable[[str, str], ControlHandler] | None = None
        #: Add-on key -> wake-ups of its connections waiting for a link code to be used.
        self._link_waiters: dict[str, set[asyncio.Event]] = {}
        #: Connect and disconnect times, written in batches (relay/presence.py).
        self.presence = PresenceRecorder(accounts.record_presence)
        #: SHA-256 of the leaf served for a TLS name (tenant names may have their own
        #: certificate); None: the account host's for every name.
        self.cert_sha256_for: Callable[[str], bytes] | None = None
        #: Told of every tunnel registered here / dropped from here (the cluster's
        #: presence directory, relay/cluster/presence.py).
        self.on_tunnel_up: Callable[[str, TunnelSession], None] | None = None
        self.on_tunnel_down: Callable[[str], None] | None = None
        #: A cluster node: a browser came for a home whose tunnel is not here (ask the
        #: node holding it to move it, relay/cluster/presence.py). None: one relay.
        self.on_tunnel_missing: Callable[[str], Awaitable[object]] | None = None
        #: Homes someone waits for (await_tunnel) -> their wake-ups when the tunnel registers.
        self._arrivals: dict[str, set[asyncio.Event]] = {}
        accounts.on_linked(self._linked)

    def _tunnel_budget(self, instance_id: str) -> RateBudget:
        """How many tunnels a home may open: :data:`TUNNEL_BURST`, then one a minute.

        Threat this stops: a linked add-on that dials, floods until the relay drops
        it, and dials again at once, so that the relay spends its time on its
        handshakes and floods instead of on other homes.  A real add-on reconnects
        a few times a day.
        """
        budget = self._tunnel_budgets.get(instance_id)
        if budget is None:
            budget = RateBudget(TUNNEL_BURST, TUNNEL_RATE, time.monotonic)
            self._tunnel_budgets[instance_id] = budget
            if len(self._tunnel_budgets) > TUNNEL_BUDGETS:
                self._tunnel_budgets.popitem(last=False)
        else:
            self._tunnel_budgets.move_to_end(instance_id)
        return budget

    def open_streams(self) -> int:
        """Streams open in the protocol over every tunnel (draining ones included)."""
        return sum(session.connection.open_streams for session in self._sessions)

    def tunnel_for(self, instance_id: str) -> TunnelSession | None:
        session = self.tunnels.get(instance_id)
        if session is None or session.ended or not session.connection.accepting_streams:
            return None
        return session

    @property
    def may_wait(self) -> bool:
        """Whether a missing tunnel may be waited for (a cluster node) rather than offline."""
        return self.on_tunnel_missing is not None and not self._closing

    async def await_tunnel(self, instance_id: str, timeout: float = ARRIVAL_WAIT) -> None:
        """A cluster node without ``instance_id``'s tunnel: wait (bounded) for it to arrive.

        While nodes join, leave or die, a browser can reach this node before the
        home's add-on has (re)dialled here, or while its tunnel is still on the
        node the ring used to pick; the node holding it is asked to move it
        (``on_tunnel_missing``) and the request waits up to ``timeout`` seconds
        instead of failing. On one relay, or if it does not come, nothing waits
        longer than that and the caller answers "offline".
        """
        if self.tunnel_for(instance_id) is not None or self.on_tunnel_missing is None:
            return
        arrival = asyncio.Event()
        waiting = self._arrivals.setdefault(instance_id, set())
        waiting.add(arrival)
        try:
            async with asyncio.timeout(timeout):
                try:
                    await self.on_tunnel_missing(instance_id)
                except Exception as exc:  # Redis away: just wait for the add-on
                    log.warning("hub.move_request_failed", extra={"error": type(exc).__name__})
                while self.tunnel_for(instance_id) is None:
                    await arrival.wait()
                    arrival.clear()
        except TimeoutError:
            pass
        finally:
            waiting.discard(arrival)
            if not waiting and self._arrivals.get(instance_id) is waiting:
                del self._arrivals[instance_id]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/tunnel``: the tunnel inside a WebSocket (the first transport)."""
        if self._closing:
            raise web.HTTPServiceUnavailable(text="relay is restarting")
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, compress=False, autoping=True)
        if not ws.can_prepare(request).ok:
            raise web.HTTPBadRequest(text="this endpoint speaks WebSocket only")
        await ws.prepare(request)
        await self._run(_WebSocketChannel(ws), request.remote or "?")
        return ws

    def raw_protocol(self, host: str | None = None, instance_id: str | None = None) -> RawPipe:
        """A connection that negotiated ALPN ``homeport-tunnel/1``: the tunnel on TLS itself.

        ``host``/``instance_id``: the add-on dialled its own tenant name
        ``<instance_id>.<tenant-domain>`` (SNI) rather than the account host; the
        handshake proves that name and its certificate, and only the key linked to
        exactly that home is served (see :meth:`_run`).
        """
        pipe = RawPipe()

        async def serve() -> None:
            await pipe.connected
            address = client_address(pipe.transport) or "?"  # PROXY header, else the peer
            if self._closing:
                pipe.close_with(CLOSE_TRY_LATER, "relay is restarting")
                return
            try:
                await self._run(_RawChannel(pipe), address, host=host, instance_id=instance_id)
            except Exception:
                # Nothing one connection meets may leave it open and unserved.
                log.exception("hub.connection_failed", extra={"peer": address})
                pipe.abort()

        task = asyncio.ensure_future(serve())
        self._raw_tasks.add(task)
        task.add_done_callback(self._raw_tasks.discard)
        return pipe

    async def _run(
        self,
        channel: HandshakeChannel,
        peer: str,
        *,
        host: str | None = None,
        instance_id: str | None = None,
    ) -> None:
        """Handshake (the relay proves itself first), then serve or wait for a link.

        On a tenant name (``instance_id`` given) there is no link wait: the proven
        key must own exactly that home. Threat this stops: one home's add-on (or a
        stolen key) dialling another home's name to take its place on the node the
        load balancer sends that name to; it is refused (``wrong_home``) before any
        tunnel frame, and nothing is registered.
        """
        if host is None or self.cert_sha256_for is None:
            host, cert = self.config.account_host, self.cert_sha256()
        else:
            cert = self.cert_sha256_for(host)
        handshake = RelayHandshake(host, self.server_key, cert)
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                await channel.send_text(handshake.receive_hello(await channel.receive_text()))
                addon_key = handshake.receive_client_proof(await channel.receive_text())
        except (HandshakeError, TimeoutError, ConnectionError) as exc:
            code = exc.code if isinstance(exc, HandshakeError) else "timeout"
            log.warning("hub.handshake_failed", extra={"peer": peer, "code": str(code)})
            if isinstance(exc, HandshakeError) and not channel.closed:
                with contextlib.suppress(Exception):
                    await channel.send_text(handshake.error(exc.code, exc.message))
            await channel.close_with(CLOSE_HANDSHAKE_FAILED, "handshake failed")
            return
        key_text = public_key_text(addon_key)
        try:
            instance = await self.accounts.instance_for_key(key_text)
            if instance_id is not None and (instance is None or instance.id != instance_id):
                log.warning("hub.wrong_home", extra={"instance": instance_id, "peer": peer})
                with contextlib.suppress(Exception):
                    await channel.send_text(
                        handshake.error(WRONG_HOME, "this key does not own this home")
                    )
                await channel.close_with(CLOSE_WRONG_HOME, "wrong home")
                return
            if instance is None:
                await self._wait_for_link(channel, handshake, key_text, peer)
                return
        except DATABASE_ERRORS as exc:
            # The database is down or overloaded: the add-on dials again after its
            # back-off instead of waiting out a handshake timeout on a silent relay.
            log.warning(
                "hub.accounts_unavailable", extra={"peer": peer, "error": type(exc).__name__}
            )
            with contextlib.suppress(Exception):
                await channel.close_with(CLOSE_TRY_LATER, "relay busy; try again")
            return
        if not self._tunnel_budget(instance.id).take():
            log.warning("hub.tunnel_rate_limited", extra={"instance": instance.id, "peer": peer})
            with contextlib.suppress(Exception):
                await channel.send_text(
                    handshake.error(RATE_LIMITED, "too many tunnels; retry in a minute")
                )
            await channel.close_with(CLOSE_RATE_LIMITED, "rate limited")
            return
        url = self.config.tenant_origin(instance.id)
        # ``tunnel_host`` (a cluster node only): where this add-on should dial from now
        # on, its own tenant name, so a load balancer hashing on SNI puts its tunnel
        # where its browsers go. Older add-ons ignore it and keep the account host.
        settings: dict[str, JSONValue] = {}
        if self.config.redis_url is not None:
            settings["tunnel_host"] = self.config.tenant_host(instance.id)
        await channel.send_text(handshake.welcome(instance.id, url, settings))
        assert handshake.version is not None  # chosen in receive_hello
        await self._serve(channel.pipe(), instance.id, peer, handshake.version)

    async def _serve(self, pipe: Pipe, instance_id: str, peer: str, version: int) -> None:
        control = self.control_handler
        on_control = control(instance_id, peer) if control is not None else None
        session = TunnelSession(
            pipe,
            TunnelConnection(
                Role.RELAY, Settings(accept_control=on_control is not None), version=version
            ),
            on_control=on_control,
            name=f"relay:{instance_id[:8]}",
            ping_interval=self.config.tunnel_ping_interval,
            ping_timeout=self.config.tunnel_ping_timeout,
            control_grace=self.config.control_grace_seconds,
        )
        previous = self.tunnels.get(instance_id)
        self.tunnels[instance_id] = session
        self._sessions.add(session)
        if previous is not None:
            # The add-on reconnected (or a second copy runs): the newest wins;
            # the old tunnel finishes its open streams and closes.
            asyncio.create_task(  # noqa: RUF006
                previous.drain(self.config.drain_seconds, reason=GOAWAY_REPLACED)
            )
        self.presence.connected(instance_id)
        if self.on_tunnel_up is not None:
            self.on_tunnel_up(instance_id, session)
        for arrival in self._arrivals.get(instance_id, ()):
            arrival.set()
        log.info("hub.tunnel_up", extra={"instance": instance_id, "peer": peer})
        try:
            await session.run()
        finally:
            self._sessions.discard(session)
            log.info(
                "hub.tunnel_down",
                extra={"instance": instance_id, "reason": session.close_reason},
            )
            if session.close_reason.startswith(FLOODED):
                # An add-on ended for flooding does not dial straight back in to flood
                # again: its next tunnel waits a whole refill (R-ADD-07).
                self._tunnel_budget(instance_id).empty()
            if self.tunnels.get(instance_id) is session:
                del self.tunnels[instance_id]
                self.presence.disconnected(instance_id)
                if self.on_tunnel_down is not None:
                    self.on_tunnel_down(instance_id)

    async def _wait_for_link(
        self, channel: HandshakeChannel, handshake: RelayHandshake, key_text: str, peer: str
    ) -> None:
        wait = await self.accounts.throttle.attempt(
            [(f"link:net:{network_key(peer)}", LINK_NETWORK)]
        )
        if wait > 0:
            log.warning("hub.link_code_rate_limited", extra={"peer": peer})
            with contextlib.suppress(Exception):
                await channel.send_text(
                    handshake.error(
                        RATE_LIMITED, f"too many link codes; retry in {int(wait) + 1} s"
                    )
                )
            await channel.close_with(CLOSE_RATE_LIMITED, "rate limited")
            return
        code, expires_at = await self.accounts.create_link_code(key_text)
        expires_in = max(1, int((expires_at - datetime.now(UTC)).total_seconds()))
        await channel.send_text(handshake.unlinked(code, expires_in))
        log.info("hub.awaiting_link", extra={"peer": peer})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + expires_in
        # Woken at once by a link made in this process, by another node's or the admin
        # command's "linked" notice (wake_linked), or by the add-on leaving; the poll
        # finds links whose notice was lost (Redis down, no cluster settings).
        wake = asyncio.Event()
        waiters = self._link_waiters.setdefault(key_text, set())
        waiters.add(wake)
        watcher = asyncio.create_task(_until_closed(channel, wake))
        database_down = False
        try:
            while True:
                await wait_for_event(wake, self.config.link_poll_seconds)
                wake.clear()
                if watcher.done() or channel.closed:
                    return
                try:
                    linked = await self.accounts.instance_for_key(key_text) is not None
                except DATABASE_ERRORS as exc:
                    # The code on the add-on's screen stays valid: keep it (the person
                    # may be typing it) and look again at the next poll, rather than
                    # sending the add-on away to fetch a new code once the database
                    # is back.  Logged once per outage, not once per poll.
                    if not database_down:
                        log.warning(
                            "hub.link_poll_failed",
                            extra={"peer": peer, "error": type(exc).__name__},
                        )
                    database_down = True
                    linked = False
                else:
                    database_down = False
                if linked:
                    close_code, reason = CLOSE_LINKED, "linked"
                    break
                if loop.time() >= deadline:
                    close_code, reason = CLOSE_CODE_EXPIRED, "link code expired"
                    break
        finally:
            watcher.cancel()
            await asyncio.wait([watcher])
            waiters.discard(wake)
            if not waiters and self._link_waiters.get(key_text) is waiters:
                del self._link_waiters[key_text]
        await channel.close_with(close_code, reason)

    def _linked(self, key_text: str) -> None:
        for wake in self._link_waiters.get(key_text, ()):
            wake.set()

    def wake_linked(self, fingerprint: str) -> None:
        """A key was linked elsewhere (another node, ``homeport admin``): wake its waiters here.

        Only a wake-up: each waiter still checks the database before telling its
        add-on anything, so a forged or stale notice can at most cause one lookup.
        """
        for key_text, waiters in self._link_waiters.items():
            if key_fingerprint(key_text) == fingerprint:
                for wake in waiters:
                    wake.set()

    async def close_instance(self, instance_id: str, reason: str = "unlinked") -> bool:
        """Close an instance's live tunnel at once (its home was unlinked); whether one was up.

        Its open streams end with the tunnel; when the add-on dials again its
        key is unknown, so it gets a link code and no tunnel.
        """
        # Out of the routing table first, so no new request enters it meanwhile.
        session = self.tunnels.pop(instance_id, None)
        if session is None:
            return False
        if self.on_tunnel_down is not None:
            self.on_tunnel_down(instance_id)
        await session.close(reason)
        log.info("hub.tunnel_closed", extra={"instance": instance_id, "reason": reason})
        return True

    async def retire(self, instance_id: str, reason: str = GOAWAY_REPLACED) -> bool:
        """Another node holds this home's newer tunnel: ours takes no new streams and drains.

        The home is still connected (elsewhere), so no disconnect is recorded and
        the presence record, now the other node's, is left alone.
        """
        session = self.tunnels.pop(instance_id, None)
        if session is None:
            return False
        log.info("hub.tunnel_retired", extra={"instance": instance_id, "reason": reason})
        await session.drain(self.config.drain_seconds, reason=reason)
        return True

    async def shutdown(self) -> None:
        """Graceful restart: GOAWAY to every add-on, let streams finish, close."""
        self._closing = True
        if self.on_tunnel_down is not None:
            # A cluster node: its homes move to other nodes (GOAWAY below), which record
            # them connected; a disconnect written here afterwards would be wrong. The
            # ones that do not come back are found by the presence sweep.
            for instance_id in list(self.tunnels):
                del self.tunnels[instance_id]
                self.on_tunnel_down(instance_id)
        sessions = list(self._sessions)
        await asyncio.gather(
            *(s.drain(self.config.drain_seconds) for s in sessions), return_exceptions=True
        )
        # Raw connections still in their handshake or waiting for a link go too.
        for task in list(self._raw_tasks):
            task.cancel()
        if self._raw_tasks:
            await asyncio.wait(self._raw_tasks, timeout=5)
        await self.presence.close()


class HandshakeChannel(Protocol):
    """The handshake's messages and closes, over either transport."""

    @property
    def closed(self) -> bool: ...
    async def receive_text(self) -> str: ...
    async def send_text(self, text: str) -> None: ...
    async def close_with(self, code: int, reason: str) -> None: ...
    async def wait_closed(self, timeout: float) -> bool: ...
    def pipe(self) -> Pipe: ...


class _WebSocketChannel:
    """The handshake as WebSocket text messages; closes are WebSocket close codes."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws

    @property
    def closed(self) -> bool:
        return self._ws.closed

    async def receive_text(self) -> str:
        msg = await self._ws.receive()
        if msg.type is WSMsgType.TEXT:
            return str(msg.data)
        if msg.type is WSMsgType.BINARY:
            raise HandshakeError(HandshakeErrorCode.MALFORMED, "handshake messages are text")
        raise ConnectionError("tunnel closed during handshake")

    async def send_text(self, text: str) -> None:
        await self._ws.send_str(text)

    async def close_with(self, code: int, reason: str) -> None:
        await self._ws.close(code=code, message=reason.encode())

    async def wait_closed(self, timeout: float) -> bool:
        try:
            msg = await self._ws.receive(timeout=timeout)
        except TimeoutError:
            return False
        return msg.type in _CLOSED

    def pipe(self) -> Pipe:
        return WebSocketPipe(self._ws)


class _RawChannel:
    """The handshake as records on the raw TLS pipe; closes are close records."""

    def __init__(self, raw: RawPipe) -> None:
        self._raw = raw

    @property
    def closed(self) -> bool:
        return self._raw.closed

    async def receive_text(self) -> str:
        return await self._raw.receive_text()

    async def send_text(self, text: str) -> None:
        self._raw.send_text(text)

    async def close_with(self, code: int, reason: str) -> None:
        self._raw.close_with(code, reason)

    async def wait_closed(self, timeout: float) -> bool:
        return await self._raw.wait_closed(timeout)

    def pipe(self) -> Pipe:
        return self._raw


async def _until_closed(channel: HandshakeChannel, wake: asyncio.Event) -> None:
    """Read (and drop) what a waiting add-on sends; ``wake`` once it has gone."""
    try:
        while not await channel.wait_closed(3600):
            pass
    finally:
        wake.set()
