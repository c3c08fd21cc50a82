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

from aiohttp import web

from homeport.accounts.audit import EventType
from homeport.accounts.errors import InvalidEmail
from homeport.accounts.throttle import account_key, network_key, retry_after, signin_keys
from homeport.accounts.totp import Pending
from homeport.relay.redirects import redirect, safe_next
from homeport.relay.site.forms import read_form
from homeport.relay.site.keys import ACCOUNTS, AUDIT, GATE, PAGES, SIGNIN, current
from homeport.relay.site.signin_flow import PENDING_COOKIE

__all__ = ["pending_signin", "routes"]

log = logging.getLogger(__name__)

routes = web.RouteTableDef()


async def pending_signin(request: web.Request) -> tuple[str, Pending] | None:
    """The password sign-in waiting for its second step: (cookie token, what it proved)."""
    token = request.cookies.get(PENDING_COOKIE, "")
    pending = await request.app[ACCOUNTS].totp.pending(token)
    return None if pending is None else (token, pending)


@routes.get("/signin")
async def signin_form(request: web.Request) -> web.StreamResponse:
    return request.app[PAGES].render(
        "signin.html",
        title="Sign in",
        next=safe_next(request.query.get("next")),
        email="",
        error=None,
    )


@routes.post("/signin")
async def signin(request: web.Request) -> web.StreamResponse:
    accounts, pages = request.app[ACCOUNTS], request.app[PAGES]
    form = await read_form(request)
    email = str(form.get("email", ""))[:320]
    password = str(form.get("password", ""))
    next_path = safe_next(str(form.get("next", "/")))
    keys = signin_keys(email, request.remote)
    wait = await accounts.throttle.attempt(keys)
    if wait > 0:
        # Same answer whether or not the address has an account.
        log.warning("account.signin_throttled", extra={"ip": request.remote})
        response = pages.render(
            "signin.html",
            status=429,
            title="Sign in",
            next=next_path,
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
        return pages.render(
            "signin.html",
            status=401,
            title="Sign in",
            next=next_path,
            email=email,
            error="Wrong email or password.",
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
