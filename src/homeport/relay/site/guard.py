"""The one check in front of every account-site handler (deny by default).

Threats this stops, for every route (and every route added later), before
its handler runs:

* **Cross-site request forgery.** A state-changing request (``POST``,
  ``PUT``, ``PATCH``, ``DELETE``) must carry ``Origin`` equal to the account
  site's own origin; a foreign, ``null`` or missing ``Origin`` gets ``403``
  and the handler never runs. The only exemptions are named in
  :data:`CROSS_SITE`: provider callbacks that are cross-site by design
  (Apple's OpenID ``form_post``), which carry their own one-time state.
  ``GET`` routes that *start* something (a link with a provider) are named
  in :data:`NAVIGATION_ONLY` and need ``Sec-Fetch-Site: same-origin`` or
  ``none`` (typed by the person), so another site cannot start one.
* **Oversized bodies.** A state-changing request's body is at most
  :data:`FORM_LIMIT` (8 KiB), or the larger limit its route is given by name
  in :data:`BODY_LIMITS`; more gets ``413``. (Slow bodies and per-address
  caps are :mod:`.limits`, in front of this.)
* **Stale answers to unknown paths**: a path or method the site does not have
  gets the site's own ``404``/``405`` page.

It then puts the signed-in account (the account-site session, or ``None``)
on the request as :data:`~homeport.relay.site.keys.ACCOUNT`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from homeport.accounts.passkeys import MAX_RESPONSE
from homeport.relay.site.keys import ACCOUNT, ACCOUNTS, CONFIG, PAGES
from homeport.relay.site.signin_flow import ACCOUNT_COOKIE

__all__ = [
    "BODY_LIMITS",
    "CROSS_SITE",
    "FORM_LIMIT",
    "JSON_ROUTES",
    "NAVIGATION_ONLY",
    "OIDC_FORM_POST",
    "OIDC_LINK_START",
    "STATE_CHANGING",
    "guard",
    "origin_allowed",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATE_CHANGING: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORM_LIMIT: Final = 8 * 1024

#: Route names (given where the routes are declared).
OIDC_FORM_POST: Final = "oidc.form_post_callback"
OIDC_LINK_START: Final = "oidc.link_start"
PASSKEY_REGISTER_OPTIONS: Final = "passkeys.register_options"
PASSKEY_REGISTER: Final = "passkeys.register"
PASSKEY_SIGNIN_OPTIONS: Final = "passkeys.signin_options"
PASSKEY_SIGNIN: Final = "passkeys.signin"

#: State-changing routes that must accept other sites' requests. Each carries
#: its own proof instead: the OpenID flow's one-time ``state``, used up at once.
CROSS_SITE: Final = frozenset({OIDC_FORM_POST})
#: GET routes that start a flow: only from our own pages, or typed in.
NAVIGATION_ONLY: Final = frozenset({OIDC_LINK_START})
#: Routes that answer JSON (``fetch()`` from ``passkeys.js``), refusals included.
JSON_ROUTES: Final = frozenset(
    {PASSKEY_REGISTER_OPTIONS, PASSKEY_REGISTER, PASSKEY_SIGNIN_OPTIONS, PASSKEY_SIGNIN}
)
#: Bodies larger than a form: WebAuthn responses, the provider's callback form.
BODY_LIMITS: Final = {
    **dict.fromkeys(JSON_ROUTES, MAX_RESPONSE),
    OIDC_FORM_POST: 32 * 1024,
}
#: An account cookie longer than this is not looked up.
MAX_TOKEN: Final = 256


def origin_allowed(request: web.Request, account_origin: str) -> bool:
    """The CSRF rule: a state-changing request comes from a page of the account site."""
    return request.headers.get("Origin") == account_origin


def navigation_allowed(request: web.Request) -> bool:
    """A GET that starts something: a navigation from our own pages, or typed in."""
    return request.headers.get("Sec-Fetch-Site", "") in ("same-origin", "none")


def _refuse(request: web.Request, name: str | None, status: int) -> web.Response:
    if name in JSON_ROUTES:
        error = "Cross-site request refused." if status == 403 else "The request is too large."
        return web.json_response({"error": error}, status=status)
    pages = request.app[PAGES]
    if status == 403:
        return pages.message(
            "Request refused",
            "This form was sent from another site, or your browser did not say where it "
            "came from, so Homeport refused it. Open the page again and send the form "
            "from there.",
            status=403,
            link="/",
            link_text="Go to your homes",
        )
    return pages.message(
        "Too large",
        "The form is larger than Homeport accepts.",
        status=413,
        link="/",
        link_text="Go to your homes",
    )


async def _body_size(request: web.Request) -> int:
    """The body's size: announced, or as read (the limits read it before any handler)."""
    announced = request.content_length or 0
    if not request.body_exists or request.content_type == "multipart/form-data":
        return announced
    return max(announced, len(await request.read()))


def _no_route(request: web.Request, exc: web.HTTPException) -> web.Response:
    """Plain words and a way back for an address the site does not have (or not for GET)."""
    pages = request.app[PAGES]
    if exc.status == 405 and request.method in ("GET", "HEAD"):
        # Typically a form's address opened again (a bookmark, Back after a POST).
        response = pages.message(
            "This address is for a form",
            "This address takes a form sent from one of Homeport's pages, so there is "
            "nothing to show here. Go back to the page the form was on, or start again "
            "from your homes.",
            status=405,
            link="/",
            link_text="Go to your homes",
        )
        if "Allow" in exc.headers:  # only that: the exception's own Content-Type is text
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    if exc.status == 405:
        return pages.message(
            "Not allowed", "This address does not take that kind of request.", status=405
        )
    return pages.message(
        "Page not found",
        "There is no page at this address. It may have been mistyped, or the page has moved.",
        status=exc.status,
        link="/",
        link_text="Go to your homes",
    )


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    exc = request.match_info.http_exception
    if exc is not None:
        return _no_route(request, exc)
    name = request.match_info.route.name
    if request.method in STATE_CHANGING:
        if name not in CROSS_SITE and not origin_allowed(
            request, request.app[CONFIG].account_origin
        ):
            return _refuse(request, name, 403)
        if await _body_size(request) > BODY_LIMITS.get(name or "", FORM_LIMIT):
            return _refuse(request, name, 413)
    elif name in NAVIGATION_ONLY and not navigation_allowed(request):
        return _refuse(request, name, 403)
    token = request.cookies.get(ACCOUNT_COOKIE)
    request[ACCOUNT] = (
        await request.app[ACCOUNTS].sessions.resolve(token, kind="account")
        if token and len(token) <= MAX_TOKEN
        else None
    )
    return await handler(request)
