"""Tenant hosts: the access gate, the session hand-off, and what each request may do.

Every request on ``<instance-id>.<tenant-domain>`` needs this host's own
``__Host-`` session cookie, held by an account allowed on the instance; the
instance comes from the Host header only (deny by default).  Without one, a
browser navigation is sent to sign in on the account site, which hands a
session over with a single-use code bound to a state cookie set here (so a
code cannot log someone else's browser into the attacker's session).  An
app-link host ``<label>.<tenant-domain>`` is its own credential instead.  A
request without a session that is exactly one of the integration paths its
owner switched on (webhooks, voice assistants) goes to Home Assistant, which
authenticates it itself (:mod:`homeport.relay.integrations`).

This module decides; :mod:`homeport.relay.proxy` moves the bytes.  A request
is *admitted* (:class:`Forward`: which home, for whom, holding which slots) or
*answered* here (:class:`Answer`: a sign-in redirect, a 401, a busy or
offline page, the hand-off).  The common case, a signed-in request whose
session is in the gate's cache, is decided without waiting
(:meth:`TenantProxy.admit_now`); only a cache miss or the hand-off go to the
database (:meth:`TenantProxy.admit`).
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode

from aiohttp import web

from homeport.accounts.audit import EventType
from homeport.accounts.db import DATABASE_ERRORS
from homeport.accounts.identifiers import is_instance_id
from homeport.accounts.service import Accounts
from homeport.accounts.sharing import AppLinkAccess, is_app_link_label
from homeport.accounts.throttle import network_key
from homeport.protocol import ErrorCode
from homeport.relay.app_links import AppLinkGate
from homeport.relay.config import RelayConfig
from homeport.relay.gate import SessionGate, token_digest
from homeport.relay.hub import TunnelHub
from homeport.relay.integration_paths import IntegrationPath, match
from homeport.relay.integrations import IntegrationGate
from homeport.relay.limits import RETRY_AFTER_SECONDS, Slots, TenantLimits
from homeport.relay.live import Principal
from homeport.relay.pages import HSTS, Pages
from homeport.relay.proxy.connection import TenantConnection
from homeport.relay.proxy.http1 import Request
from homeport.relay.redirects import binding_for, redirect, safe_next
from homeport.tls.context import requested_server_name
from homeport.tunnel.session import TunnelSession
from homeport.tunnel.stream import StreamClosed

log = logging.getLogger(__name__)

SESSION_COOKIE = "__Host-homeport_session"
STATE_COOKIE = "__Host-homeport_state"
RESERVED_PREFIX = "/.homeport/"
STATE_MAX_AGE = 300
MAX_WS_MESSAGE = 16 * 1024 * 1024
STYLESHEET = "/.homeport/static/homeport.css"


def cookie(request: Request, name: str) -> str | None:
    """One cookie's value from the request's ``Cookie`` header (the first one named so)."""
    raw = request.lookup.get(b"cookie")
    if raw is None:
        return None
    wanted = name + "="
    for part in raw.decode("latin-1").split(";"):
        part = part.strip()
        if part.startswith(wanted):
            return part[len(wanted) :]
    return None


@functools.lru_cache(maxsize=1024)  # asked twice on every request; a few hosts per relay
def host_name(raw: str) -> str | None:
    """The Host header's name part, lower-cased; None if malformed or an IP literal."""
    name = raw.lower()
    if name.startswith("["):
        return None
    name = name.rsplit(":", 1)[0] if ":" in name else name
    name = name.rstrip(".")
    if not name or len(name) > 253 or name.strip("abcdefghijklmnopqrstuvwxyz0123456789.-"):
        return None
    return name


@dataclass(slots=True)
class Answer:
    """The relay answers the request itself; ``close``: the connection ends after it."""

    response: web.Response
    close: bool = False


@dataclass(slots=True)
class Forward:
    """The request goes to a home: which one, for whom, and the slots it holds."""

    instance_id: str
    principal: Principal
    #: The public host (with port), for ``X-Forwarded-Host`` and the WebSocket Origin check.
    public_host: str
    tunnel: TunnelSession
    #: A tighter request-body cap than the relay's own (integrations), or None.
    max_body: int | None = None
    #: The slots held, as (slots, key): given back in the reverse order.
    _held: list[tuple[Slots, str]] = field(default_factory=list)

    def release(self) -> None:
        """Give back the slots (idempotent)."""
        while self._held:
            slots, key = self._held.pop()
            slots.release(key)


Admission = Answer | Forward


class TenantProxy:
    """The policy of tenant and app-link hosts (see the module docstring)."""

    def __init__(
        self,
        config: RelayConfig,
        accounts: Accounts,
        hub: TunnelHub,
        gate: SessionGate,
        pages: Pages,
        app_links: AppLinkGate,
        integrations: IntegrationGate,
    ) -> None:
        self.config = config
        self.accounts = accounts
        self.hub = hub
        self.gate = gate
        self.pages = pages
        self.app_links = app_links
        self.integrations = integrations
        self.limits = TenantLimits(config)
        self._suffix = "." + config.tenant_domain
        self._port_suffix = config.port_suffix  # asked on every request: worked out once
        #: Open browser connections on tenant hosts (closed when the relay stops).
        self.connections: set[TenantConnection] = set()

    def route(self, ssl_object: object) -> Callable[[], TenantConnection] | None:
        """The protocol for a new TLS connection: ours for tenant hosts, else None (aiohttp).

        Decided by the SNI as soon as the handshake is done, before a byte of
        HTTP is read; the Host header must then name the same host (``_label``).
        """
        name = requested_server_name(ssl_object)
        if name is not None and name.lower().rstrip(".").endswith(self._suffix):
            return lambda: TenantConnection(self)
        return None

    def wind_down(self) -> None:
        """A cluster node is draining: every browser connection closes after its answer."""
        for connection in list(self.connections):
            connection.wind_down()

    def close_connections(self) -> None:
        """The relay is stopping: close every browser connection on tenant hosts."""
        for connection in list(self.connections):
            connection.close()

    # ------------------------------------------------------------- admission

    def admit_now(self, request: Request, connection: TenantConnection) -> Admission | None:
        """Decide without waiting, or None when the database must be asked (:meth:`admit`).

        The host is checked on a connection's first request, and again only when
        its Host header changes (the SNI, hence the answer, is the connection's own).
        """
        remote = connection.remote
        if request.host == connection.host_seen:
            label = connection.host_label
        else:
            found = self._label(request, connection.sni)
            if isinstance(found, Answer):
                return found
            connection.host_seen, connection.host_label = request.host, found
            connection.host_is_home = is_instance_id(found)
            label = found
        if connection.host_is_home:
            if request.path.startswith(RESERVED_PREFIX):
                return self._own_path_now(request)
            raw = request.lookup.get(b"cookie")
            if raw is None or raw != connection.cookie_seen:
                # A new Cookie header on this connection: find the token, hash it once.
                token = cookie(request, SESSION_COOKIE)
                connection.cookie_seen, connection.token = raw, token
                connection.token_digest = token_digest(token)
            access = self.gate.cached_digest(connection.token_digest, label)
            if access is None:
                if connection.token is None:
                    return self._integration_now(request, label, remote)
                return None
            if self._tunnel_may_come(label):
                return None
            principal = connection.principal
            if access != connection.access or principal is None:
                principal = Principal(user_id=access[0], session_id=access[1])
                connection.access, connection.principal = access, principal
            return self._admitted(request, label, principal, remote)
        access_link = self.app_links.cached(label)
        if access_link is None or self._tunnel_may_come(access_link.instance_id):
            return None
        return self._app_link(request, access_link, remote)

    def _tunnel_may_come(self, instance_id: str) -> bool:
        """A cluster node without the home's tunnel: it may be on its way (a move, a
        node that just joined), so the request goes to :meth:`admit`, which waits."""
        return self.hub.may_wait and self.hub.tunnel_for(instance_id) is None

    async def admit(self, request: Request, sni: str, remote: str) -> Admission:
        """Decide, asking the database if need be (a cache miss, the hand-off).

        With the database down or restarting, the answer is a clean ``503`` with
        ``Retry-After`` (fail closed: nobody is let in unchecked); what is already
        open, and sessions still in the gate's cache, carry on (docs/operations.md).
        """
        try:
            return await self._admit(request, sni, remote)
        except DATABASE_ERRORS as exc:
            log.warning("tenant.accounts_unavailable", extra={"error": type(exc).__name__})
            return self._busy(503, "Homeport cannot check your sign-in right now; try again.")

    async def _admit(self, request: Request, sni: str, remote: str) -> Admission:
        label = self._label(request, sni)
        if isinstance(label, Answer):
            return label
        if is_instance_id(label):
            if request.path.startswith(RESERVED_PREFIX):
                own = self._own_path_now(request)
                if own is not None:
                    return own
                return await self._handoff(request, label, remote)
            access = await self.gate.tenant_user(cookie(request, SESSION_COOKIE), label)
            if access is None:
                path = integration_path(request)
                if path is not None:
                    switches = await self.integrations.switches(label)
                    if self.integrations.allows(switches, path):
                        await self.hub.await_tunnel(label)
                        return self._integration(request, label, path, remote)
                return self._challenge(request, label)
            await self.hub.await_tunnel(label)
            return self._admitted(
                request, label, Principal(user_id=access[0], session_id=access[1]), remote
            )
        access_link = await self.app_links.resolve(label)
        if access_link is None:
            return Answer(misdirected(self.pages, self.config))
        if not request.path.startswith(RESERVED_PREFIX):
            await self.hub.await_tunnel(access_link.instance_id)
        return self._app_link(request, access_link, remote)

    def _label(self, request: Request, sni: str) -> str | Answer:
        """The host's label (instance id or app-link label), or the answer to a wrong host.

        Host must name the site this TLS session was opened for (RFC 9110 §7.4):
        no riding a connection for one site into another; and unknown names get
        one answer whether or not something exists (R-MT-04).
        """
        host = host_name(request.host)
        if host is None or host != sni or not host.endswith(self._suffix):
            return Answer(misdirected(self.pages, self.config))
        label = host[: -len(self._suffix)]
        if not (is_instance_id(label) or is_app_link_label(label)):
            return Answer(misdirected(self.pages, self.config))
        return label

    def _app_link(self, request: Request, access: AppLinkAccess, remote: str) -> Admission:
        """An app-link host: no session gate (the link is the credential), no relay paths.

        Everything else is as on the tenant host: header hygiene and relay
        cookies cut out (so a relay session cookie is never a substitute for
        anything), the WebSocket ``Origin`` checked against *this* host, the
        same stream, request and bandwidth limits, and Home Assistant's own login
        in front.
        """
        if request.path.startswith(RESERVED_PREFIX):
            if request.path == STYLESHEET:
                return Answer(self.pages.stylesheet())
            return Answer(self.pages.message("Not found", "There is nothing here.", status=404))
        principal = Principal(app_link_id=access.link_id)
        return self._admitted(request, access.instance_id, principal, remote)

    def _integration_now(self, request: Request, instance_id: str, remote: str) -> Admission | None:
        """A request without a session cookie: an integration call decided from the cache,
        or None (the database must be asked: :meth:`admit`)."""
        path = integration_path(request)
        if path is None:
            return None
        switches = self.integrations.cached(instance_id)
        if switches is None:
            return None
        if not self.integrations.allows(switches, path):
            return self._challenge(request, instance_id)
        if self._tunnel_may_come(instance_id):
            return None
        return self._integration(request, instance_id, path, remote)

    def _integration(
        self, request: Request, instance_id: str, path: IntegrationPath, remote: str
    ) -> Admission:
        """A call the home's owner let past the gate (:mod:`homeport.relay.integrations`).

        Home Assistant authenticates it (the webhook id, its own tokens); the
        relay adds the home's call rate, its own slots and body cap, and the
        audit event.  Header hygiene is as for everyone: the caller's own
        forwarding headers are dropped and ``X-Forwarded-For`` carries the
        address the relay saw, so Home Assistant's ``local_only`` webhooks and
        its login bans judge the real caller, and relay cookies never pass.
        """
        gate = self.integrations
        if not gate.take_call(instance_id):
            log.warning("tenant.integration_rate", extra={"instance": instance_id})
            return self._busy(429, "Too many calls to this home; try again shortly.")
        if not gate.slots.acquire(instance_id):
            log.warning("tenant.integration_limit", extra={"instance": instance_id})
            return self._busy(429, "Too many calls to this home; try again shortly.")
        principal = Principal(integration=path.value)
        decision = self._admitted(
            request, instance_id, principal, remote, slots=gate.slots, max_body=gate.max_body
        )
        if isinstance(decision, Forward):
            gate.audit(instance_id, path, remote)
            log.info("tenant.integration_call", extra={"instance": instance_id, "path": path.value})
        return decision

    def _admitted(
        self,
        request: Request,
        instance_id: str,
        principal: Principal,
        remote: str,
        *,
        slots: Slots | None = None,
        max_body: int | None = None,
    ) -> Admission:
        """Past the gate: the per-address and per-home slots, then the home's tunnel.

        ``slots``: an integration's call already holds one of the home's
        integration slots (given back with the others); it does not take one of
        the slots the home's people use.
        """
        home = self.limits.tenants
        if slots is not None:
            home = slots
        # Counted per network like the sign-in throttle (IPv6 per /64): one client
        # cannot dodge the cap by rotating through the addresses it owns.
        client = network_key(remote)
        if not self.limits.clients.acquire(client):
            if slots is not None:
                slots.release(instance_id)
            log.warning("tenant.client_limit", extra={"instance": instance_id})
            return self._busy(429, "Too many requests from your address; try again shortly.")
        if slots is None and not home.acquire(instance_id):
            self.limits.clients.release(client)
            log.warning("tenant.home_limit", extra={"instance": instance_id})
            return self._busy(503, "This home has too many open requests; try again.")
        tunnel = self.hub.tunnel_for(instance_id)
        if tunnel is None:
            home.release(instance_id)
            self.limits.clients.release(client)
            return Answer(
                self.pages.message(
                    "This home is offline",
                    "The Homeport add-on of this home is not connected to the relay right now. "
                    "Check that Home Assistant and the add-on are running and online.",
                    status=503,
                    tenant=True,
                )
            )
        host = host_name(request.host) or ""
        held = [(self.limits.clients, client), (home, instance_id)]
        return Forward(instance_id, principal, host + self._port_suffix, tunnel, max_body, held)

    def _busy(self, status: int, text: str) -> Answer:
        response = self.pages.message("Busy", text, status=status, tenant=True)
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return Answer(response)

    # --------------------------------------------------------------- the gate

    def _challenge(self, request: Request, instance_id: str) -> Answer:
        accept = request.header(b"accept") or ""
        navigating = request.method in ("GET", "HEAD") and (
            request.header(b"sec-fetch-mode") == "navigate" or "text/html" in accept
        )
        if not navigating or request.upgrade:
            response = web.Response(
                status=401,
                text="Sign in to Homeport first.\n",
                headers={"WWW-Authenticate": 'Homeport realm="homeport"'},
            )
            response.headers["Strict-Transport-Security"] = HSTS
            return Answer(response)
        state = secrets.token_urlsafe(32)
        query = urlencode(
            {
                "instance": instance_id,
                "state": binding_for(state),
                "next": safe_next(request.target),
            }
        )
        response = redirect(f"{self.config.account_origin}/connect?{query}")
        response.set_cookie(
            STATE_COOKIE,
            state,
            max_age=STATE_MAX_AGE,
            path="/",
            secure=True,
            httponly=True,
            samesite="Lax",
        )
        self.pages.secure(response)
        return Answer(response)

    def _own_path_now(self, request: Request) -> Answer | None:
        """The relay's own paths on a tenant host; None for the hand-off (it needs the database)."""
        path = request.path
        if path == "/.homeport/handoff" and request.method == "GET":
            return None
        if path == STYLESHEET:
            return Answer(self.pages.stylesheet())
        return Answer(
            self.pages.message("Not found", "There is nothing here.", status=404, tenant=True)
        )

    async def _handoff(self, request: Request, instance_id: str, remote: str) -> Answer:
        """Finish the sign-in hand-off: exchange the one-time code for this host's session.

        Any presentation of a code uses it up, also one without this host's state
        cookie (a leaked link opened elsewhere, or a login-CSRF attempt): such a
        code is in the wrong hands, and nobody may use it after that.
        """
        query = parse_qs(request.target.partition("?")[2], max_num_fields=16)
        code = query.get("code", [""])[0]
        state = cookie(request, STATE_COOKIE)
        user_agent = request.header(b"user-agent") or ""
        user_id = None
        if code and len(code) <= 128:
            binding = binding_for(state) if state else None
            user_id = await self.accounts.consume_handoff(code, instance_id, binding)
        if user_id is None:
            log.warning("tenant.handoff_refused", extra={"instance": instance_id})
            return Answer(
                self.pages.message(
                    "This sign-in link cannot be used",
                    "It has expired, was already used, or was opened in another browser.",
                    status=400,
                    tenant=True,
                    link="/",
                    link_text="Try again",
                )
            )
        user = await self.accounts.get_user(user_id)
        if user is None:
            return Answer(
                self.pages.message(
                    "Not allowed", "This account cannot open this home.", status=403, tenant=True
                )
            )
        token, row = await self.accounts.create_session(
            user,
            "tenant",
            instance_id=instance_id,
            user_agent=user_agent,
            ip=remote,
            handoff_code=code,  # links the session to the account session, for sign-out
        )
        await self.accounts.audit.record(
            EventType.SESSION_CREATED,
            user_id=user_id,
            instance_id=instance_id,
            ip=remote,
            user_agent=user_agent,
            session_id=row.id,
        )
        # The code leaves the address bar with this redirect (no token stays in a URL).
        response = redirect(safe_next(query.get("next", [None])[0]))
        response.set_cookie(
            SESSION_COOKIE, token, path="/", secure=True, httponly=True, samesite="Lax"
        )
        response.del_cookie(STATE_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
        self.pages.secure(response)
        log.info("tenant.session_started", extra={"instance": instance_id, "user": user_id})
        return Answer(response)

    # --------------------------------------------------------- failure pages

    def too_large(self) -> Answer:
        return Answer(
            self.pages.message(
                "Too large",
                "This upload is larger than the relay accepts.",
                status=413,
                tenant=True,
            ),
            close=True,  # the rest of the body is not read: the connection cannot go on
        )

    def too_slow(self) -> Answer:
        return Answer(
            self.pages.message(
                "Too slow", "This upload was too slow and was stopped.", status=408, tenant=True
            ),
            close=True,
        )

    def tunnel_error(self, exc: StreamClosed) -> Answer:
        """The page for a request the home did not answer."""
        if exc.code is ErrorCode.UPSTREAM_UNAVAILABLE:
            return Answer(
                self.pages.message(
                    "Home Assistant is not answering",
                    "The add-on is connected, but Home Assistant did not answer it. "
                    "It may be starting or restarting; try again in a moment.",
                    status=502,
                    tenant=True,
                )
            )
        if exc.code is ErrorCode.UPSTREAM_TIMEOUT:
            return Answer(
                self.pages.message(
                    "Home Assistant took too long",
                    "Home Assistant did not answer in time.",
                    status=504,
                    tenant=True,
                )
            )
        if exc.code in (ErrorCode.TOO_MANY_STREAMS, ErrorCode.REFUSED):
            return self._busy(503, "This home has too many open requests; try again.")
        if exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.HEAD_TOO_LARGE):
            return Answer(
                self.pages.message(
                    "Bad request", "The request cannot be forwarded.", status=400, tenant=True
                )
            )
        return Answer(
            self.pages.message(
                "Connection to the home lost",
                "The connection to this home dropped while answering. Try again.",
                status=502,
                tenant=True,
            )
        )

    def bad_request(self) -> Answer:
        return Answer(
            self.pages.message(
                "Bad request", "The request cannot be forwarded.", status=400, tenant=True
            )
        )


def integration_path(request: Request) -> IntegrationPath | None:
    """The integration path this request exactly is, or None (see ``integration_paths``)."""
    upgrade = request.upgrade or b"upgrade" in request.lookup
    return match(request.method, request.target, upgrade=upgrade)


def misdirected(pages: Pages, config: RelayConfig) -> web.Response:
    """An address on the tenant domain that opens no home: a mistyped or old address,
    an unlinked home, a revoked app link.  One answer for all of them, whether or not
    something exists under that name (R-MT-04); the page is styled inline, because
    such a host serves nothing of its own, not even the stylesheet."""
    return pages.standalone(
        "No home at this address",
        "This address does not open a home. It may be mistyped, or the home was unlinked, "
        "or the app link was revoked. Open your home from the list of your homes instead.",
        status=421,
        link=config.account_origin + "/",
        link_text="Go to your homes",
    )
