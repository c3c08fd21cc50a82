"""The add-on's ingress panel: state, the remote-access switch, recent accesses.

Threats this stops:

* Anyone on the home network (or a container beside us) driving the panel:
  it answers only requests whose TCP peer is the Supervisor's ingress proxy
  (``172.30.32.2``), which lets through only signed-in Home Assistant
  administrators.  Everything else gets 403 and a metadata-only log line.
  (Headers such as ``X-Forwarded-For`` or ``X-Ingress-Path`` prove nothing:
  anyone can send them; only the peer address counts.)
* Reaching the panel through the tunnel: it listens on its own port and the
  forwarder only ever dials the configured Home Assistant URL; the add-on
  refuses to start if that URL points at the panel itself.
* Cross-site request forgery, also behind ingress: a POST needs an
  ``Origin`` (or ``Referer``) naming the host the browser used (Home
  Assistant's ingress proxy passes it as ``X-Forwarded-Host`` and keeps
  ``Origin``: ``hassio/ingress.py`` in 2025.4.4), ``Sec-Fetch-Site`` other than
  cross-site when sent, and a per-process random token from the page.
* App links made by someone else: creating one (``panel_app_links.py``) is
  a POST behind the same peer and CSRF checks.
* ``configuration.yaml`` changed behind the owner's back: the "trust the
  add-on" button (``trust_setup.py``) is a POST behind the same checks, with
  an explicit ``confirm=yes``.
* Script injection and framing by others: only the panel's own small script
  (``static/panel.js``, which polls ``state``), a strict CSP,
  ``frame-ancestors 'self'`` (Home Assistant shows the panel in a
  same-origin iframe).

The one exception to the peer check is ``GET /healthz`` (the container
image's HEALTHCHECK, :mod:`homeport.addon.healthcheck`): it answers ``ok``
and nothing else (not even whether the add-on is linked or connected), so it
tells a caller no more than the 403 page already does: a panel listens here.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web
from aiohttp.web_request import FileField
from multidict import MultiDictProxy
from yarl import URL

from homeport.addon.app_links import AppLinkMaker
from homeport.addon.client import AddonStatus, State
from homeport.addon.gate import RemoteAccessGate
from homeport.addon.ha_trust import Trust, TrustMonitor
from homeport.addon.panel_app_links import AppLinkPages
from homeport.addon.trust_setup import TrustSetup

log = logging.getLogger(__name__)

#: The Supervisor's ingress proxy: the only peer the panel serves in add-on mode.
INGRESS_PROXY = "172.30.32.2"
#: The liveness probe, open to any peer; it reveals nothing (see the module docstring).
HEALTHZ = "/healthz"
HERE = Path(__file__).parent
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; script-src 'self'; "
    "connect-src 'self'; form-action 'self'; "
    "frame-ancestors 'self'; base-uri 'none'"
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class PanelSources:
    """What the panel shows; each part is owned by another object."""

    status: Callable[[], AddonStatus]
    gate: RemoteAccessGate
    trust: TrustMonitor | None
    ha_how: str
    account_origin: str
    #: Creates companion-app links over the tunnel (the add-on client); None: no such card.
    app_links: AppLinkMaker | None = None
    #: Adds the proxy settings to configuration.yaml when the owner asks; None: the
    #: add-on cannot (no configuration folder or no API token), so the panel shows the YAML.
    trust_setup: TrustSetup | None = None


class Panel:
    def __init__(self, sources: PanelSources, *, allowed_peers: Iterable[str]) -> None:
        self.sources = sources
        self.allowed = frozenset(ipaddress.ip_address(p) for p in allowed_peers)
        self.csrf_token = secrets.token_urlsafe(32)
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._css = (HERE / "static" / "panel.css").read_bytes()
        self._js = (HERE / "static" / "panel.js").read_bytes()
        self.app = web.Application(middlewares=[self._only_ingress, self._headers])
        self.app.router.add_get("/", self.page)
        self.app.router.add_post("/remote-access", self.switch)
        self.app.router.add_post("/trust-setup", self.start_trust_setup)
        self.app.router.add_get("/static/panel.css", self.stylesheet)
        self.app.router.add_get("/static/panel.js", self.script)
        self.app.router.add_get("/state", self.state)
        self.app_link_pages: AppLinkPages | None = None
        if sources.app_links is not None:
            self.app_link_pages = AppLinkPages(self, sources.app_links)
            self.app_link_pages.register(self.app)
        self._healthz = self.app.router.add_get(HEALTHZ, self.healthz, allow_head=False)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("addon.panel_listening", extra={"host": host, "port": self.port})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------ middleware

    @web.middleware
    async def _only_ingress(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.route is self._healthz:
            return await handler(request)  # not logged: the probe runs every few seconds
        try:
            peer = ipaddress.ip_address(request.remote or "")
        except ValueError:
            peer = None
        if peer is None or peer not in self.allowed:
            log.warning(
                "addon.panel_refused",
                extra={"peer": request.remote, "method": request.method},
            )
            return web.Response(status=403, text="Only Home Assistant's ingress may open this.\n")
        return await handler(request)

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    # ---------------------------------------------------------------- routes

    def _link_url(self, status: AddonStatus) -> str:
        """The account site's link form with this code filled in (it only fills the form:
        linking stays the signed-in person's own POST there)."""
        query = "?" + urlencode({"code": status.link_code}) if status.link_code else ""
        return self.sources.account_origin + "/link" + query

    async def state(self, request: web.Request) -> web.Response:
        """What ``panel.js`` polls: the connection state and the link code, nothing else."""
        status = self.sources.status()
        view = _state_view(status)
        return web.json_response(
            {
                "state": view["key"],
                "label": view["label"],
                "link_code": status.link_code,
                "link_url": self._link_url(status),
            }
        )

    async def page(self, request: web.Request) -> web.Response:
        sources = self.sources
        status = sources.status()
        trust = sources.trust.report if sources.trust is not None else None
        html = self._env.get_template("panel.html").render(
            state=_state_view(status),
            status=status,
            link_url=self._link_url(status),
            remote_on=sources.gate.enabled,
            accesses=[
                {
                    "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(a.at)),
                    "method": a.method,
                    "route": a.route,
                    "status": "-" if a.status is None else str(a.status),
                    "remote": a.remote,
                    "websocket": a.websocket,
                }
                for a in sources.gate.access_log.recent()
            ],
            total=sources.gate.access_log.total,
            trust=trust,
            trusted=trust is not None and trust.trust is Trust.TRUSTED,
            setup=sources.trust_setup,
            setup_status=sources.trust_setup.status if sources.trust_setup is not None else None,
            ha_how=sources.ha_how,
            app_links=self.app_link_pages.card() if self.app_link_pages is not None else None,
            csrf=self.csrf_token,
        )
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    def render(self, template: str, *, status: int = 200, **context: Any) -> web.Response:
        html = self._env.get_template(template).render(csrf=self.csrf_token, **context)
        return web.Response(status=status, text=html, content_type="text/html", charset="utf-8")

    async def checked_form(
        self, request: web.Request
    ) -> MultiDictProxy[str | bytes | bytearray | FileField] | None:
        """The POSTed form if it passes the CSRF checks (module docstring), else None."""
        form = await request.post()
        token = form.get("csrf")
        if not self._same_origin(request) or not (
            isinstance(token, str) and hmac.compare_digest(token, self.csrf_token)
        ):
            log.warning("addon.panel_csrf_refused", extra={"peer": request.remote})
            return None
        return form

    async def switch(self, request: web.Request) -> web.Response:
        form = await self.checked_form(request)
        if form is None:
            return web.Response(status=403, text="Cross-site request refused.\n")
        enabled = form.get("enabled")
        if enabled not in ("on", "off"):
            return web.Response(status=400, text="enabled must be on or off.\n")
        self.sources.gate.set_enabled(enabled == "on")
        # Relative: resolves under the ingress path the browser used.
        raise web.HTTPSeeOther(location="./")

    async def start_trust_setup(self, request: web.Request) -> web.Response:
        """The owner's consent: add the proxy settings, check, restart (``trust_setup``)."""
        form = await self.checked_form(request)
        if form is None:
            return web.Response(status=403, text="Cross-site request refused.\n")
        setup = self.sources.trust_setup
        if setup is None:
            return web.Response(status=404, text="The add-on cannot change configuration.yaml.\n")
        if form.get("confirm") != "yes":
            return web.Response(status=400, text="confirm must be yes.\n")
        setup.start()  # already running: the page shows that run's progress
        raise web.HTTPSeeOther(location="./")

    async def stylesheet(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._css,
            content_type="text/css",
            charset="utf-8",
            headers={"Cache-Control": "max-age=300"},
        )

    async def script(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._js,
            content_type="text/javascript",
            charset="utf-8",
            headers={"Cache-Control": "max-age=300"},
        )

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: the process runs and its event loop answers; nothing more."""
        return web.Response(text="ok\n")

    # --------------------------------------------------------------- helpers

    def _same_origin(self, request: web.Request) -> bool:
        """Origin (or Referer) must name the host the browser asked for."""
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return False
        claimed = request.headers.get("Origin") or request.headers.get("Referer")
        if not claimed or claimed == "null":
            return False
        try:
            origin = URL(claimed)
        except ValueError:
            return False
        if not origin.host:
            return False
        expected = request.headers.get("X-Forwarded-Host") or request.host
        return _authority(origin) == expected.lower()


def _authority(url: URL) -> str:
    host = (url.raw_host or "").lower()
    if ":" in host:
        host = f"[{host}]"
    if url.explicit_port is not None:
        return f"{host}:{url.explicit_port}"
    return host


def _state_view(status: AddonStatus) -> dict[str, str]:
    if status.state is State.CONNECTED:
        return {"key": "connected", "label": "Connected"}
    if status.state is State.UNLINKED:
        return {"key": "unlinked", "label": "Not linked to an account"}
    if status.state is State.DISCONNECTED:
        return {"key": "error", "label": "Not connected"}
    return {"key": "connecting", "label": "Connecting…"}
