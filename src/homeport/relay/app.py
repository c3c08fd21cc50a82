"""The relay process: one aiohttp application that routes by Host.

* the account host is the account site (``homeport.relay.site``), a
  sub-application mounted by host name, which also serves the tunnel hub;
* ``<instance-id>.<tenant-domain>`` hosts go through the tenant gate and proxy;
* any other Host gets one generic answer, so probing names reveals nothing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from functools import partial

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRuleMatching, MatchedSubAppResource

from homeport.accounts.breached import BreachedPasswords
from homeport.accounts.db import DATABASE_ERRORS, Database, default_sqlite_url
from homeport.accounts.secretbox import KEY_FILE_NAME, SecretBox
from homeport.accounts.service import Accounts
from homeport.keys import load_or_create_private_key
from homeport.mail.messages import MailWriter
from homeport.memory import MemoryTrimmer
from homeport.pairing import make_pairing
from homeport.relay.addon_control import AddonControl
from homeport.relay.app_links import AppLinkGate
from homeport.relay.cluster.node import ClusterNode, load_cluster_key, new_node_id
from homeport.relay.config import RelayConfig
from homeport.relay.edge import PlainHttpListener, harden_runner
from homeport.relay.gate import SessionGate
from homeport.relay.housekeeping import Housekeeping
from homeport.relay.hub import TunnelHub
from homeport.relay.integrations import IntegrationGate
from homeport.relay.limits import RETRY_AFTER_SECONDS
from homeport.relay.mail_features import MailFeatures
from homeport.relay.metrics import MetricsListener, relay_metrics
from homeport.relay.pages import Pages
from homeport.relay.site.app import account_site
from homeport.relay.site.limits import TUNNEL_PATH, AccountLimits
from homeport.relay.site.oidc import OidcProviders
from homeport.relay.site.once import SealedShownOnce
from homeport.relay.tenant import TenantProxy
from homeport.relay.tls import RelayTls
from homeport.tls.context import TUNNEL_ALPN, requested_server_name
from homeport.tls.devca import ensure_dev_ca
from homeport.tls.proxy_listener import proxied_remote
from homeport.tls.served import CertPair, GatedTLSSite

log = logging.getLogger(__name__)

_HOST = re.compile(r"[a-z0-9.-]{1,253}")
#: A connection waiting for a request head (idle keep-alive, or a head that
#: trickles in byte by byte) is closed after this long.  aiohttp's default is
#: an hour, which lets anyone hold thousands of sockets open for free.
IDLE_TIMEOUT = 75.0


def request_host(request: web.Request) -> str | None:
    """The Host header's name part, lower-cased; None if absent or malformed."""
    raw = request.headers.get("Host")
    if raw is None:
        return None
    name = raw.lower()
    if name.startswith("["):
        return None  # IP literals never name one of our sites
    name = name.rsplit(":", 1)[0] if ":" in name else name
    name = name.rstrip(".")
    return name if _HOST.fullmatch(name) else None


TlsFiles = CertPair


def tls_files(config: RelayConfig) -> TlsFiles:
    """The configured certificate, or one from the development CA in the data dir."""
    if config.tls_cert and config.tls_key:
        return TlsFiles(config.tls_cert, config.tls_key)
    if config.tls_cert or config.tls_key:
        raise ValueError("--tls-cert and --tls-key must be given together")
    ca = ensure_dev_ca(config.data_dir)
    names = [config.account_host, f"*.{config.tenant_domain}", "localhost"]
    cert, key = ca.issue_server_certificate(names, config.data_dir / "tls")
    return TlsFiles(cert, key)


class Relay:
    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.database = Database(config.database_url or default_sqlite_url(config.data_dir))
        # Key for secrets at rest (TOTP seeds): a file in the data dir, never in the database.
        self.secret_box = SecretBox.load_or_create(config.data_dir / KEY_FILE_NAME)
        self.breached_passwords = (
            BreachedPasswords(
                config.breached_passwords_url, timeout=config.breached_passwords_timeout
            )
            if config.breached_passwords_url
            else None
        )
        self.accounts = Accounts(
            self.database,
            secret_box=self.secret_box,
            breached_passwords=self.breached_passwords,
        )
        self.server_key = load_or_create_private_key(config.server_key_path)
        # Listener context, certificate bot and renewal (homeport.relay.tls).
        self.tls = RelayTls(
            config,
            lambda: tls_files(config),
            database=self.database,
            secret_box=self.secret_box,
        )
        self.pages = Pages(config)
        self.gate = SessionGate(self.accounts)
        self.hub = TunnelHub(config, self.accounts, self.server_key, self.tls.account_cert_sha256)
        self.hub.cert_sha256_for = self.tls.served.cert_sha256_for
        #: Whole-body deadline and per-network request cap on the account host (R-MT-14).
        self.account_limits = AccountLimits(config, self.pages)
        self.app_links = AppLinkGate(self.accounts.sharing)
        self.mail = MailFeatures(config)
        #: Google / Apple / generic OpenID providers of the account site.
        self.oidc = OidcProviders(config.oidc_providers)
        self.addon_control = AddonControl(
            config,
            self.accounts,
            outbox=self.mail.outbox,
            writer=MailWriter(config.account_origin),
        )
        self.hub.control_handler = self.addon_control.handler_for
        #: Webhooks and voice assistants a home's owner let past the gate.
        self.integrations = IntegrationGate(config, self.accounts.integrations)
        self.tenants = TenantProxy(
            config,
            self.accounts,
            self.hub,
            self.gate,
            self.pages,
            self.app_links,
            self.integrations,
        )
        out = self.mail.out
        self.housekeeping = Housekeeping(
            self.accounts,
            self.gate,
            app_links=self.app_links,
            hub=self.hub,
            mail=(out.outbox, out.writer) if out is not None else None,
            manage_url=lambda instance_id: f"{config.account_origin}/instances/{instance_id}",
        )
        #: One node of several (``--redis-url``): revocations fanned out, caches fail closed.
        self.cluster: ClusterNode | None = None
        if config.redis_url is not None:
            if config.cluster_key_file is None:
                raise ValueError("--redis-url needs --cluster-key-file")
            self.cluster = ClusterNode(
                config.redis_url,
                load_cluster_key(config.cluster_key_file),
                gate=self.gate,
                app_links=self.app_links,
                integrations=self.integrations,
                hub=self.hub,
                sweeper=self.housekeeping,
                links=self.accounts,
                node_id=new_node_id(config.node_name),
                connected_before=self.accounts.instances.connected_before,
                mark_disconnected=self.accounts.instances.mark_disconnected_many,
            )
            presence = self.cluster.presence
            self.hub.on_tunnel_up = lambda instance_id, _session: presence.claim(instance_id)
            self.hub.on_tunnel_down = presence.release
            self.hub.on_tunnel_missing = presence.request_move
        #: One-time secrets after a redirect: in Redis, sealed, when the next page may be
        #: another node's (relay/site/once.py); in memory on a single relay.
        self.shown_once: SealedShownOnce | None = (
            SealedShownOnce(config.redis_url, self.secret_box)
            if config.redis_url is not None
            else None
        )
        self._runner: web.AppRunner | None = None
        #: The account site's sub-application, once :meth:`application` has built it.
        self.site: web.Application | None = None
        self.http_listener: PlainHttpListener | None = None
        self.metrics: MetricsListener | None = None
        self.memory = MemoryTrimmer()
        #: Being stopped: the health check says so, and the load balancer stops
        #: sending new connections (``GET /healthz`` on the metrics listener).
        self.draining = False

    def ssl_context(self) -> ssl.SSLContext:
        return self.tls.context

    def application(self) -> web.Application:
        middlewares = [self._errors]
        if self.config.proxy_protocol_from:
            middlewares.insert(0, proxied_remote)  # request.remote: the PROXY header's client
        app = web.Application(middlewares=middlewares, client_max_size=1024**2)
        self.site = site = account_site(
            self.config,
            accounts=self.accounts,
            pages=self.pages,
            gate=self.gate,
            homes=self.hub,
            app_links=self.app_links,
            limits=self.account_limits,
            mail=self.mail,
            providers=self.oidc,
            tunnel=self.hub.handle,
            integration_gate=self.integrations,
            pairing_string=make_pairing(
                f"wss://{self.config.account_host}{self.config.port_suffix}{TUNNEL_PATH}",
                [self.server_key.public_key()],
            ),
            shown_once=self.shown_once,
        )
        # ``Application.add_domain`` with our own rule: the Host header as
        # request_host() reads it, and the TLS session's SNI naming the same host.
        rule = _SiteHost(self.config.account_host)
        app._add_subapp(partial(MatchedSubAppResource, rule, site), site)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        host = request_host(request)
        if host is None or host != _sni(request):
            # Host must name the site this TLS session was opened for (RFC 9110
            # §7.4): no riding a connection for one site into another.
            return web.Response(status=421, text="Misdirected request.\n")
        # Tenant and app-link hosts never get here: their connections are routed by
        # SNI to the data plane (homeport.relay.proxy) before any HTTP is read.
        return web.Response(status=421, text="Misdirected request.\n")

    def _route(self, ssl_object: object) -> Callable[[], asyncio.BaseProtocol] | None:
        """Pick a new TLS connection's protocol from its session, before any byte is read.

        * ALPN ``homeport-tunnel/1`` on the account host: an add-on's tunnel on TLS
          itself (the hub's raw pipe); on any other host it is refused (closed).
        * SNI on the tenant domain: the data plane (``homeport.relay.proxy``).
        * anything else: aiohttp (the account site, ``/v1/tunnel`` over WebSocket).
        """
        alpn = getattr(ssl_object, "selected_alpn_protocol", lambda: None)()
        if alpn == TUNNEL_ALPN:
            name = requested_server_name(ssl_object)
            if name == self.config.account_host:
                return self.hub.raw_protocol
            instance_id = self.config.instance_for_host(name)
            if name is None or instance_id is None:
                return _Refused
            # An add-on on its own tenant name (the cluster's SNI routing); the hub
            # serves it only if its proven key owns exactly that home.
            return partial(self.hub.raw_protocol, name, instance_id)
        return self.tenants.route(ssl_object)

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Generic error pages: no stack trace or internal detail ever reaches a browser."""
        refusal = _refuse_at_edge(request)
        if refusal is not None:
            return refusal
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except DATABASE_ERRORS as exc:
            # The database is down or restarting: a clean "try again", not a crash page.
            log.warning("relay.accounts_unavailable", extra={"error": type(exc).__name__})
            busy = self.pages.message(
                "Briefly unavailable",
                "Homeport cannot reach its accounts right now. Try again in a moment.",
                status=503,
            )
            busy.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return busy
        except Exception:
            log.exception("relay.unhandled_error")
            return self.pages.message(
                "Something went wrong", "The relay could not handle this request.", status=500
            )

    async def _on_startup(self, app: web.Application) -> None:
        await self.database.connect()
        await self.database.migrate()
        if self.cluster is None:
            await self.accounts.mark_disconnected()  # nothing is connected to a fresh process
        # A cluster node must not: the other nodes' homes are connected. Its presence
        # directory marks disconnected only the homes no node holds any more.
        self.housekeeping.start()
        if self.cluster is not None:
            self.cluster.start()
        self.mail.announce(self.config)
        if self.breached_passwords is not None:
            log.info(
                "relay.breach_check_enabled",
                extra={"service": self.breached_passwords.base_url},
            )

    async def _on_shutdown(self, app: web.Application) -> None:
        if self.cluster is not None:
            await self.cluster.stop()
        await self.housekeeping.stop()
        await self.hub.shutdown()

    async def _on_cleanup(self, app: web.Application) -> None:
        await self.integrations.drain()  # the last calls' audit events, before the database goes
        await self.database.close()
        if self.shown_once is not None:
            await self.shown_once.close()

    async def start(self, *, sock: socket.socket | None = None) -> None:
        """Listen on the configured address (TLS); returns once serving.

        ``sock``: serve on this bound socket instead (its port must be the
        configured one, which the relay's URLs carry), so a caller can bind port
        0 and hand it over without racing anyone for the port in between.
        """
        if sock is not None and sock.getsockname()[1] != self.config.listen_port:
            raise ValueError("the socket's port is not the configured listen_port")
        self._runner = web.AppRunner(
            self.application(),
            auto_decompress=False,  # bodies pass through untouched
            access_log=None,  # our own structured log lines carry metadata only
            handler_cancellation=True,
            shutdown_timeout=self.config.drain_seconds,
            keepalive_timeout=IDLE_TIMEOUT,
        )
        await self._runner.setup()
        harden_runner(self._runner)  # no banner even on aiohttp's own parser errors
        site = GatedTLSSite(  # TLS-ALPN-01 validations never reach the application
            self._runner,
            self.config.listen_host,
            self.config.listen_port,
            ssl_context=self.ssl_context(),
            route=self._route,  # tunnels and tenant hosts: below aiohttp
            sock=sock,
            proxy_from=self.config.proxy_protocol_from,  # the client's address behind HAProxy
        )
        await site.start()
        if self.config.http_listen_port is not None:
            self.http_listener = PlainHttpListener(
                self.config, keepalive_timeout=IDLE_TIMEOUT, acme_responder=self.tls.http01
            )
            await self.http_listener.start()
        if self.config.metrics_listen is not None:
            self.metrics = relay_metrics(
                self.config,
                self.tls.served,
                self.hub,
                self.gate.live,
                self.tenants.connections,
                cluster=self.cluster,
                store=self.tls.store,
            )
            self.metrics.accepting = lambda: not self.draining
            await self.metrics.start()
        await self.tls.start()  # the certificate bot, once the challenge listeners are up
        self.memory.start()
        log.info(
            "relay.listening",
            extra={"host": self.config.listen_host, "port": self.config.listen_port},
        )

    @property
    def bound_port(self) -> int:
        assert self._runner is not None
        for address in self._runner.addresses:
            return int(address[1])
        raise RuntimeError("relay is not listening")

    async def leave_rotation(self) -> None:
        """A cluster node being stopped: out of the load balancer's rotation first.

        ``/healthz`` answers 503 from now on; browser connections close after their
        current answer; after :attr:`RelayConfig.drain_notice_seconds` (the health
        check's ``fall`` x ``inter`` and a margin) no new connection should come,
        and :meth:`stop` goes on as on one relay: GOAWAY to every add-on (each
        redials its tenant name, which the load balancer now sends to another
        node), in-flight streams finish on the old tunnels, then exit.
        """
        self.draining = True
        self.tenants.wind_down()
        log.info("relay.leaving_rotation", extra={"seconds": self.config.drain_notice_seconds})
        await asyncio.sleep(self.config.drain_notice_seconds)
        self.tenants.wind_down()  # connections the load balancer sent meanwhile

    async def stop(self) -> None:
        if self.cluster is not None and self._runner is not None and not self.draining:
            await self.leave_rotation()
        await self.memory.stop()
        await self.tls.stop()
        if self.metrics is not None:
            await self.metrics.stop()
            self.metrics = None
        if self._runner is not None:
            # Stop listening, then drain the tunnels *before* aiohttp's own shutdown:
            # its pre_shutdown() marks every connection closing and from then on
            # drops whatever arrives, so answers still coming through a draining
            # tunnel would be lost and every request in flight would fail.
            if self.http_listener is not None:
                await self.http_listener.stop()
                self.http_listener = None
            for site in list(self._runner.sites):
                await site.stop()
            await self.hub.shutdown()
            self.tenants.close_connections()
            await self._runner.cleanup()
            self._runner = None
        await self.mail.close()


def _refuse_at_edge(request: web.Request) -> web.Response | None:
    """What aiohttp's parser lets through but the relay never carries; the connection closes.

    * ``TRACE`` would echo headers (cookies included) back; ``CONNECT`` asks for a
      raw tunnel, and the parser treats every byte after its head as tunnel data.
    * A ``Transfer-Encoding`` other than exactly ``chunked`` (``gzip, chunked``):
      the parser removes only the chunking, and the relay drops the header, so
      the backend would get coded bytes it cannot know are coded.  RFC 9112
      §6.1: answer 501 to a transfer coding we do not understand.
    """
    if request.method in ("TRACE", "CONNECT"):
        response = web.Response(status=405, text="Method not allowed.\n")
    elif (codings := request.headers.getall("Transfer-Encoding", [])) and [
        c.strip().lower() for v in codings for c in v.split(",")
    ] != ["chunked"]:
        response = web.Response(status=501, text="Transfer coding not supported.\n")
    else:
        return None
    response.force_close()  # whatever follows the head is not read, so it is not trusted
    return response


class _SiteHost(AbstractRuleMatching):
    """Matches requests for one site: its name in Host, and the same name in SNI."""

    def __init__(self, host: str) -> None:
        self._host = host

    async def match(self, request: web.Request) -> bool:
        host = request_host(request)
        return host == self._host and host == _sni(request)

    def get_info(self) -> dict[str, str]:  # type: ignore[override]
        return {"host": self._host}

    @property
    def canonical(self) -> str:
        return self._host


def _sni(request: web.Request) -> str | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    return requested_server_name(ssl_object)


class _Refused(asyncio.Protocol):
    """A connection the relay will not serve at all: closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()
