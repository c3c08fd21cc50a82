"""Security headers on every HTTPS response the relay writes (R-HSTS-01, R-HDR-01..10).

Two kinds of response leave the relay:

* **relay-owned** (account site, notices on tenant hosts, 421/405/501, the
  ``400`` aiohttp's parser writes, redirects, ``security.txt``): rendered
  pages carry the full page set from :mod:`homeport.relay.pages`; everything
  else gets :data:`BASELINE` so that no answer of ours can be cached, framed,
  sniffed, or run script (a 421 body is text, but a browser that is told
  nothing may still try);
* **proxied** (Home Assistant's answers, marked with :data:`PROXIED` by
  :func:`tenant_headers`): only what cannot break Home Assistant is added,
  and a header HA sent is never weakened.

:func:`finish` runs as every response is prepared (``EdgeRequest``), routed
or not, so no code path can forget it: it removes version banners (stops
fingerprinting, R-HDR-07), puts exactly one HSTS header on every HTTPS
response (stops SSL stripping on the next visit, R-HSTS-01) and ``nosniff``
(stops content-type confusion, R-HDR-03).
"""

from __future__ import annotations

from aiohttp import web

from homeport.relay.pages import HSTS

#: Set on a response whose headers came from Home Assistant through a tunnel.
PROXIED = web.ResponseKey("homeport_proxied", bool)

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
    if response.get(PROXIED):
        return
    for name, value in BASELINE.items():
        response.headers.setdefault(name, value)


def tenant_headers(response: web.StreamResponse) -> None:
    """Headers for a response proxied from Home Assistant; never weakens one HA sent.

    * HSTS and ``nosniff``: always (``finish``); HA's own HSTS never reaches the
      browser (``headers.RESPONSE_OWNED``), so there is exactly one.
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
    response[PROXIED] = True
    response.headers["Strict-Transport-Security"] = HSTS
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", TENANT_REFERRER)
    if not has_framing_policy(response):
        response.headers.add("Content-Security-Policy", TENANT_FRAMING)


def has_framing_policy(response: web.StreamResponse) -> bool:
    """True if the response already says who may frame it."""
    if "X-Frame-Options" in response.headers:
        return True
    for policy in response.headers.getall("Content-Security-Policy", []):
        for directive in policy.split(";"):
            if directive.strip().lower().split(" ", 1)[0] == "frame-ancestors":
                return True
    return False
