"""The relay's front door outside the routed application.

* :class:`PlainHttpListener`: the plain-HTTP port (``--http-listen``, off by
  default).  It only ever answers ``308`` to the same host on HTTPS, with no
  body and no ``Strict-Transport-Security`` (RFC 6797 §7.2: HSTS over plain
  HTTP is ignored and must not be sent), or refuses hosts that are not ours,
  so it can never be made to redirect to someone else's site (R-HSTS-02).
  The one exception: ACME HTTP-01 tokens the certificate bot is validating
  right now (``acme_responder``); any other ``/.well-known/acme-challenge/``
  path is 404.
* :func:`security_txt`: ``/.well-known/security.txt`` (RFC 9116) for the
  account host.
* :func:`harden_runner`: no version banner on *any* response, including the
  ``400`` aiohttp writes itself for requests its parser rejects (R-HDR-07).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from homeport.accounts.identifiers import is_instance_id
from homeport.relay import security_headers
from homeport.relay.config import RelayConfig

if TYPE_CHECKING:
    from homeport.tls.acme_bot import ChallengeResponder

log = logging.getLogger(__name__)

__all__ = [
    "ACME_CHALLENGE_PREFIX",
    "SECURITY_TXT_PATH",
    "EdgeRequest",
    "PlainHttpListener",
    "harden_runner",
    "redirect_app",
    "security_txt",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SECURITY_TXT_PATH = "/.well-known/security.txt"
ACME_CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
#: RFC 9116 §2.5.5 recommends an expiry under a year away; it is computed per
#: request so the file never goes stale on a long-running relay.
SECURITY_TXT_LIFETIME = timedelta(days=365)

_NAME = re.compile(r"[a-z0-9.-]{1,253}")


# ------------------------------------------------------------------ banners


class EdgeRequest(web.Request):
    """A request whose responses never carry a ``Server`` banner.

    aiohttp runs ``on_response_prepare`` only for routed requests, so the
    ``400`` it builds itself in ``RequestHandler.handle_error`` for a request
    its parser rejects still says ``Server: Python/3.x aiohttp/3.x``
    (aio-libs/aiohttp#6463, open).  Every response is prepared through its
    request's ``_prepare_hook`` (after aiohttp has set its default headers),
    routed or not, so the banner is removed there.  Over TLS, every response
    also gets HSTS, ``nosniff`` and, unless proxied, the relay's baseline
    headers (:func:`homeport.relay.security_headers.finish`); over plain HTTP
    none of them.
    """

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        await super()._prepare_hook(response)  # the application's on_response_prepare
        security_headers.finish(response, secure=self.secure)


def harden_runner(runner: web.AppRunner) -> None:
    """Make every request on ``runner`` an :class:`EdgeRequest`.

    Call after ``runner.setup()`` and before any site starts: each connection's
    ``RequestHandler`` takes ``Server.request_factory`` when it is created, and
    the same factory builds the request handed to ``handle_error``.  The
    application's own factory is kept (it carries ``client_max_size``); only
    the request class changes.  ``tests/relay/test_edge.py`` sends malformed
    requests over raw sockets, so an aiohttp upgrade that changes this path
    fails a test instead of bringing the banner back.
    """
    server = runner.server
    if server is None:
        raise RuntimeError("harden_runner() needs runner.setup() first")
    factory: Any = server.request_factory  # Application._make_request(..., _cls=Request)
    if isinstance(factory, functools.partial):  # already hardened
        return
    server.request_factory = functools.partial(factory, _cls=EdgeRequest)


# ------------------------------------------------------------- security.txt


def security_txt(config: RelayConfig, now: datetime | None = None) -> web.Response:
    """RFC 9116 ``security.txt`` for the account host; ``Expires`` one year from now."""
    moment = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    expires = (moment + SECURITY_TXT_LIFETIME).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [
        f"Contact: {config.security_contact}",
        f"Expires: {expires}",
        "Preferred-Languages: en",
        f"Canonical: {config.account_origin}{SECURITY_TXT_PATH}",
        f"Policy: {config.security_policy}",
    ]
    return web.Response(
        text="\n".join(lines) + "\n",
        content_type="text/plain",
        charset="utf-8",
        headers={"Cache-Control": "max-age=86400"},
    )


# -------------------------------------------------------------- plain HTTP


def redirect_target(config: RelayConfig, host_header: str | None, target: str) -> str | None:
    """``https://<host><port><target>`` if the Host names one of our sites, else None.

    Only the account host and ``<instance-id>.<tenant-domain>`` qualify; the
    port is the relay's public HTTPS port, never one taken from the request.
    ``target`` must be origin-form (``/path?query``).
    """
    if host_header is None or not target.startswith("/"):
        return None
    name = host_header.strip().lower()
    if name.startswith("["):
        return None
    name = name.rsplit(":", 1)[0] if ":" in name else name
    name = name.rstrip(".")
    if not _NAME.fullmatch(name):
        return None
    suffix = "." + config.tenant_domain
    ours = name == config.account_host or (
        name.endswith(suffix) and is_instance_id(name[: -len(suffix)])
    )
    if not ours:
        return None
    return f"https://{name}{config.port_suffix}{target}"


def redirect_app(
    config: RelayConfig, acme_responder: ChallengeResponder | None = None
) -> web.Application:
    """The application behind the plain-HTTP port.

    ``acme_responder`` (the certificate bot's, :mod:`homeport.tls.acme_bot`)
    answers HTTP-01 key authorizations for the tokens being validated.
    """

    async def handle(request: web.Request) -> web.StreamResponse:
        target = request.raw_path
        if target.startswith(ACME_CHALLENGE_PREFIX):
            # HTTP-01 (RFC 8555 §8.3): only the exact path of a token the bot is
            # validating right now answers; every other token is 404 (R-ACME-07).
            token = target[len(ACME_CHALLENGE_PREFIX) :]
            answer = await acme_responder.lookup(token) if acme_responder is not None else None
            if answer is None or request.method not in ("GET", "HEAD"):
                return web.Response(status=404)
            return web.Response(
                body=answer.encode("ascii"), content_type="application/octet-stream"
            )
        hosts = request.headers.getall("Host", [])
        location = redirect_target(config, hosts[0], target) if len(hosts) == 1 else None
        if location is None:
            # Not one of our names (or an absolute-form / asterisk target): no
            # redirect anywhere, so this port cannot be used as an open redirector.
            bad_request = len(hosts) != 1 or not target.startswith("/")
            response = web.Response(status=400 if bad_request else 421)
            response.force_close()
            return response
        return web.Response(status=308, headers={"Location": location})

    @web.middleware
    async def every_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Answer before routing: targets the router cannot match (``OPTIONS *``)
        # must not get aiohttp's default 404 page either.
        return await handle(request)

    app = web.Application(middlewares=[every_request], client_max_size=0)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


class PlainHttpListener:
    """Runs :func:`redirect_app` on ``config.http_listen_host:http_listen_port``."""

    def __init__(
        self,
        config: RelayConfig,
        *,
        keepalive_timeout: float,
        acme_responder: ChallengeResponder | None = None,
    ) -> None:
        self.config = config
        self._keepalive_timeout = keepalive_timeout
        self.acme_responder = acme_responder
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        host, port = self.config.http_listen_host, self.config.http_listen_port
        if port is None:
            raise RuntimeError("no --http-listen address configured")
        self._runner = web.AppRunner(
            redirect_app(self.config, self.acme_responder),
            access_log=None,
            handler_cancellation=True,
            keepalive_timeout=self._keepalive_timeout,
            shutdown_timeout=1.0,
        )
        await self._runner.setup()
        harden_runner(self._runner)
        await web.TCPSite(self._runner, host, port).start()
        log.info("relay.http_listening", extra={"host": host, "port": self.port})

    @property
    def port(self) -> int:
        assert self._runner is not None
        for address in self._runner.addresses:
            return int(address[1])
        raise RuntimeError("plain-HTTP listener is not listening")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
