"""Signing in and out with a password, and the TOTP step of a sign-in.

Threats this stops:

* Account enumeration: one answer for an unknown email and a wrong password.
* Password guessing: growing delays per account and network and a limit per
  network (:mod:`homeport.accounts.throttle`), answered with 429 and
  ``Retry-After``, the same for known and unknown addresses.
* Half-done sign-out: signing out also ends the tenant sessions this account
  session handed off, in the database and in the gate's cache.
* Cross-site requests and oversized forms: refused by :mod:`.guard` first.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from aiohttp import web

from homeport.accounts.audit import EventType
from homeport.accounts.errors import InvalidEmail
from homeport.accounts.identifiers import is_instance_id
from homeport.accounts.throttle import account_key, network_key, retry_after, signin_keys
from homeport.accounts.totp import Pending
from homeport.relay.redirects import redirect, safe_next
from homeport.relay.site.forms import read_form
from homeport.relay.site.keys import ACCOUNTS, AUDIT, CONFIG, GATE, PAGES, SIGNIN, current
from homeport.relay.site.signin_flow import PENDING_COOKIE

__all__ = ["pending_signin", "routes"]

log = logging.getLogger(__name__)

routes = web.RouteTableDef()


async def pending_signin(request: web.Request) -> tuple[str, Pending] | None:
    """The password sign-in waiting for its second step: (cookie token, what it proved)."""
    token = request.cookies.get(PENDING_COOKIE, "")
    pending = await request.app[ACCOUNTS].totp.pending(token)
    return None if pending is None else (token, pending)


async def signin_context(request: web.Request, next_path: str) -> dict[str, Any]:
    """What the sign-in page says about where the person is going.

    * an invitation (``next`` is its accept page): who invited whom to which home,
      and the way to create an account for it; the token in ``next`` is the
      invitee's own link, so it may learn what the invitation says;
    * a home (``next`` is the hand-off from a home's address): the home's address,
      never its name (anyone who has the address would learn the name otherwise).
    """
    target = urlsplit(next_path)
    query = parse_qs(target.query, max_num_fields=8)
    context: dict[str, Any] = {"invitation": None, "home_host": None}
    if target.path == "/invitations/accept":
        token = query.get("token", [""])[0]
        view = await request.app[ACCOUNTS].sharing.invitation(token) if token else None
        if view is not None:
            context["invitation"] = {
                "home": view.instance_name,
                "inviter": view.inviter_email,
                "email": view.email,
                "signup_url": "/invitations/signup?" + urlencode({"token": token}),
            }
    elif target.path == "/connect":
        instance_id = query.get("instance", [""])[0]
        if is_instance_id(instance_id):
            origin = request.app[CONFIG].tenant_origin(instance_id)
            context["home_host"] = origin.removeprefix("https://")
    return context


async def signin_page(
    request: web.Request,
    next_path: str,
    *,
    email: str = "",
    error: str | None = None,
    error_field: str | None = None,
    status: int = 200,
) -> web.Response:
    return request.app[PAGES].render(
        "signin.html",
        status=status,
        title="Sign in",
        next=next_path,
        email=email,
        error=error,
        error_field=error_field,
        **await signin_context(request, next_path),
    )


@routes.get("/signin")
async def signin_form(request: web.Request) -> web.StreamResponse:
    return await signin_page(request, safe_next(request.query.get("next")))


@routes.post("/signin")
async def signin(request: web.Request) -> web.StreamResponse:
    accounts = request.app[ACCOUNTS]
    form = await read_form(request)
    email = str(form.get("email", ""))[:320]
    password = str(form.get("password", ""))
    next_path = safe_next(str(form.get("next", "/")))
    keys = signin_keys(email, request.remote)
    wait = await accounts.throttle.attempt(keys)
    if wait > 0:
        # Same answer whether or not the address has an account.
        log.warning("account.signin_throttled", extra={"ip": request.remote})
        response = await signin_page(
            request,
            next_path,
            status=429,
            email=email,
            error="Too many sign-in attempts. Wait a moment, then try again.",
        )
        response.headers["Retry-After"] = retry_after(wait)
        return response
    user = None
    try:
        user = await accounts.users.authenticate(email, password)
    except (InvalidEmail, ValueError):
        user = None
    if user is None:
        log.warning("account.signin_failed", extra={"ip": request.remote})
        # Same work for known and unknown addresses (one lookup, one insert), so
        # the audit write cannot tell them apart by timing; unknown ones are
        # kept without an account, for the operator.
        known = await accounts.users.by_email(email)
        await request.app[AUDIT].record(
            request,
            EventType.SIGNIN_FAILED,
            user_id=known.id if known is not None else None,
            factor="password",
        )
        return await signin_page(
            request,
            next_path,
            status=401,
            email=email,
            error="Wrong email or password.",
            error_field="password",
        )
    net = network_key(request.remote)
    await accounts.throttle.succeeded(
        clear=[f"pw:pair:{account_key(email)}:{net}", f"pw:acct:{account_key(email)}"],
        refund=[f"pw:net:{net}"],
    )
    return await request.app[SIGNIN].first_factor_passed(request, user.id, next_path)


@routes.get("/signin/totp")
async def totp_form(request: web.Request) -> web.StreamResponse:
    found = await pending_signin(request)
    if found is None:
        return redirect("/signin")
    return request.app[PAGES].render(
        "totp.html",
        title="Two-step verification",
        recovery=request.query.get("recovery") == "1",
        error=None,
        passkey=await request.app[ACCOUNTS].passkeys.count(found[1].user_id) > 0,
    )


@routes.post("/signin/totp")
async def totp_signin(request: web.Request) -> web.StreamResponse:
    accounts = request.app[ACCOUNTS]
    found = await pending_signin(request)
    if found is None:
        return redirect("/signin")
    token, pending = found
    form = await read_form(request)
    recovery_code = str(form.get("recovery_code", ""))
    totp = accounts.totp
    if recovery_code:
        outcome = await totp.use_recovery_code(pending.user_id, recovery_code, ip=request.remote)
    else:
        code = str(form.get("code", ""))
        outcome = await totp.verify(pending.user_id, code, ip=request.remote)
    if not outcome.ok:
        if outcome.wait > 0:
            error = "Too many attempts. Wait a moment, then try again."
        else:
            error = "That code is not right. Try again."
        log.warning("account.second_factor_failed", extra={"user": pending.user_id})
        await request.app[AUDIT].record(
            request,
            EventType.SECOND_FACTOR_FAILED,
            user_id=pending.user_id,
            factor="recovery_code" if recovery_code else "totp",
        )
        response = request.app[PAGES].render(
            "totp.html",
            status=429 if outcome.wait > 0 else 401,
            title="Two-step verification",
            recovery=bool(recovery_code),
            error=error,
            passkey=await accounts.passkeys.count(pending.user_id) > 0,
        )
        if outcome.wait > 0:
            response.headers["Retry-After"] = retry_after(outcome.wait)
        return response
    if not await totp.finish_pending(token):
        return redirect("/signin")
    return await request.app[SIGNIN].finish_signin(
        request,
        pending.user_id,
        pending.next_path,
        second_factor=True,
        factor="password+recovery_code" if recovery_code else "password+totp",
    )


@routes.get("/signout")
async def signout_form(request: web.Request) -> web.StreamResponse:
    """A link anyone can follow from inside a home (the add-on's panel, a bookmark in
    Home Assistant's sidebar): it asks; only the same-origin POST signs out."""
    info = current(request)
    if info is None:
        return request.app[PAGES].message(
            "You are signed out",
            "This browser is not signed in to Homeport.",
            status=200,
            link="/signin",
            link_text="Sign in",
        )
    return request.app[PAGES].render("signout.html", title="Sign out", user_email=info.email)


@routes.post("/signout")
async def signout(request: web.Request) -> web.StreamResponse:
    info = current(request)
    if info is not None:
        # Ends the handed-off tenant sessions too, and cuts their open streams and
        # WebSockets at once; the gate's cache must not keep them alive for its TTL.
        request.app[GATE].end_sessions(
            await request.app[ACCOUNTS].sessions.sign_out(info.session_id)
        )
        await request.app[AUDIT].record(request, EventType.SIGNED_OUT, info)
        log.info("account.signout", extra={"user": info.user_id})
    return request.app[SIGNIN].signed_out()
