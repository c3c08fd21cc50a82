"""Account-site pages for password reset by email (R-PWD-05, R-RATE-02, R-OPS-05).

Threats this stops (rules in :mod:`homeport.accounts.password_reset`):

* **Account enumeration**: ``POST /signin/forgot`` answers the same page,
  status and speed for every address; a throttled network gets 429 whatever
  the address. Before answering it does only what is the same for every
  address (the per-network count); looking the address up, the mail cap and
  the new link (two writes more for a known address, a measurable 4 ms) run
  in a background job after the answer, at most :data:`RESET_JOBS` at once
  (beyond that a request is answered the same and logged, not queued without
  bound).
* **Second-factor bypass**: a reset sets the password and nothing else; no
  session is created, so the next sign-in still asks for TOTP.
* **A thief staying signed in**: the new password ends every session of the
  account (database and gate cache) and every half-done sign-in; the owner
  is told by mail.
* **Links opened by mail scanners**: ``GET /signin/reset`` only shows the
  form; the link is used up by the POST that sets the password.
* **A weak password burning the link**: the password rules are checked
  before the link is used up, so a refused password can be corrected.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

from aiohttp import web

from homeport.accounts.errors import InvalidEmail, UnknownUser
from homeport.accounts.identifiers import normalise_email
from homeport.accounts.password_reset import RESET_LIFETIME
from homeport.accounts.passwords import PasswordPolicyError
from homeport.accounts.service import Accounts
from homeport.accounts.throttle import retry_after
from homeport.relay.pages import Pages
from homeport.relay.site.forms import field, read_form
from homeport.relay.site.keys import ACCOUNTS, CONFIG, GATE, MAIL, PAGES, MailOut
from homeport.relay.site.mail import link_refused

__all__ = ["RESET_JOBS", "BackgroundJobs", "routes"]

log = logging.getLogger(__name__)

_MINUTES = int(RESET_LIFETIME.total_seconds() // 60)
#: Reset jobs running in the background at once (each is a few database writes).
RESET_JOBS: Final = 64

routes = web.RouteTableDef()


class BackgroundJobs:
    """At most ``limit`` jobs at once, started after an answer has been decided."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        return len(self._tasks)

    def start(self, job: Coroutine[Any, Any, None]) -> bool:
        """Run ``job`` in the background; ``False`` (job dropped) when ``limit`` are running."""
        if len(self._tasks) >= self.limit:
            job.close()
            return False
        task = asyncio.get_running_loop().create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait (bounded) for the running jobs, then cancel the rest (shutdown)."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


#: The reset links being made after their answer (drained at shutdown).
JOBS = web.AppKey("reset_jobs", BackgroundJobs)


def _forgot_page(
    pages: Pages, *, sent: bool, email: str = "", error: str | None = None, status: int = 200
) -> web.Response:
    return pages.render(
        "forgot.html",
        status=status,
        title="Reset your password",
        sent=sent,
        email=email,
        error=error,
        minutes=_MINUTES,
    )


@routes.get("/signin/forgot")
async def forgot_form(request: web.Request) -> web.StreamResponse:
    return _forgot_page(request.app[PAGES], sent=False)


@routes.post("/signin/forgot")
async def forgot(request: web.Request) -> web.StreamResponse:
    accounts, pages = request.app[ACCOUNTS], request.app[PAGES]
    form = await read_form(request)
    email = field(form, "email", 320)
    try:
        normal: str | None = normalise_email(email)
    except InvalidEmail:
        normal = None
    wait = await accounts.password_resets.admit(request.remote)
    if wait > 0:
        log.warning("account.reset_throttled", extra={"ip": request.remote})
        response = _forgot_page(
            pages,
            sent=False,
            email=email,
            error="Too many requests from your network. Wait a while, then try again.",
            status=429,
        )
        response.headers["Retry-After"] = retry_after(wait)
        return response
    job = _issue(
        accounts,
        request.app[MAIL],
        request.app[CONFIG].account_origin,
        email,
        normal,
        ip=request.remote,
        user_agent=request.headers.get("User-Agent", ""),
    )
    if not request.app[JOBS].start(job):
        log.error("account.reset_dropped", extra={"ip": request.remote, "why": "too many"})
    log.info("account.reset_requested", extra={"ip": request.remote})
    # One answer for every address, before any work that differs between them.
    return _forgot_page(pages, sent=True)


async def _issue(
    accounts: Accounts,
    mail: MailOut,
    account_origin: str,
    email: str,
    normal: str | None,
    *,
    ip: str | None,
    user_agent: str,
) -> None:
    """After the answer: make the link and queue its mail, if the address has an account."""
    try:
        outcome = await accounts.password_resets.issue(email, normal)
    except Exception:
        log.exception("account.reset_failed")
        return
    if outcome.token is None or outcome.email is None:
        return
    link = account_origin + "/signin/reset?" + urlencode({"t": outcome.token})
    mail.outbox.post(
        mail.writer.password_reset(
            outcome.email,
            reset_url=link,
            minutes=_MINUTES,
            moment=datetime.now(UTC),
            ip=ip,
            user_agent=user_agent,
        )
    )


def _bad_link(pages: Pages, wait: float = 0.0) -> web.Response:
    return link_refused(
        pages,
        "This reset link was used already or has expired. Ask for a new one.",
        link="/signin/forgot",
        link_text="Reset your password",
        wait=wait,
    )


def _reset_page(
    pages: Pages,
    token: str,
    *,
    error: str | None = None,
    error_field: str | None = None,
    status: int = 200,
) -> web.Response:
    return pages.render(
        "reset.html",
        status=status,
        title="Choose a new password",
        token=token,
        error=error,
        error_field=error_field,
    )


@routes.get("/signin/reset")
async def reset_form(request: web.Request) -> web.StreamResponse:
    pages = request.app[PAGES]
    token = request.query.get("t", "")[:64]
    user_id, wait = await request.app[ACCOUNTS].password_resets.check_token(
        token, ip=request.remote
    )
    if user_id is None:
        return _bad_link(pages, wait)
    return _reset_page(pages, token)


@routes.post("/signin/reset")
async def reset(request: web.Request) -> web.StreamResponse:
    accounts, pages, mail = request.app[ACCOUNTS], request.app[PAGES], request.app[MAIL]
    form = await read_form(request)
    token = field(form, "t", 64)
    password, confirm = field(form, "password", 4096), field(form, "confirm", 4096)
    resets = accounts.password_resets
    user_id, wait = await resets.check_token(token, ip=request.remote)
    user = None if user_id is None else await accounts.users.get(user_id)
    if user is None:
        return _bad_link(pages, wait)
    if password != confirm:
        return _reset_page(
            pages, token, error="The two passwords differ.", error_field="confirm", status=400
        )
    try:
        # The whole policy, breached passwords included, before the link is used up.
        await accounts.users.screen(password, email=user.email)
    except PasswordPolicyError as exc:
        return _reset_page(pages, token, error=str(exc), error_field="password", status=400)
    if await resets.consume(token) != user.id:
        return _bad_link(pages)
    try:
        await accounts.users.set_password(user.id, password, screened=True)
    except (UnknownUser, PasswordPolicyError):
        return _bad_link(pages)
    request.app[GATE].end_user(user.id)
    log.info("account.password_reset", extra={"user": user.id, "ip": request.remote})
    mail.outbox.post(
        mail.writer.password_changed(
            user.email,
            by_reset=True,
            moment=datetime.now(UTC),
            ip=request.remote,
            user_agent=request.headers.get("User-Agent", ""),
        )
    )
    return pages.message(
        "Password changed",
        "Your password is changed and every session has ended. Sign in with the new "
        "password; your second factor, if you use one, is still required.",
        status=200,
        link="/signin",
        link_text="Sign in",
    )
