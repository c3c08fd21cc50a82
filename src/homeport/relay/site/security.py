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

import pyotp
import segno
from aiohttp import web

from homeport.accounts.audit import EventType
from homeport.accounts.sessions import SessionInfo
from homeport.accounts.totp import DIGITS, ISSUER, STEP_SECONDS, Enrolment, TotpError
from homeport.relay.site.forms import read_form
from homeport.relay.site.keys import ACCOUNTS, AUDIT, GATE, PAGES, current, notify, sign_in_first

__all__ = ["qr_data_uri", "routes", "security_page"]

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
    enrolment: Enrolment | None = None,
    recovery_codes: list[str] | None = None,
) -> web.Response:
    accounts = request.app[ACCOUNTS]
    totp = accounts.totp
    enabled = await totp.is_enabled(session.user_id)
    if enrolment is None and not enabled:
        secret = await totp.enrolment_secret(session.user_id)
        if secret is not None:
            enrolment = Enrolment(secret, _otpauth_uri(secret, session.email))
    return request.app[PAGES].render(
        "security.html",
        status=status,
        title="Security",
        user_email=session.email,
        error=error,
        enabled=enabled,
        enrolment=enrolment,
        qr=qr_data_uri(enrolment.uri) if enrolment is not None else None,
        recovery_codes=recovery_codes or [],
        codes_left=await totp.recovery_codes_left(session.user_id) if enabled else 0,
        passkeys=await accounts.passkeys.list(session.user_id),
    )


@routes.get(PATH)
async def security(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    return await security_page(request, session, error=None)


@routes.post("/security/totp/start")
async def totp_start(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    try:
        enrolment = await request.app[ACCOUNTS].totp.start_enrolment(session.user_id, session.email)
    except TotpError as exc:
        return await security_page(request, session, error=str(exc), status=409)
    return await security_page(request, session, error=None, enrolment=enrolment)


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
        return await security_page(request, session, error=error, status=status)
    log.info("account.totp_enabled", extra={"user": session.user_id})
    # A factor change ends every other session (R-SES-04): one opened by whoever
    # knew the password before the factor was added must not stay.
    await accounts.sessions.revoke_user(session.user_id, except_session_id=session.session_id)
    request.app[GATE].end_user(session.user_id, except_session_id=session.session_id)
    await request.app[AUDIT].record(request, EventType.TOTP_ENABLED, session, factor="totp")
    await notify(request, session.user_id, "two-step verification was turned on")
    return await security_page(request, session, error=None, recovery_codes=codes)
