"""Security headers on every HTTPS response the relay writes (R-HSTS-01, R-HDR-01..10).

Two kinds of response leave the relay:

* **relay-owned** (account site, notices on tenant hosts, 421/405/501, the
  ``400`` aiohttp's parser writes, redirects, ``security.txt``): rendered
  pages carry the full page set from :mod:`homeport.relay.pages`; everything
  else gets :data:`BASELINE` so that no answer of ours can be cached, framed,
  sniffed, or run script (a 421 body is text, but a browser that is told
  nothing may still try);
* **proxied** (Home Assistant's answers, written by :mod:`homeport.relay.proxy`
  with :func:`tenant_response_headers`): only what cannot break Home
  Assistant is added, and a header HA sent is never weakened.

:func:`finish` runs as every relay-owned response is prepared (``EdgeRequest``
on the account site, :mod:`homeport.relay.proxy.responses` on tenant hosts),
routed or not, so no code path can forget it: it removes version banners (stops
fingerprinting, R-HDR-07), puts exactly one HSTS header on every HTTPS
response (stops SSL stripping on the next visit, R-HSTS-01) and ``nosniff``
(stops content-type confusion, R-HDR-03).
"""

from __future__ import annotations

from aiohttp import web

from homeport.protocol import Headers
from homeport.relay.pages import HSTS

BANNERS = ("Server", "X-Powered-By")

#: Relay-owned responses that are not rendered pages: nothing to load, run or frame.
BASELINE = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Cross-Origin-Resource-Policy": "same-origin",
}

#: Added to a proxied response only when HA sent no framing policy at all: HA's own
#: panels and iframes are same-origin, and a foreign site framing HA is clickjacking.
TENANT_FRAMING = "frame-ancestors 'self'"
TENANT_REFERRER = "strict-origin-when-cross-origin"


def finish(response: web.StreamResponse, *, secure: bool) -> None:
    """Last word on a response's headers, just before it is written."""
    for name in BANNERS:
        response.headers.popall(name, None)
    if not secure:
        return  # RFC 6797 §7.2: no HSTS over plain HTTP
    response.headers["Strict-Transport-Security"] = HSTS  # replaces any other, so exactly one
    response.headers["X-Content-Type-Options"] = "nosniff"
    for name, value in BASELINE.items():
        response.headers.setdefault(name, value)


def tenant_response_headers(headers: Headers) -> Headers:
    """Headers for a response proxied from Home Assistant; never weakens one HA sent.

    ``headers`` are what :func:`homeport.relay.headers.response_headers` let
    through (lower-case names); the result is what the browser gets:

    * HSTS and ``nosniff``: always; HA's own HSTS never reaches the browser
      (``headers.RESPONSE_OWNED``), so there is exactly one.
    * ``Referrer-Policy``: only if HA sent none (keeps tenant URLs, which name the
      home, out of other sites' logs).
    * ``frame-ancestors 'self'``: only if HA sent neither ``X-Frame-Options`` nor a
      CSP with ``frame-ancestors``.  Adding it next to ``X-Frame-Options: DENY``
      would weaken HA's choice, since browsers let ``frame-ancestors`` override
      ``X-Frame-Options``.  It goes in its own ``Content-Security-Policy`` header:
      several policies are all enforced, so HA's own CSP is untouched.
    * Deliberately not added: a full CSP (HA's frontend has its own script needs),
      ``Permissions-Policy`` (HA uses the microphone for Assist, the camera for QR
      codes, Web Serial/USB in add-on dashboards), COOP/CORP (HA's cast receiver
      and companion apps load its resources cross-origin), ``Cache-Control`` (HA
      caches its static assets on purpose).
    """
    out = list(headers)
    out.append(("strict-transport-security", HSTS))
    names = {name for name, _ in headers}
    if "x-content-type-options" not in names:
        out.append(("x-content-type-options", "nosniff"))
    if "referrer-policy" not in names:
        out.append(("referrer-policy", TENANT_REFERRER))
    if not has_framing_policy(headers):
        out.append(("content-security-policy", TENANT_FRAMING))
    return out


def has_framing_policy(headers: Headers) -> bool:
    """True if the response already says who may frame it."""
    for name, value in headers:
        if name == "x-frame-options":
            return True
        if name == "content-security-policy":
            for directive in value.split(";"):
                if directive.strip().lower().split(" ", 1)[0] == "frame-ancestors":
                    return True
    return False
