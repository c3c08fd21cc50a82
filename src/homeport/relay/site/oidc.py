"""Sign in with Google, Apple or another OpenID provider, and link or unlink them.

The flow (authorization code + PKCE S256 + ``state`` + ``nonce``), and the threat
it is built around: a flow finished in a browser other than the one the person
used (login/session swap, issue #9). An attacker starts a flow, sends the
victim the provider URL, the victim signs in there, and the attacker's browser
must not then be signed in as the victim, nor get her identity linked to his
account. So the identity goes only to a browser that both *came back from the
provider* and *holds the binding cookie* of the browser that started the flow:

1. ``GET /signin/oidc/<provider>`` starts a flow (:class:`~homeport.accounts.oidc.OidcStore`),
   sets the browser-binding cookie :data:`BINDING_COOKIE` and sends the
   browser to the provider. (A GET link, not a form: the account site's CSP
   ``form-action 'self'`` would stop a form's redirect to the provider. Starting
   a flow changes nothing by itself.)
2. The provider sends the browser to ``/signin/oidc/<provider>/callback``: a GET
   with ``code`` and ``state`` in the query (Google), or a *cross-site* POST
   (``response_mode=form_post``, Apple). ``state`` must name a live, unused flow
   of this provider (used up at once). On the GET the Lax binding cookie is
   sent, so it is checked right there: missing or wrong, the flow is used up
   and no code is redeemed. On Apple's POST no Lax cookie is sent; a cookie that
   *is* sent must still match. Then the code is redeemed with the flow's PKCE
   verifier and the ID token passes every check of
   :func:`~homeport.accounts.oidc_tokens.verify_id_token` (nonce included). The
   verified identity is stored with the flow, and the browser is sent on with a
   303 to ``GET /signin/oidc/finish?ticket=…``, a one-time ticket minted for
   this browser alone.
3. ``GET /signin/oidc/finish`` is a top-level GET on our own site, so the Lax
   binding cookie *is* sent. The ticket and the cookie must both match the
   flow: a browser with the ticket but not the cookie (the victim's, in the
   attack) uses the flow up and gets nothing; a browser with the cookie but not
   the ticket (the attacker's) never learns it. No code or token is ever put
   in a URL we produce; the ticket is worthless without the cookie and spent on
   first use.
4. The identity (issuer, subject) picks the account. A known identity goes
   through :meth:`.signin_flow.SignInFlow.first_factor_passed`, the same step
   password sign-in uses, so an account's TOTP is always asked for (R-OIDC-05). An
   unknown identity whose verified email has no account gets a new account
   without a password; one whose email *has* an account is held: the person
   must sign in to that account with its own password and factors, then
   confirm, and only then is the identity linked (R-OIDC-03).
5. A link started from the settings page is never made at the finish step:
   the browser is sent to ``/security/oidc/confirm``, which names the identity
   (provider, email, subject) and links it only on a same-origin POST from the
   same browser and account.

Failures of steps 2 and 3 count against the client network
(:data:`OIDC_NETWORK`: 20 per 10 minutes, then 429), and are logged with
metadata only (provider, reason class, address), never a code, state or token.
"""

from __future__ import annotations

import logging
import time
from typing import Final
from urllib.parse import urlencode

from aiohttp import web

from homeport.accounts.errors import AccountExists, InvalidEmail
from homeport.accounts.oidc import (
    FLOW_LIFETIME,
    FinishedFlow,
    IdentityTaken,
    LastSignInMethod,
    WrongBrowser,
)
from homeport.accounts.oidc_tokens import (
    IdTokenError,
    is_private_relay_email,
    unverified_kid,
    verify_id_token,
)
from homeport.accounts.sessions import SessionInfo
from homeport.accounts.throttle import Window, network_key, retry_after
from homeport.relay.oidc_client import ProviderClient, ProviderError
from homeport.relay.oidc_settings import OidcProvider
from homeport.relay.pages import Pages
from homeport.relay.redirects import redirect, safe_next
from homeport.relay.site.forms import read_form
from homeport.relay.site.guard import OIDC_FORM_POST, OIDC_LINK_START
from homeport.relay.site.keys import ACCOUNTS, CONFIG, PAGES, SIGNIN, current, sign_in_first

__all__ = ["BINDING_COOKIE", "OIDC", "OIDC_NETWORK", "OidcProviders", "routes"]

log = logging.getLogger(__name__)

#: Random value tying a flow to the browser that started it (only its hash is stored).
BINDING_COOKIE: Final = "__Host-homeport_oidc"
OIDC_NETWORK: Final = Window(limit=20, window=FLOW_LIFETIME)
METHODS_PATH: Final = "/security/signin-methods"
CONFIRM_PATH: Final = "/security/oidc/confirm"
FINISH_PATH: Final = "/signin/oidc/finish"
HELD_PATH: Final = "/signin/oidc/link"

routes = web.RouteTableDef()


class OidcProviders:
    """The configured providers and a client for each (discovery and keys are cached)."""

    def __init__(self, providers: tuple[OidcProvider, ...]) -> None:
        self.providers = {p.name: p for p in providers}
        self.clients = {p.name: ProviderClient(p) for p in providers}

    @property
    def buttons(self) -> list[dict[str, str]]:
        """What the sign-in page shows: one button per configured provider."""
        return [{"name": p.name, "label": p.label} for p in self.providers.values()]

    def label(self, name: str) -> str:
        provider = self.providers.get(name)
        return provider.label if provider is not None else name


OIDC = web.AppKey("oidc", OidcProviders)


class CallbackRefused(Exception):
    """A callback or finish step failed; ``reason`` is logged, the person sees one message."""

    def __init__(self, reason: str, *, other_browser: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.other_browser = other_browser


def _redirect_uri(request: web.Request, provider: OidcProvider) -> str:
    """The exact redirect URI registered with the provider."""
    return f"{request.app[CONFIG].account_origin}/signin/oidc/{provider.name}/callback"


def _provider(request: web.Request) -> OidcProvider | None:
    return request.app[OIDC].providers.get(request.match_info.get("provider", ""))


def _other_browser(pages: Pages) -> web.Response:
    """Said to the browser that came back without the flow's cookie (the victim's)."""
    return pages.message(
        "Sign-in stopped",
        "This sign-in was started in another browser, so it has been stopped and "
        "nothing was signed in. If you did not start it yourself, someone may have "
        "sent you the link to get into your account: start sign-ins only from this "
        "site's own sign-in page.",
        status=400,
        link="/signin",
        link_text="Back to sign in",
    )


def _refused(pages: Pages, status: int = 400) -> web.Response:
    return pages.message(
        "Sign-in failed",
        "This sign-in could not be completed. Start again from the sign-in page.",
        status=status,
        link="/signin",
        link_text="Back to sign in",
    )


def _not_found(request: web.Request) -> web.Response:
    return request.app[PAGES].message("Not found", "There is nothing here.", status=404)


async def _go(
    request: web.Request,
    provider: OidcProvider,
    *,
    purpose: str,
    next_path: str,
    user_id: int | None = None,
) -> web.StreamResponse:
    pages = request.app[PAGES]
    flow = await request.app[ACCOUNTS].oidc.start(
        provider.name,
        "link" if purpose == "link" else "signin",
        next_path=next_path,
        user_id=user_id,
    )
    try:
        url = (
            await request.app[OIDC]
            .clients[provider.name]
            .authorization_url(
                redirect_uri=_redirect_uri(request, provider),
                state=flow.state,
                nonce=flow.nonce,
                code_verifier=flow.code_verifier,
            )
        )
    except ProviderError as exc:
        log.warning(
            "oidc.provider_unavailable", extra={"provider": provider.name, "reason": str(exc)}
        )
        return pages.message(
            "Sign-in unavailable",
            f"{provider.label} cannot be reached right now. Try again later.",
            status=503,
            link="/signin",
            link_text="Back to sign in",
        )
    response = redirect(url)
    response.set_cookie(
        BINDING_COOKIE,
        flow.binding,
        path="/",
        max_age=int(FLOW_LIFETIME.total_seconds()),
        secure=True,
        httponly=True,
        samesite="Lax",
    )
    pages.secure(response)
    return response


# ------------------------------------------------------------------ routes
# The fixed paths come before ``/signin/oidc/{provider}``, which would match them too.


@routes.get(FINISH_PATH)
async def finish(request: web.Request) -> web.StreamResponse:
    """Release the verified identity, only to the browser with the ticket *and* the cookie."""
    accounts, pages = request.app[ACCOUNTS], request.app[PAGES]
    net = network_key(request.remote)
    keys = [(f"oidc:net:{net}", OIDC_NETWORK)]
    wait = await accounts.throttle.attempt(keys)
    if wait > 0:
        response = _refused(pages, status=429)
        response.headers["Retry-After"] = retry_after(wait)
        return response
    try:
        flow = await accounts.oidc.finish(
            request.query.get("ticket", ""), request.cookies.get(BINDING_COOKIE, "")
        )
    except WrongBrowser:
        # The victim's browser in a swap attempt (or a person who switched
        # browsers mid-flow): the flow is used up, nothing is released.
        log.warning(
            "oidc.finish_failed",
            extra={"reason": "finished in another browser", "ip": request.remote},
        )
        return _other_browser(pages)
    if flow is None:
        log.warning(
            "oidc.finish_failed",
            extra={"reason": "unknown, used or expired ticket", "ip": request.remote},
        )
        return _refused(pages)
    await accounts.throttle.succeeded(clear=[], refund=[f"oidc:net:{net}"])
    resolved, keep_binding = await _resolve(request, flow)
    if not keep_binding:
        _drop_binding(resolved)
    return resolved


@routes.get(HELD_PATH)
async def held_form(request: web.Request) -> web.StreamResponse:
    """After signing in to the existing account: confirm linking the held identity."""
    held = await request.app[ACCOUNTS].oidc.held(request.cookies.get(BINDING_COOKIE, ""))
    session = current(request)
    if held is None:
        return _refused(request.app[PAGES])
    if session is None:
        return sign_in_first(HELD_PATH)
    return request.app[PAGES].render(
        "oidc_confirm.html",
        title="Link your account",
        user_email=session.email,
        label=request.app[OIDC].label(held[0]),
    )


@routes.post(HELD_PATH)
async def held_link(request: web.Request) -> web.StreamResponse:
    """Link the held identity, once the account it matched is freshly signed in to."""
    session = current(request)
    if session is None:
        return sign_in_first(HELD_PATH)
    flow = await request.app[ACCOUNTS].oidc.take_held(
        request.cookies.get(BINDING_COOKIE, ""), session.user_id
    )
    # The session must come from a sign-in made after the identity was held,
    # i.e. the person just proved the account's own password and factors.
    if flow is None or session.created_at < flow.created_at:
        log.warning("oidc.link_refused", extra={"user": session.user_id})
        return _refused(request.app[PAGES], status=403)
    response = await _link(request, session.user_id, flow)
    _drop_binding(response)
    return response


@routes.get("/signin/oidc/{provider}")
async def start_signin(request: web.Request) -> web.StreamResponse:
    provider = _provider(request)
    if provider is None:
        return _not_found(request)
    return await _go(
        request, provider, purpose="signin", next_path=safe_next(request.query.get("next"))
    )


@routes.get("/signin/oidc/{provider}/callback")
async def callback(request: web.Request) -> web.StreamResponse:
    accounts, pages = request.app[ACCOUNTS], request.app[PAGES]
    provider = _provider(request)
    if provider is None:
        return _not_found(request)
    net = network_key(request.remote)
    keys = [(f"oidc:net:{net}", OIDC_NETWORK)]
    wait = await accounts.throttle.attempt(keys)
    if wait > 0:
        log.warning("oidc.callback_throttled", extra={"ip": request.remote})
        response = _refused(pages, status=429)
        response.headers["Retry-After"] = retry_after(wait)
        return response
    try:
        ticket = await _callback(request, provider)
    except CallbackRefused as exc:
        log.warning(
            "oidc.callback_failed",
            extra={"provider": provider.name, "reason": exc.reason, "ip": request.remote},
        )
        return _other_browser(pages) if exc.other_browser else _refused(pages)
    await accounts.throttle.succeeded(clear=[], refund=[f"oidc:net:{net}"])
    response = redirect(FINISH_PATH + "?" + urlencode({"ticket": ticket}))
    pages.secure(response)
    return response


# Apple's ``response_mode=form_post``: a cross-site POST by design, so the guard's
# Origin check is waived for this route alone (by name); ``state`` is its proof.
routes.post("/signin/oidc/{provider}/callback", name=OIDC_FORM_POST)(callback)


def _callback_binding(request: web.Request, provider: OidcProvider) -> str | None:
    """The binding cookie to check at the callback; ``None``: it cannot be sent here.

    A GET callback is a top-level navigation, which carries the Lax cookie, so
    its absence is a failure. Apple's cross-site form POST never carries it;
    its check waits for the finishing GET (a cookie it does carry must match).
    """
    cookie = request.cookies.get(BINDING_COOKIE)
    if provider.response_mode == "form_post" and cookie is None:
        return None
    return cookie or ""


async def _callback(request: web.Request, provider: OidcProvider) -> str:
    accounts = request.app[ACCOUNTS]
    if request.method == "POST":
        if provider.response_mode != "form_post":
            raise CallbackRefused("POST callback for a query-mode provider")
        params = dict(await read_form(request))
    else:
        if provider.response_mode != "query":
            raise CallbackRefused("GET callback for a form_post provider")
        params = dict(request.query)
    state, code = str(params.get("state", "")), str(params.get("code", ""))
    try:
        flow = await accounts.oidc.claim(state, provider.name, _callback_binding(request, provider))
    except WrongBrowser as exc:
        raise CallbackRefused("the flow came back in another browser", other_browser=True) from exc
    if flow is None:
        raise CallbackRefused("unknown, used or expired state")
    if "error" in params or not code or len(code) > 2048:
        await accounts.oidc.fail(flow.id)
        # e.g. "access_denied", Apple's "user_cancelled_authorize": a short token, logged.
        error = str(params.get("error", ""))[:64]
        raise CallbackRefused(
            f"provider error {error!r}" if error.isascii() and error else "no code"
        )
    client = request.app[OIDC].clients[provider.name]
    try:
        id_token = await client.exchange(
            code=code,
            code_verifier=flow.code_verifier,
            redirect_uri=_redirect_uri(request, provider),
        )
        identity = verify_id_token(
            id_token,
            await client.keys(unverified_kid(id_token)),
            issuers=provider.accepted_issuers,
            client_id=provider.client_id,
            nonce_hash=flow.nonce_hash,
            now=int(time.time()),
        )
    except (ProviderError, IdTokenError) as exc:
        await accounts.oidc.fail(flow.id)
        raise CallbackRefused(str(exc)) from exc
    ticket = await accounts.oidc.verified(flow.id, identity)
    if ticket is None:
        raise CallbackRefused("flow no longer claimed")
    return ticket


async def _resolve(request: web.Request, flow: FinishedFlow) -> tuple[web.StreamResponse, bool]:
    """What a finished flow leads to; and whether the binding cookie is still needed."""
    accounts, pages = request.app[ACCOUNTS], request.app[PAGES]
    label = request.app[OIDC].label(flow.provider)
    identity = flow.identity
    oidc = accounts.oidc
    if flow.purpose == "link":
        return await _link_from_settings(request, flow)
    known = await oidc.identity(identity.issuer, identity.subject)
    if known is not None:
        user = await accounts.users.get(known.user_id)
        if user is None or user.disabled:
            log.warning("oidc.signin_refused", extra={"user": known.user_id})
            return _refused(pages, status=403), False
        await oidc.touch(known.id)
        log.info("oidc.signin", extra={"provider": flow.provider, "user": user.id})
        signed_in = await request.app[SIGNIN].first_factor_passed(
            request, user.id, flow.next_path, factor=f"oidc:{flow.provider}"
        )
        return signed_in, False
    if identity.email is None or not identity.email_verified:
        log.warning("oidc.no_verified_email", extra={"provider": flow.provider})
        no_email = pages.message(
            "No verified email",
            f"{label} did not confirm an email address for this sign-in, so no "
            "account can be made with it.",
            status=400,
            link="/signin",
            link_text="Back to sign in",
        )
        return no_email, False
    existing = await accounts.users.by_email(identity.email)
    if existing is not None:
        # Never link by email alone: the owner must prove the account first.
        await oidc.hold_for_link(flow.id, existing.id)
        log.info("oidc.link_held", extra={"provider": flow.provider, "user": existing.id})
        held = pages.render(
            "oidc_held.html",
            title="Link your account",
            label=label,
            email=existing.email,
            signin_url="/signin?" + urlencode({"next": HELD_PATH}),
        )
        return held, True  # the confirming POST needs the cookie
    try:
        user = await oidc.create_account(identity.email, flow.provider, identity)
    except (AccountExists, InvalidEmail):
        return _refused(pages, status=409), False
    log.info(
        "oidc.account_created",
        extra={
            "provider": flow.provider,
            "user": user.id,
            "private_relay": is_private_relay_email(identity.email),
        },
    )
    signed_in = await request.app[SIGNIN].first_factor_passed(
        request, user.id, flow.next_path, factor=f"oidc:{flow.provider}"
    )
    return signed_in, False


async def _link_from_settings(
    request: web.Request, flow: FinishedFlow
) -> tuple[web.StreamResponse, bool]:
    """A link asked for on the settings page: on to the confirmation page, never linked here."""
    pages = request.app[PAGES]
    session = current(request)
    if session is None or session.user_id != flow.user_id:
        # The account that asked for the link must be the one signed in now.
        log.warning("oidc.link_refused", extra={"reason": "another account signed in"})
        return _refused(pages, status=403), False
    oidc = request.app[ACCOUNTS].oidc
    known = await oidc.identity(flow.identity.issuer, flow.identity.subject)
    if known is not None and known.user_id != session.user_id:
        taken = pages.message(
            "Already linked",
            "This sign-in is already linked to another account.",
            status=409,
            link=METHODS_PATH,
            link_text="Back",
        )
        return taken, False
    await oidc.await_confirmation(flow.id)
    response = redirect(CONFIRM_PATH)
    pages.secure(response)
    return response, True  # the confirming POST needs the cookie


@routes.get(METHODS_PATH)
async def methods(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(METHODS_PATH)
    return await _methods_page(request, session, linked=request.query.get("linked"))


async def _methods_page(
    request: web.Request,
    session: SessionInfo,
    *,
    linked: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> web.Response:
    accounts, providers = request.app[ACCOUNTS], request.app[OIDC]
    account = await accounts.users.get(session.user_id)
    identities = await accounts.oidc.identities(session.user_id)
    linked_names = {i.provider for i in identities}
    labels = {p.name: p.label for p in providers.providers.values()}
    return request.app[PAGES].render(
        "oidc_methods.html",
        status=status,
        title="Sign-in methods",
        user_email=session.email,
        has_password=account is not None and account.has_password,
        identities=[
            {
                "id": i.id,
                "label": labels.get(i.provider, i.provider),
                "email": i.email,
                "created": i.created_at.strftime("%Y-%m-%d"),
                "last_used": i.last_used_at.strftime("%Y-%m-%d %H:%M UTC")
                if i.last_used_at
                else "never",
            }
            for i in identities
        ],
        available=[b for b in providers.buttons if b["name"] not in linked_names],
        linked=linked if linked in labels.values() else None,
        error=error,
    )


@routes.get(CONFIRM_PATH)
async def confirm_form(request: web.Request) -> web.StreamResponse:
    """Name the identity about to be linked (provider, email, subject) before linking it.

    Stops a link nobody meant: the person sees *which* account at the
    provider came back (say, another Google account that was signed in)
    and links it only by pressing the button.
    """
    session = current(request)
    if session is None:
        return sign_in_first(CONFIRM_PATH)
    flow = await request.app[ACCOUNTS].oidc.to_confirm(
        request.cookies.get(BINDING_COOKIE, ""), session.user_id
    )
    if flow is None:
        return _link_gone(request.app[PAGES])
    return request.app[PAGES].render(
        "oidc_link_confirm.html",
        title="Link a sign-in method",
        user_email=session.email,
        label=request.app[OIDC].label(flow.provider),
        identity_email=flow.identity.email,
        email_verified=flow.identity.email_verified,
        subject=flow.identity.subject,
    )


@routes.post(CONFIRM_PATH)
async def confirm_link(request: web.Request) -> web.StreamResponse:
    """Link the confirmed identity: a same-origin POST, this browser, this account."""
    session = current(request)
    if session is None:
        return sign_in_first(CONFIRM_PATH)
    flow = await request.app[ACCOUNTS].oidc.take_confirmed(
        request.cookies.get(BINDING_COOKIE, ""), session.user_id
    )
    if flow is None:
        log.warning("oidc.link_refused", extra={"user": session.user_id})
        return _link_gone(request.app[PAGES])
    response = await _link(request, session.user_id, flow)
    _drop_binding(response)
    return response


@routes.get("/security/oidc/{provider}/link", name=OIDC_LINK_START)
async def start_link(request: web.Request) -> web.StreamResponse:
    """Link another provider to the signed-in account.

    A GET (see the module docstring for why), so it is guarded against
    cross-site requests by ``Sec-Fetch-Site`` (:data:`.guard.NAVIGATION_ONLY`):
    only a navigation from our own pages (or typed by the person) may start a link.
    """
    provider = _provider(request)
    if provider is None:
        return _not_found(request)
    session = current(request)
    if session is None:
        return sign_in_first(METHODS_PATH)
    return await _go(
        request, provider, purpose="link", next_path=METHODS_PATH, user_id=session.user_id
    )


@routes.post("/security/oidc/unlink")
async def unlink(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(METHODS_PATH)
    form = await read_form(request)
    try:
        identity_id = int(str(form.get("identity", "")))
    except ValueError:
        return await _methods_page(request, session, error="Nothing to remove.", status=400)
    try:
        removed = await request.app[ACCOUNTS].oidc.unlink(session.user_id, identity_id)
    except LastSignInMethod as exc:
        return await _methods_page(request, session, error=str(exc), status=409)
    if not removed:
        return await _methods_page(request, session, error="Nothing to remove.", status=404)
    log.info("oidc.unlinked", extra={"user": session.user_id})
    response = redirect(METHODS_PATH)
    request.app[PAGES].secure(response)
    return response


def _link_gone(pages: Pages) -> web.Response:
    return pages.message(
        "Nothing to link",
        "This link could not be completed. Start again from the sign-in methods page.",
        status=400,
        link=METHODS_PATH,
        link_text="Sign-in methods",
    )


async def _link(request: web.Request, user_id: int, flow: FinishedFlow) -> web.StreamResponse:
    label = request.app[OIDC].label(flow.provider)
    try:
        await request.app[ACCOUNTS].oidc.link(user_id, flow.provider, flow.identity)
    except IdentityTaken as exc:
        return request.app[PAGES].message(
            "Already linked", str(exc), status=409, link=METHODS_PATH, link_text="Back"
        )
    log.info("oidc.linked", extra={"provider": flow.provider, "user": user_id})
    return redirect(METHODS_PATH + "?" + urlencode({"linked": label}))


def _drop_binding(response: web.StreamResponse) -> None:
    response.del_cookie(BINDING_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
