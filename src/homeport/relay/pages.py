"""Server-rendered pages of the relay (Jinja2, autoescaped) and their headers."""

from __future__ import annotations

import base64
import hashlib
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web

from homeport.relay.config import RelayConfig

HSTS = "max-age=63072000; includeSubDomains; preload"


def account_csp(config: RelayConfig) -> str:
    """No inline script or style, nothing from elsewhere; forms may post to tenant hosts."""
    tenant_forms = f"https://*.{config.tenant_domain}{config.port_suffix}"
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        f"form-action 'self' {tenant_forms}"
    )


#: Headers on every page the relay renders itself (account site, tenant-host notices).
PAGE_HEADERS = {
    "Strict-Transport-Security": HSTS,
    "X-Content-Type-Options": "nosniff",
    # Not "no-referrer": under it browsers send ``Origin: null`` with a form POST, which
    # the account site's CSRF check must refuse. "same-origin" still sends nothing to
    # other sites (tenant hosts included).
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}


#: What every template may look at, unless a page says otherwise.
_DEFAULTS: dict[str, Any] = {
    "user_email": None,  # signed in: the top bar shows the navigation and sign-out
    "section": None,  # the navigation entry to mark as the current page
    "wide": False,  # pages with tables use the full width
    "error": None,
    "error_field": None,  # the form field ``error`` belongs to (aria-describedby)
    "back": None,
    "back_text": "",
    "inline_css": None,  # the stylesheet inline (pages on hosts that serve no stylesheet)
}


class Pages:
    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.csp = account_csp(config)
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("homeport.relay", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        static = resources.files("homeport.relay").joinpath("static")
        self.css = static.joinpath("homeport.css").read_bytes()
        digest = base64.b64encode(hashlib.sha256(self.css).digest()).decode("ascii")
        #: The CSP of a page carrying the stylesheet inline: exactly that stylesheet.
        self.inline_csp = self.csp.replace("style-src 'self'", f"style-src 'sha256-{digest}'")
        self._scripts = {
            name: static.joinpath(name).read_bytes() for name in ("passkeys.js", "site.js")
        }

    @property
    def globals(self) -> dict[str, Any]:
        """Values every template sees (e.g. the OpenID sign-in buttons)."""
        return self._env.globals

    def set_global(self, name: str, value: object) -> None:
        """A value every template sees (e.g. whether an optional feature is on)."""
        self._env.globals[name] = value

    def render(
        self,
        template: str,
        *,
        status: int = 200,
        tenant: bool = False,
        **context: Any,
    ) -> web.Response:
        for name, default in _DEFAULTS.items():
            context.setdefault(name, default)
        html = self._env.get_template(template).render(
            account_origin=self.config.account_origin,
            static_origin="/.homeport" if tenant else "",
            tenant_page=tenant,
            **context,
        )
        response = web.Response(text=html, status=status, content_type="text/html")
        self.secure(response)
        return response

    def message(
        self,
        title: str,
        text: str,
        *,
        status: int,
        tenant: bool = False,
        link: str | None = None,
        link_text: str = "",
        **context: Any,
    ) -> web.Response:
        return self.render(
            "message.html",
            status=status,
            tenant=tenant,
            title=title,
            text=text,
            link=link,
            link_text=link_text,
            **context,
        )

    def standalone(self, title: str, text: str, *, status: int, **context: Any) -> web.Response:
        """A page for a host that serves nothing of its own (an unknown home address):
        the stylesheet travels inline, allowed by its hash alone (no script at all)."""
        response = self.render(
            "message.html",
            status=status,
            tenant=True,
            title=title,
            text=text,
            link=context.pop("link", None),
            link_text=context.pop("link_text", ""),
            inline_css=self.css.decode("utf-8"),
            **context,
        )
        response.headers["Content-Security-Policy"] = self.inline_csp
        return response

    def stylesheet(self) -> web.Response:
        response = web.Response(body=self.css, content_type="text/css", charset="utf-8")
        self.secure(response)
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response

    def script(self, name: str) -> web.Response:
        """One of our own scripts (the only script any relay page loads)."""
        response = web.Response(
            body=self._scripts[name], content_type="text/javascript", charset="utf-8"
        )
        self.secure(response)
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response

    def secure(self, response: web.StreamResponse) -> None:
        response.headers.update(PAGE_HEADERS)
        response.headers["Content-Security-Policy"] = self.csp
