"""The account site as one aiohttp sub-application, and what goes into it.

The relay mounts it on the account host (``homeport.relay.app``). Each page
module brings its route table; the services live in typed slots
(:mod:`.keys`); two middlewares run before every handler, in this order:

1. :class:`~homeport.relay.site.limits.AccountLimits`: the per-address cap and
   the whole-body deadline (R-MT-14);
2. :func:`~homeport.relay.site.guard.guard`: cross-site and oversized
   state-changing requests refused, the signed-in account put on the request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from homeport.accounts.service import Accounts
from homeport.relay.app_links import AppLinkGate
from homeport.relay.config import RelayConfig
from homeport.relay.edge import SECURITY_TXT_PATH, security_txt
from homeport.relay.gate import SessionGate
from homeport.relay.integrations import IntegrationGate
from homeport.relay.mail_features import MailFeatures
from homeport.relay.pages import Pages
from homeport.relay.site import (
    access,
    audit,
    connect,
    email_change,
    email_code,
    factors,
    instances,
    integrations,
    oidc,
    pairing,
    passkeys,
    password,
    privacy,
    reset,
    security,
    sessions,
    signin,
    signup,
)
from homeport.relay.site.email_code import EmailCodeStepUp
from homeport.relay.site.events import AuditTrail
from homeport.relay.site.guard import guard
from homeport.relay.site.hooks import Homes
from homeport.relay.site.keys import (
    ACCOUNTS,
    APP_LINKS,
    AUDIT,
    CONFIG,
    GATE,
    HOMES,
    INVITATION_MAIL,
    MAIL,
    NOTICES,
    PAGES,
    PAIRING,
    SHOWN_ONCE,
    SIGNIN,
)
from homeport.relay.site.limits import TUNNEL_PATH, AccountLimits
from homeport.relay.site.notices import MailNotices
from homeport.relay.site.oidc import OIDC, OidcProviders
from homeport.relay.site.once import OnceStore, ShownOnce
from homeport.relay.site.signin_flow import SignInFlow

__all__ = ["account_site"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Every page module's routes, always on.
PAGE_ROUTES = (
    signin.routes,
    connect.routes,
    security.routes,
    factors.routes,
    passkeys.routes,
    oidc.routes,
    sessions.routes,
    audit.routes,
    password.routes,
    instances.routes,
    access.routes,
    privacy.routes,
    integrations.routes,
    pairing.routes,
)


def account_site(
    config: RelayConfig,
    *,
    accounts: Accounts,
    pages: Pages,
    gate: SessionGate,
    homes: Homes,
    app_links: AppLinkGate,
    limits: AccountLimits,
    mail: MailFeatures,
    providers: OidcProviders,
    tunnel: Handler,
    integration_gate: IntegrationGate,
    pairing_string: str,
    shown_once: OnceStore | None = None,
) -> web.Application:
    """The account site; ``tunnel`` serves ``GET /v1/tunnel`` (the add-ons' WebSockets);
    ``pairing_string``: what an add-on needs to reach and trust this relay;
    ``shown_once``: where secrets wait for the page after a redirect (default: memory)."""
    app = web.Application(middlewares=[limits.middleware, guard])
    trail = AuditTrail(accounts.audit)
    notices = MailNotices(accounts, mail.out) if mail.out is not None else None
    step_up = (
        EmailCodeStepUp(accounts, pages, mail.out, config.account_origin)
        if mail.out is not None
        else None
    )
    app[CONFIG] = config
    app[ACCOUNTS] = accounts
    app[PAGES] = pages
    app[GATE] = gate
    app[HOMES] = homes
    app[APP_LINKS] = app_links
    app[AUDIT] = trail
    app[SIGNIN] = SignInFlow(accounts, pages, trail, step_up)
    app[NOTICES] = notices
    app[INVITATION_MAIL] = notices
    app[OIDC] = providers
    app[integrations.INTEGRATIONS] = integration_gate
    app[SHOWN_ONCE] = shown_once if shown_once is not None else ShownOnce()
    app[PAIRING] = pairing_string
    pages.set_global("oidc_buttons", providers.buttons)  # the sign-in page shows them

    add = app.router.add_get
    add(TUNNEL_PATH, tunnel, allow_head=False)
    add(SECURITY_TXT_PATH, _security_txt)
    add("/healthz", _healthz, allow_head=False)
    add("/static/homeport.css", _stylesheet, allow_head=False)
    add("/static/passkeys.js", _passkeys_script, allow_head=False)
    add("/static/site.js", _site_script, allow_head=False)
    for routes in PAGE_ROUTES:
        _add_routes(app, routes)
    if mail.out is not None:
        # Without mail these pages do not exist (``mail.disabled`` names them at start-up).
        app[MAIL] = mail.out
        app[reset.JOBS] = mail.reset_jobs
        _add_routes(app, email_code.routes)
        _add_routes(app, reset.routes)
        _add_routes(app, email_change.routes)
        pages.set_global("email_change", True)
        pages.set_global("password_reset", True)
        if config.signup:
            _add_routes(app, signup.routes)
            pages.set_global("signup_open", True)
    return app


def _add_routes(app: web.Application, routes: web.RouteTableDef) -> None:
    """Each route for exactly its method: a page's GET does not answer HEAD (405, as ever)."""
    for route in routes:
        assert isinstance(route, web.RouteDef)
        app.router.add_route(route.method, route.path, route.handler, **route.kwargs)


async def _security_txt(request: web.Request) -> web.StreamResponse:
    return security_txt(request.app[CONFIG])


async def _healthz(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok\n")


async def _stylesheet(request: web.Request) -> web.StreamResponse:
    return request.app[PAGES].stylesheet()


async def _passkeys_script(request: web.Request) -> web.StreamResponse:
    return request.app[PAGES].script("passkeys.js")


async def _site_script(request: web.Request) -> web.StreamResponse:
    return request.app[PAGES].script("site.js")
