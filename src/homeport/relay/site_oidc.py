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
   through :meth:`AccountSite.first_factor_passed`, the same step password
   sign-in uses, so an account's TOTP is always asked for (R-OIDC-05). An
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
import re
import time
from typing import TYPE_CHECKING, Final
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
from homeport.accounts.throttle import Window, network_key, retry_after
from homeport.relay.oidc_client import ProviderClient, ProviderError
from homeport.relay.oidc_settings import OidcProvider
from homeport.relay.tenant import redirect, safe_next

if TYPE_CHECKING:
    from homeport.relay.account_site import AccountSite

__all__ = ["BINDING_COOKIE", "OIDC_NETWORK", "OidcSite"]

log = logging.getLogger(__name__)

#: Random value tying a flow to the browser that started it (only its hash is stored).
BINDING_COOKIE: Final = "__Host-homeport_oidc"
OIDC_NETWORK: Final = Window(limit=20, window=FLOW_LIFETIME)
MAX_CALLBACK_FORM: Final = 32 * 1024
METHODS_PATH: Final = "/security/signin-methods"
CONFIRM_PATH: Final = "/security/oidc/confirm"
FINISH_PATH: Final = "/signin/oidc/finish"
_PROVIDER_IN_PATH: Final = re.compile(r"/(?:signin|security)/oidc/([a-z][a-z0-9-]{0,31})(?:/|$)")


class CallbackRefused(Exception):
    """A callback or finish step failed; ``reason`` is logged, the person sees one message."""

    def __init__(self, reason: str, *, other_browser: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.other_browser = other_browser


class OidcSite:
    """The OpenID routes of the account site; registers itself on its router."""

    def __init__(self, site: AccountSite, providers: tuple[OidcProvider, ...]) -> None:
        self.site = site
        self.accounts = site.accounts
        self.pages = site.pages
        self.providers = {p.name: p for p in providers}
        self.clients = {p.name: ProviderClient(p) for p in providers}
        # Every template may show the buttons (the sign-in page does).
        self.pages.globals["oidc_buttons"] = self.buttons
        add = site.router.add_route
        add("GET", FINISH_PATH, self.finish)
        add("GET", "/signin/oidc/link", self.held_form)
        add("POST", "/signin/oidc/link", self.held_link)
        add("GET", "/signin/oidc/{provider}", self.start_signin)
        add("GET", "/signin/oidc/{provider}/callback", self.callback)
        add("POST", "/signin/oidc/{provider}/callback", self.callback)
        add("GET", METHODS_PATH, self.methods)
        add("GET", "/security/oidc/{provider}/link", self.start_link)
        add("GET", CONFIRM_PATH, self.confirm_form)
        add("POST", CONFIRM_PATH, self.confirm_link)
        add("POST", "/security/oidc/unlink", self.unlink)

    @property
    def buttons(self) -> list[dict[str, str]]:
        """What the sign-in page shows: one button per configured provider."""
        return [{"name": p.name, "label": p.label} for p in self.providers.values()]

    def redirect_uri(self, provider: OidcProvider) -> str:
        """The exact redirect URI registered with the provider."""
        return f"{self.site.config.account_origin}/signin/oidc/{provider.name}/callback"

    # ------------------------------------------------------------- helpers

    def _other_browser(self) -> web.Response:
        """Said to the browser that came back without the flow's cookie (the victim's)."""
        return self.pages.message(
            "Sign-in stopped",
            "This sign-in was started in another browser, so it has been stopped and "
            "nothing was signed in. If you did not start it yourself, someone may have "
            "sent you the link to get into your account: start sign-ins only from this "
            "site's own sign-in page.",
            status=400,
            link="/signin",
            link_text="Back to sign in",
        )

    def _refused(self, status: int = 400) -> web.Response:
        return self.pages.message(
            "Sign-in failed",
            "This sign-in could not be completed. Start again from the sign-in page.",
            status=status,
            link="/signin",
            link_text="Back to sign in",
        )

    async def _go(
        self,
        provider: OidcProvider,
        *,
        purpose: str,
        next_path: str,
        user_id: int | None = None,
    ) -> web.StreamResponse:
        flow = await self.accounts.oidc.start(
            provider.name,
            "link" if purpose == "link" else "signin",
            next_path=next_path,
            user_id=user_id,
        )
        try:
            url = await self.clients[provider.name].authorization_url(
                redirect_uri=self.redirect_uri(provider),
                state=flow.state,
                nonce=flow.nonce,
                code_verifier=flow.code_verifier,
            )
        except ProviderError as exc:
            log.warning(
                "oidc.provider_unavailable", extra={"provider": provider.name, "reason": str(exc)}
            )
            return self.pages.message(
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
        self.pages.secure(response)
        return response

    def _provider(self, request: web.Request) -> OidcProvider | None:
        # From the path itself: the account site dispatches on its own router, so
        # request.match_info is the outer application's.
        found = _PROVIDER_IN_PATH.match(request.path)
        return self.providers.get(found.group(1)) if found else None

    # -------------------------------------------------------------- routes

    async def start_signin(self, request: web.Request) -> web.StreamResponse:
        provider = self._provider(request)
        if provider is None:
            return self.pages.message("Not found", "There is nothing here.", status=404)
        return await self._go(
            provider, purpose="signin", next_path=safe_next(request.query.get("next"))
        )

    async def start_link(self, request: web.Request) -> web.StreamResponse:
        """Link another provider to the signed-in account.

        A GET (see the module docstring for why), so it is guarded against
        cross-site requests by ``Sec-Fetch-Site``: only a navigation from our
        own pages (or typed by the person) may start a link.
        """
        provider = self._provider(request)
        if provider is None:
            return self.pages.message("Not found", "There is nothing here.", status=404)
        if request.headers.get("Sec-Fetch-Site", "") not in ("same-origin", "none"):
            return self.pages.message("Not allowed", "Cross-site request refused.", status=403)
        user = await self.site._user(request)
        if user is None:
            return redirect("/signin?" + urlencode({"next": METHODS_PATH}))
        return await self._go(provider, purpose="link", next_path=METHODS_PATH, user_id=user[0])

    async def callback(self, request: web.Request) -> web.StreamResponse:
        provider = self._provider(request)
        if provider is None:
            return self.pages.message("Not found", "There is nothing here.", status=404)
        net = network_key(request.remote)
        keys = [(f"oidc:net:{net}", OIDC_NETWORK)]
        wait = await self.accounts.throttle.attempt(keys)
        if wait > 0:
            log.warning("oidc.callback_throttled", extra={"ip": request.remote})
            response = self._refused(status=429)
            response.headers["Retry-After"] = retry_after(wait)
            return response
        try:
            ticket = await self._callback(request, provider)
        except CallbackRefused as exc:
            log.warning(
                "oidc.callback_failed",
                extra={"provider": provider.name, "reason": exc.reason, "ip": request.remote},
            )
            return self._other_browser() if exc.other_browser else self._refused()
        await self.accounts.throttle.succeeded(clear=[], refund=[f"oidc:net:{net}"])
        response = redirect(FINISH_PATH + "?" + urlencode({"ticket": ticket}))
        self.pages.secure(response)
        return response

    def _callback_binding(self, request: web.Request, provider: OidcProvider) -> str | None:
        """The binding cookie to check at the callback; ``None``: it cannot be sent here.

        A GET callback is a top-level navigation, which carries the Lax cookie, so
        its absence is a failure. Apple's cross-site form POST never carries it;
        its check waits for the finishing GET (a cookie it does carry must match).
        """
        cookie = request.cookies.get(BINDING_COOKIE)
        if provider.response_mode == "form_post" and cookie is None:
            return None
        return cookie or ""

    async def _callback(self, request: web.Request, provider: OidcProvider) -> str:
        if request.method == "POST":
            if provider.response_mode != "form_post":
                raise CallbackRefused("POST callback for a query-mode provider")
            if (request.content_length or 0) > MAX_CALLBACK_FORM:
                raise CallbackRefused("oversized callback")
            params = dict(await request.post())
        else:
            if provider.response_mode != "query":
                raise CallbackRefused("GET callback for a form_post provider")
            params = dict(request.query)
        state, code = str(params.get("state", "")), str(params.get("code", ""))
        try:
            flow = await self.accounts.oidc.claim(
                state, provider.name, self._callback_binding(request, provider)
            )
        except WrongBrowser as exc:
            raise CallbackRefused(
                "the flow came back in another browser", other_browser=True
            ) from exc
        if flow is None:
            raise CallbackRefused("unknown, used or expired state")
        if "error" in params or not code or len(code) > 2048:
            await self.accounts.oidc.fail(flow.id)
            # e.g. "access_denied", Apple's "user_cancelled_authorize": a short token, logged.
            error = str(params.get("error", ""))[:64]
            raise CallbackRefused(
                f"provider error {error!r}" if error.isascii() and error else "no code"
            )
        client = self.clients[provider.name]
        try:
            id_token = await client.exchange(
                code=code,
                code_verifier=flow.code_verifier,
                redirect_uri=self.redirect_uri(provider),
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
            await self.accounts.oidc.fail(flow.id)
            raise CallbackRefused(str(exc)) from exc
        ticket = await self.accounts.oidc.verified(flow.id, identity)
        if ticket is None:
            raise CallbackRefused("flow no longer claimed")
        return ticket

    async def finish(self, request: web.Request) -> web.StreamResponse:
        """Release the verified identity, only to the browser with the ticket *and* the cookie."""
        net = network_key(request.remote)
        keys = [(f"oidc:net:{net}", OIDC_NETWORK)]
        wait = await self.accounts.throttle.attempt(keys)
        if wait > 0:
            response = self._refused(status=429)
            response.headers["Retry-After"] = retry_after(wait)
            return response
        try:
            flow = await self.accounts.oidc.finish(
                request.query.get("ticket", ""), request.cookies.get(BINDING_COOKIE, "")
            )
        except WrongBrowser:
            # The victim's browser in a swap attempt (or a person who switched
            # browsers mid-flow): the flow is used up, nothing is released.
            log.warning(
                "oidc.finish_failed",
                extra={"reason": "finished in another browser", "ip": request.remote},
            )
            return self._other_browser()
        if flow is None:
            log.warning(
                "oidc.finish_failed",
                extra={"reason": "unknown, used or expired ticket", "ip": request.remote},
            )
            return self._refused()
        await self.accounts.throttle.succeeded(clear=[], refund=[f"oidc:net:{net}"])
        resolved, keep_binding = await self._resolve(request, flow)
        if not keep_binding:
            _drop_binding(resolved)
        return resolved

    async def _resolve(
        self, request: web.Request, flow: FinishedFlow
    ) -> tuple[web.StreamResponse, bool]:
        """What a finished flow leads to; and whether the binding cookie is still needed."""
        provider = self.providers.get(flow.provider)
        label = provider.label if provider is not None else flow.provider
        identity = flow.identity
        oidc = self.accounts.oidc
        if flow.purpose == "link":
            return await self._link_from_settings(request, flow, label)
        known = await oidc.identity(identity.issuer, identity.subject)
        if known is not None:
            user = await self.accounts.get_user(known.user_id)
            if user is None or user.disabled:
                log.warning("oidc.signin_refused", extra={"user": known.user_id})
                return self._refused(status=403), False
            await oidc.touch(known.id)
            log.info("oidc.signin", extra={"provider": flow.provider, "user": user.id})
            signed_in = await self.site.first_factor_passed(
                request, user.id, flow.next_path, factor=f"oidc:{flow.provider}"
            )
            return signed_in, False
        if identity.email is None or not identity.email_verified:
            log.warning("oidc.no_verified_email", extra={"provider": flow.provider})
            no_email = self.pages.message(
                "No verified email",
                f"{label} did not confirm an email address for this sign-in, so no "
                "account can be made with it.",
                status=400,
                link="/signin",
                link_text="Back to sign in",
            )
            return no_email, False
        existing = await self.accounts.get_user_by_email(identity.email)
        if existing is not None:
            # Never link by email alone: the owner must prove the account first.
            await oidc.hold_for_link(flow.id, existing.id)
            log.info("oidc.link_held", extra={"provider": flow.provider, "user": existing.id})
            held = self.pages.render(
                "oidc_held.html",
                title="Link your account",
                label=label,
                email=existing.email,
                signin_url="/signin?" + urlencode({"next": "/signin/oidc/link"}),
            )
            return held, True  # the confirming POST needs the cookie
        try:
            user = await oidc.create_account(identity.email, flow.provider, identity)
        except (AccountExists, InvalidEmail):
            return self._refused(status=409), False
        log.info(
            "oidc.account_created",
            extra={
                "provider": flow.provider,
                "user": user.id,
                "private_relay": is_private_relay_email(identity.email),
            },
        )
        signed_in = await self.site.first_factor_passed(
            request, user.id, flow.next_path, factor=f"oidc:{flow.provider}"
        )
        return signed_in, False

    async def _link_from_settings(
        self, request: web.Request, flow: FinishedFlow, label: str
    ) -> tuple[web.StreamResponse, bool]:
        """A link asked for on the settings page: on to the confirmation page, never linked here."""
        session = await self.site._session(request)
        if session is None or session.user_id != flow.user_id:
            # The account that asked for the link must be the one signed in now.
            log.warning("oidc.link_refused", extra={"reason": "another account signed in"})
            return self._refused(status=403), False
        known = await self.accounts.oidc.identity(flow.identity.issuer, flow.identity.subject)
        if known is not None and known.user_id != session.user_id:
            taken = self.pages.message(
                "Already linked",
                "This sign-in is already linked to another account.",
                status=409,
                link=METHODS_PATH,
                link_text="Back",
            )
            return taken, False
        await self.accounts.oidc.await_confirmation(flow.id)
        response = redirect(CONFIRM_PATH)
        self.pages.secure(response)
        return response, True  # the confirming POST needs the cookie

    async def confirm_form(self, request: web.Request) -> web.StreamResponse:
        """Name the identity about to be linked (provider, email, subject) before linking it.

        Stops a link nobody meant: the person sees *which* account at the
        provider came back (say, another Google account that was signed in)
        and links it only by pressing the button.
        """
        session = await self.site._session(request)
        if session is None:
            return redirect("/signin?" + urlencode({"next": CONFIRM_PATH}))
        flow = await self.accounts.oidc.to_confirm(
            request.cookies.get(BINDING_COOKIE, ""), session.user_id
        )
        if flow is None:
            return self._link_gone()
        provider = self.providers.get(flow.provider)
        return self.pages.render(
            "oidc_link_confirm.html",
            title="Link a sign-in method",
            user_email=session.email,
            label=provider.label if provider else flow.provider,
            identity_email=flow.identity.email,
            email_verified=flow.identity.email_verified,
            subject=flow.identity.subject,
        )

    async def confirm_link(self, request: web.Request) -> web.StreamResponse:
        """Link the confirmed identity: a same-origin POST, this browser, this account."""
        if not self.site._same_origin(request):
            return self.pages.message("Not allowed", "Cross-site request refused.", status=403)
        session = await self.site._session(request)
        if session is None:
            return redirect("/signin?" + urlencode({"next": CONFIRM_PATH}))
        flow = await self.accounts.oidc.take_confirmed(
            request.cookies.get(BINDING_COOKIE, ""), session.user_id
        )
        if flow is None:
            log.warning("oidc.link_refused", extra={"user": session.user_id})
            return self._link_gone()
        provider = self.providers.get(flow.provider)
        response = await self._link(
            session.user_id, flow, provider.label if provider else flow.provider
        )
        _drop_binding(response)
        return response

    def _link_gone(self) -> web.Response:
        return self.pages.message(
            "Nothing to link",
            "This link could not be completed. Start again from the sign-in methods page.",
            status=400,
            link=METHODS_PATH,
            link_text="Sign-in methods",
        )

    async def _link(self, user_id: int, flow: FinishedFlow, label: str) -> web.StreamResponse:
        try:
            await self.accounts.oidc.link(user_id, flow.provider, flow.identity)
        except IdentityTaken as exc:
            return self.pages.message(
                "Already linked", str(exc), status=409, link=METHODS_PATH, link_text="Back"
            )
        log.info("oidc.linked", extra={"provider": flow.provider, "user": user_id})
        return redirect(METHODS_PATH + "?" + urlencode({"linked": label}))

    async def held_form(self, request: web.Request) -> web.StreamResponse:
        """After signing in to the existing account: confirm linking the held identity."""
        held = await self.accounts.oidc.held(request.cookies.get(BINDING_COOKIE, ""))
        user = await self.site._user(request)
        if held is None:
            return self._refused()
        if user is None:
            return redirect("/signin?" + urlencode({"next": "/signin/oidc/link"}))
        provider = self.providers.get(held[0])
        return self.pages.render(
            "oidc_confirm.html",
            title="Link your account",
            user_email=user[1],
            label=provider.label if provider else held[0],
        )

    async def held_link(self, request: web.Request) -> web.StreamResponse:
        """Link the held identity, once the account it matched is freshly signed in to."""
        if not self.site._same_origin(request):
            return self.pages.message("Not allowed", "Cross-site request refused.", status=403)
        session = await self.site._session(request)
        if session is None:
            return redirect("/signin?" + urlencode({"next": "/signin/oidc/link"}))
        flow = await self.accounts.oidc.take_held(
            request.cookies.get(BINDING_COOKIE, ""), session.user_id
        )
        # The session must come from a sign-in made after the identity was held,
        # i.e. the person just proved the account's own password and factors.
        if flow is None or session.created_at < flow.created_at:
            log.warning("oidc.link_refused", extra={"user": session.user_id})
            return self._refused(status=403)
        provider = self.providers.get(flow.provider)
        response = await self._link(
            session.user_id, flow, provider.label if provider else flow.provider
        )
        _drop_binding(response)
        return response

    async def methods(self, request: web.Request) -> web.StreamResponse:
        user = await self.site._user(request)
        if user is None:
            return redirect("/signin?" + urlencode({"next": METHODS_PATH}))
        return await self._methods_page(user, linked=request.query.get("linked"))

    async def _methods_page(
        self,
        user: tuple[int, str],
        *,
        linked: str | None = None,
        error: str | None = None,
        status: int = 200,
    ) -> web.Response:
        account = await self.accounts.get_user(user[0])
        identities = await self.accounts.oidc.identities(user[0])
        linked_names = {i.provider for i in identities}
        labels = {p.name: p.label for p in self.providers.values()}
        return self.pages.render(
            "oidc_methods.html",
            status=status,
            title="Sign-in methods",
            user_email=user[1],
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
            available=[b for b in self.buttons if b["name"] not in linked_names],
            linked=linked if linked in labels.values() else None,
            error=error,
        )

    async def unlink(self, request: web.Request) -> web.StreamResponse:
        if not self.site._same_origin(request):
            return self.pages.message("Not allowed", "Cross-site request refused.", status=403)
        user = await self.site._user(request)
        if user is None:
            return redirect("/signin?" + urlencode({"next": METHODS_PATH}))
        form = await request.post()
        try:
            identity_id = int(str(form.get("identity", "")))
        except ValueError:
            return await self._methods_page(user, error="Nothing to remove.", status=400)
        try:
            removed = await self.accounts.oidc.unlink(user[0], identity_id)
        except LastSignInMethod as exc:
            return await self._methods_page(user, error=str(exc), status=409)
        if not removed:
            return await self._methods_page(user, error="Nothing to remove.", status=404)
        log.info("oidc.unlinked", extra={"user": user[0]})
        response = redirect(METHODS_PATH)
        self.pages.secure(response)
        return response


def _drop_binding(response: web.StreamResponse) -> None:
    response.del_cookie(BINDING_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
