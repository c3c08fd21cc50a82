"""Passkey pages of the account site: add and remove passkeys, sign in with one.

The ceremonies run in the browser (``static/passkeys.js``, served from our own
origin under ``script-src 'self'``) and are checked by
:class:`homeport.accounts.passkeys.Passkeys`. Threats handled here, on top of
what that module stops:

* **Cross-site requests.** Every endpoint is a POST with ``Origin`` equal to the
  account site (checked by :mod:`.guard`, like every other form) and a JSON
  body, which a cross-site HTML form cannot send.
* **A stolen account session adding its own passkey** (persistence after a
  session theft): adding one needs the account password again, checked and
  throttled like a sign-in (:func:`homeport.relay.site.reauth.password_again`).
* **Ceremony fixation.** The challenge is bound to a ``__Host-`` cookie set by
  the options call, so a response only finishes the ceremony of the browser
  that started it.
* **Skipping the second step.** A passkey finishes a pending password sign-in
  only for the account whose password was proven (the pending cookie), and the
  pending sign-in is used up at once; a passwordless sign-in needs user
  verification on the device, so it is two factors by itself.
* **Filling the database.** Starting a sign-in needs no account but stores a
  challenge, so it is limited per client network (``429`` + ``Retry-After``;
  :meth:`homeport.accounts.passkeys.Passkeys.authentication_options`).
* **Disabled accounts.** Their passkeys get the same ``401`` as any passkey
  that does not work here (checked inside the passkey check; an account
  disabled in the instant after it is caught here too), never a ``500``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from homeport.accounts.audit import EventType
from homeport.accounts.errors import AccessDenied
from homeport.accounts.passkeys import (
    CEREMONY_LIFETIME,
    MAX_RESPONSE,
    PasskeyError,
    PasskeyThrottled,
    RelyingParty,
    credential_json,
)
from homeport.accounts.throttle import retry_after
from homeport.accounts.totp import Pending
from homeport.relay.redirects import redirect, safe_next
from homeport.relay.site.forms import read_form
from homeport.relay.site.guard import (
    PASSKEY_REGISTER,
    PASSKEY_REGISTER_OPTIONS,
    PASSKEY_SIGNIN,
    PASSKEY_SIGNIN_OPTIONS,
)
from homeport.relay.site.keys import ACCOUNTS, AUDIT, CONFIG, SIGNIN, current, notify
from homeport.relay.site.reauth import password_again
from homeport.relay.site.signin import pending_signin

__all__ = ["CEREMONY_COOKIE", "routes"]

log = logging.getLogger(__name__)

CEREMONY_COOKIE = "__Host-homeport_webauthn"
#: A password sign-in waiting for its second step: (cookie token, what it proved).
PendingSignin = tuple[str, Pending]

routes = web.RouteTableDef()


def _json(data: dict[str, Any], *, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _too_many(wait: float) -> web.Response:
    response = _json({"error": "Too many attempts. Wait a moment."}, status=429)
    response.headers["Retry-After"] = retry_after(wait)
    return response


def _rp(request: web.Request) -> RelyingParty:
    config = request.app[CONFIG]
    return RelyingParty(id=config.account_host, name="Homeport", origin=config.account_origin)


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    """The JSON body (origin and size checked by the guard), or the error response to send."""
    if request.content_type != "application/json":
        return _json({"error": "Expected JSON."}, status=415)
    try:
        raw = await request.read()  # already read, within the deadline (site limits)
        body = json.loads(raw) if len(raw) <= MAX_RESPONSE else None
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        return _json({"error": "The request is not valid."}, status=400)
    return body


async def _options(started: Awaitable[tuple[str, str]]) -> web.Response:
    """Answer a ceremony's options and bind it to this browser with the cookie."""
    try:
        token, options = await started
    except PasskeyThrottled as exc:
        return _too_many(exc.wait)
    except PasskeyError as exc:
        return _json({"error": str(exc)}, status=409)
    response = _json({"options": json.loads(options)})
    response.set_cookie(
        CEREMONY_COOKIE,
        token,
        path="/",
        max_age=int(CEREMONY_LIFETIME.total_seconds()),
        secure=True,
        httponly=True,
        samesite="Strict",
    )
    return response


def _end_ceremony(response: web.StreamResponse) -> None:
    response.del_cookie(CEREMONY_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")


# ---------------------------------------------------------------- registration


@routes.post("/security/passkeys/options", name=PASSKEY_REGISTER_OPTIONS)
async def register_options(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    session = current(request)
    if session is None:
        return _json({"error": "Sign in first."}, status=401)
    accounts = request.app[ACCOUNTS]
    checked = await password_again(accounts, request, session, str(body.get("password", "")))
    if checked is False:
        log.warning("passkey.register_password_wrong", extra={"user": session.user_id})
        return _json({"error": "That password is not right."}, status=401)
    if checked is not True:
        response = _json({"error": "Too many attempts. Wait a moment."}, status=429)
        response.headers["Retry-After"] = retry_after(float(checked))
        return response
    return await _options(
        accounts.passkeys.registration_options(
            _rp(request), session.user_id, session.email, str(body.get("name", ""))
        )
    )


@routes.post("/security/passkeys/register", name=PASSKEY_REGISTER)
async def register(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    session = current(request)
    if session is None:
        return _json({"error": "Sign in first."}, status=401)
    try:
        row = await request.app[ACCOUNTS].passkeys.register(
            _rp(request),
            session.user_id,
            request.cookies.get(CEREMONY_COOKIE, ""),
            credential_json(body),
        )
    except PasskeyError as exc:
        response = _json({"error": str(exc)}, status=400)
    else:
        await request.app[AUDIT].record(
            request, EventType.PASSKEY_ADDED, user_id=session.user_id, detail=f"passkey {row.id}"
        )
        await notify(request, session.user_id, "a passkey was added")
        response = _json({"redirect": "/security"})
    _end_ceremony(response)
    return response


@routes.post("/security/passkeys/delete")
async def delete(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return redirect("/signin")
    form = await read_form(request)
    try:
        passkey_id = int(str(form.get("id", "")))
    except ValueError:
        passkey_id = -1
    if await request.app[ACCOUNTS].passkeys.delete(session.user_id, passkey_id):
        log.info("passkey.deleted", extra={"user": session.user_id})
        await request.app[AUDIT].record(
            request,
            EventType.PASSKEY_REMOVED,
            user_id=session.user_id,
            detail=f"passkey {passkey_id}",
        )
        await notify(request, session.user_id, "a passkey was removed")
    return redirect("/security")


# --------------------------------------------------------------------- sign-in


@routes.post("/signin/passkey/options", name=PASSKEY_SIGNIN_OPTIONS)
async def signin_options(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    pending = await pending_signin(request)
    return await _options(
        request.app[ACCOUNTS].passkeys.authentication_options(
            _rp(request),
            user_id=None if pending is None else pending[1].user_id,
            ip=request.remote,
        )
    )


@routes.post("/signin/passkey", name=PASSKEY_SIGNIN)
async def signin(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    pending = await pending_signin(request)
    try:
        credential = credential_json(body)
    except PasskeyError as exc:
        return _json({"error": str(exc)}, status=400)
    outcome = await request.app[ACCOUNTS].passkeys.authenticate(
        _rp(request),
        request.cookies.get(CEREMONY_COOKIE, ""),
        credential,
        user_id=None if pending is None else pending[1].user_id,
        ip=request.remote,
    )
    if outcome.user_id is None:
        return await _refused(request, pending, outcome.wait)
    try:
        return await _signed_in(request, body, pending, outcome.user_id)
    except AccessDenied:
        # Disabled in the instant since the passkey check (which refuses disabled
        # accounts itself): the same answer as any passkey that does not work.
        return await _refused(request, pending, 0.0)


async def _refused(
    request: web.Request, pending: PendingSignin | None, wait: float
) -> web.Response:
    await request.app[AUDIT].record(
        request,
        EventType.SIGNIN_FAILED if pending is None else EventType.SECOND_FACTOR_FAILED,
        user_id=None if pending is None else pending[1].user_id,
        factor="passkey",
    )
    if wait > 0:
        response = _too_many(wait)
    else:
        response = _json({"error": "That passkey did not work here. Try again."}, status=401)
    _end_ceremony(response)
    return response


async def _signed_in(
    request: web.Request,
    body: dict[str, Any],
    pending: PendingSignin | None,
    user_id: int,
) -> web.Response:
    """The passkey proved ``user_id``: finish the sign-in."""
    accounts, flow = request.app[ACCOUNTS], request.app[SIGNIN]
    if pending is not None:
        # The second step of a password sign-in: use the pending sign-in up, once,
        # and finish like every other sign-in (the new-network step-up included).
        if not await accounts.totp.finish_pending(pending[0]):
            return _json({"error": "This sign-in has expired. Start again."}, status=401)
        finished = await flow.finish_signin(
            request,
            user_id,
            pending[1].next_path,
            second_factor=True,
            factor="password+passkey",
        )
        return _as_json(finished)
    # Passwordless: the passkey with user verification is both factors, and it cannot
    # be phished or replayed, so the emailed new-network code (a guard against stolen
    # passwords) is not asked for.
    token, row = await accounts.sessions.create(
        user_id,
        "account",
        user_agent=request.headers.get("User-Agent", ""),
        ip=request.remote or "",
        second_factor=True,
    )
    await request.app[AUDIT].record(
        request,
        EventType.SIGNIN_SUCCEEDED,
        user_id=row.user_id,
        factor="passkey",
        detail=f"session {row.id}",
    )
    response = _json({"redirect": safe_next(str(body.get("next", "/")))})
    flow.start_session(request, response, token, row.user_id)
    _end_ceremony(response)
    return response


def _as_json(finished: web.StreamResponse) -> web.Response:
    """A sign-in's redirect (to the page, or to the emailed-code step) for fetch()."""
    response = _json({"redirect": finished.headers.get("Location", "/")})
    for name, morsel in finished.cookies.items():
        response.cookies[name] = morsel
    _end_ceremony(response)
    return response
