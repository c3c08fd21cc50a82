"""The panel's app-link pages: a device name in, the companion app's link and QR code out.

Threats this stops:

* **Someone other than a Home Assistant administrator creating app links**:
  these routes sit behind the panel's peer check (ingress only, which is
  admin-only) and its CSRF checks (Origin, Sec-Fetch-Site, the page token).
* **The link leaking after it was shown**: the answer page is
  ``Cache-Control: no-store`` and carries no auto-refresh; the URL is held
  only while the page is rendered, never logged or stored by the add-on.
* **A hostile answer from the relay** (it is authenticated, but still): only
  an ``https://`` URL is shown, autoescaped; the QR code is inline SVG made
  here by segno, so the strict CSP (no script, no inline style) holds.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from homeport.addon.app_links import UNSUPPORTED, AppLinkMaker, AppLinkRefused
from homeport.addon.client import State
from homeport.qr import qr_svg

if TYPE_CHECKING:
    from homeport.addon.panel import Panel

log = logging.getLogger(__name__)

#: Form fields beyond this are refused before anything is sent to the relay.
MAX_NAME_FIELD = 200
#: HTTP status of the answer page for each reason the relay (or the tunnel) gave.
STATUS = {
    "invalid": 400,
    "too_many": 429,
    "limit": 409,
    "not_connected": 503,
    "unsupported": 501,
    "no_answer": 504,
}


class AppLinkPages:
    def __init__(self, panel: Panel, maker: AppLinkMaker) -> None:
        self.panel = panel
        self.maker = maker

    def register(self, app: web.Application) -> None:
        app.router.add_get("/app-links", self.form)
        app.router.add_post("/app-links", self.create)

    def card(self) -> dict[str, Any]:
        """What the main page's "Companion app" card shows."""
        return {
            "supported": self.maker.app_links_supported(),
            "unsupported": UNSUPPORTED,
            "manage_url": self._manage_url(),
        }

    def _manage_url(self) -> str:
        """The home's page on the account site (where links are listed and revoked)."""
        sources = self.panel.sources
        instance_id = sources.status().instance_id
        return sources.account_origin + (f"/instances/{instance_id}" if instance_id else "/")

    async def form(self, request: web.Request) -> web.Response:
        return self._render()

    async def create(self, request: web.Request) -> web.Response:
        form = await self.panel.checked_form(request)
        if form is None:
            return web.Response(status=403, text="Cross-site request refused.\n")
        raw = form.get("name")
        name = raw.strip() if isinstance(raw, str) else ""
        if not name or len(name) > MAX_NAME_FIELD:
            return self._render(status=400, error="Give the device a name (up to 64 characters).")
        try:
            link = await self.maker.create_app_link(name)
        except AppLinkRefused as exc:
            log.warning("addon.app_link_refused", extra={"code": exc.code})
            return self._render(status=STATUS.get(exc.code, 502), error=exc.message, name=name)
        log.info("addon.app_link_created")
        return self._render(
            created={"name": link.name, "url": link.url, "qr": qr_svg(link.url)},
        )

    def _render(
        self,
        *,
        status: int = 200,
        error: str | None = None,
        name: str = "",
        created: dict[str, Any] | None = None,
    ) -> web.Response:
        connected = self.panel.sources.status().state is State.CONNECTED
        response = self.panel.render(
            "app_link.html",
            status=status,
            connected=connected,
            supported=self.maker.app_links_supported(),
            unsupported=UNSUPPORTED,
            error=error,
            name=name,
            created=created,
            manage_url=self._manage_url(),
        )
        # The page may carry a secret (the link): never kept by the browser or a proxy.
        response.headers["Cache-Control"] = "no-store"
        return response
