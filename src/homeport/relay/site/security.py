"""The security page: turning TOTP on (QR code, confirmation), recovery codes, passkeys.

Threats this stops:

* Leaking the TOTP seed to a third party: the QR code is drawn here
  (``segno``) as an inline ``data:`` PNG, never fetched from a QR service,
  and only on the authenticated security page (R-TOTP-01).
* A session an attacker opened before a factor change living on: turning the
  factor on ends every other session and cuts their open traffic (R-SES-04).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

import pyotp
import segno
from aiohttp import web

from homeport.accounts.audit import EventType
from homeport.accounts.sessions import SessionInfo
from homeport.accounts.totp import DIGITS, ISSUER, STEP_SECONDS, Enrolment, TotpError
from homeport.relay.redirects import redirect
from homeport.relay.site.forms import read_form
from homeport.relay.site.keys import (
    ACCOUNTS,
    AUDIT,
    GATE,
    PAGES,
    SHOWN_ONCE,
    current,
    notify,
    sign_in_first,
)
from homeport.relay.site.once import OnceUnavailable

__all__ = ["key_groups", "qr_data_uri", "routes", "security_page", "show_recovery_codes"]

log = logging.getLogger(__name__)

PATH = "/security"

routes = web.RouteTableDef()


def qr_data_uri(text: str) -> str:
    """A PNG QR code of ``text`` as a ``data:`` URI (CSP: ``img-src 'self' data:``).

    PNG rather than SVG: it scales cleanly in an ``<img>`` at any CSS size and
    carries no markup at all.
    """
    uri: str = segno.make(text, error="m").png_data_uri(scale=8, border=4)
    return uri


def _otpauth_uri(secret_base32: str, email: str) -> str:
    return pyotp.TOTP(secret_base32, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=email, issuer_name=ISSUER
    )


async def security_page(
    request: web.Request,
    session: SessionInfo,
    *,
    error: str | None,
    status: int = 200,
    note: str | None = None,
) -> web.Response:
    accounts = request.app[ACCOUNTS]
    totp = accounts.totp
    enabled = await totp.is_enabled(session.user_id)
    enrolling = not enabled and await totp.enrolment_secret(session.user_id) is not None
    return request.app[PAGES].render(
        "security.html",
        status=status,
        title="Security",
        user_email=session.email,
        error=error,
        note=note,
        enabled=enabled,
        enrolling=enrolling,
        codes_left=await totp.recovery_codes_left(session.user_id) if enabled else 0,
        passkeys=await accounts.passkeys.list(session.user_id),
    )


#: What ``?done=`` on the security page says after a form's redirect.
_NOTES = {"totp-off": "Two-step verification is off. Your other sessions were ended."}


@routes.get(PATH)
async def security(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    note = _NOTES.get(request.query.get("done", ""))
    return await security_page(request, session, error=None, note=note)


def key_groups(secret_base32: str) -> str:
    """The TOTP key in groups of four, as authenticator apps show and accept it."""
    return " ".join(secret_base32[i : i + 4] for i in range(0, len(secret_base32), 4))


async def _setup_page(
    request: web.Request,
    session: SessionInfo,
    secret: str,
    *,
    error: str | None = None,
    status: int = 200,
) -> web.Response:
    uri = _otpauth_uri(secret, session.email)
    groups = key_groups(secret)
    return request.app[PAGES].render(
        "totp_setup.html",
        status=status,
        title="Set up an authenticator app",
        user_email=session.email,
        section="security",
        enrolment=Enrolment(secret, uri),
        qr=qr_data_uri(uri),
        key_groups=groups,
        # Screen readers spell the key character by character, group by group.
        key_spoken=", ".join(" ".join(group) for group in groups.split()),
        error=error,
        error_field="code" if error else None,
    )


@routes.get("/security/totp")
async def totp_setup(request: web.Request) -> web.StreamResponse:
    """The set-up page of an enrolment started by the POST below (post/redirect/get:
    a reload shows the same pending key, it does not start another one)."""
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    totp = request.app[ACCOUNTS].totp
    enabled = await totp.is_enabled(session.user_id)
    secret = None if enabled else await totp.enrolment_secret(session.user_id)
    if secret is None:
        return redirect(PATH)
    return await _setup_page(request, session, secret)


@routes.post("/security/totp/start")
async def totp_start(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    try:
        await request.app[ACCOUNTS].totp.start_enrolment(session.user_id, session.email)
    except TotpError as exc:
        return await security_page(request, session, error=str(exc), status=409)
    return redirect("/security/totp")


@routes.post("/security/totp/confirm")
async def totp_confirm(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    accounts = request.app[ACCOUNTS]
    form = await read_form(request)
    outcome, codes = await accounts.totp.confirm_enrolment(
        session.user_id, str(form.get("code", "")), ip=request.remote
    )
    if not outcome.ok:
        status = 429 if outcome.wait > 0 else 400
        error = (
            "Too many attempts. Wait a moment, then try again."
            if outcome.wait > 0
            else "That code is not right. Check the app and try again."
        )
        secret = await accounts.totp.enrolment_secret(session.user_id)
        if secret is None:
            return await security_page(request, session, error=error, status=status)
        return await _setup_page(request, session, secret, error=error, status=status)
    log.info("account.totp_enabled", extra={"user": session.user_id})
    # A factor change ends every other session (R-SES-04): one opened by whoever
    # knew the password before the factor was added must not stay.
    await accounts.sessions.revoke_user(session.user_id, except_session_id=session.session_id)
    request.app[GATE].end_user(session.user_id, except_session_id=session.session_id)
    await request.app[AUDIT].record(request, EventType.TOTP_ENABLED, session, factor="totp")
    await notify(request, session.user_id, "two-step verification was turned on")
    return await show_recovery_codes(request, session, codes, first=True)


async def show_recovery_codes(
    request: web.Request, session: SessionInfo, codes: list[str], *, first: bool
) -> web.Response:
    """Post/redirect/get for fresh recovery codes: they wait (:mod:`.once`) for the one
    page that shows them; if they cannot wait (Redis down on a cluster), this answer
    shows them itself, so they are never lost unseen."""
    payload = {"codes": codes, "first": first}
    try:
        ticket = await request.app[SHOWN_ONCE].put(session.session_id, "recovery_codes", payload)
    except OnceUnavailable:
        return _recovery_codes_page(request, session, payload)
    return redirect("/security/recovery-codes?" + urlencode({"shown": ticket}))


@routes.get("/security/recovery-codes")
async def recovery_codes(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    pages = request.app[PAGES]
    try:
        shown = await request.app[SHOWN_ONCE].take(
            session.session_id, "recovery_codes", request.query.get("shown")
        )
    except OnceUnavailable:
        # Not taken: the codes still wait, for a reload once the store answers again.
        response = pages.message(
            "Recovery codes cannot be shown right now",
            "Your new recovery codes are waiting, but cannot be shown at this moment. Reload "
            "this page in a few seconds. If they still do not appear within five minutes, "
            "get new ones on the security page (the old ones stop working).",
            status=503,
            user_email=session.email,
            link=PATH,
            link_text="Go to Security",
        )
        response.headers["Retry-After"] = "5"
        return response
    if shown is None:
        return pages.message(
            "Recovery codes are shown only once",
            "These recovery codes were shown already, so they are not shown again. If you "
            "did not save them, get new ones on the security page (the old ones stop working).",
            status=410,
            user_email=session.email,
            link=PATH,
            link_text="Go to Security",
        )
    return _recovery_codes_page(request, session, shown)


def _recovery_codes_page(
    request: web.Request, session: SessionInfo, shown: dict[str, Any]
) -> web.Response:
    codes: list[str] = shown["codes"]
    return request.app[PAGES].render(
        "recovery_codes.html",
        title="Your recovery codes",
        user_email=session.email,
        codes=codes,
        codes_text="Homeport recovery codes for "
        + session.email
        + "\n\n"
        + "\n".join(codes)
        + "\n",
        first=shown["first"],
    )
