"""Public sign-up with email verification (issue 3; R-RATE-02, R-RATE-03).

Threats and rules:

* **Unverified accounts do not exist.** A sign-up is stored as a pending row
  (address, Argon2id hash of the password typed, SHA-256 of a 256-bit link
  token, 24 h); the account is created only when the emailed link is used.
  Until then nothing can sign in with it.
* **Pre-registering someone else's address**: every sign-up is its own row
  with its own password and link, so the owner of the mailbox, opening the
  link from *their* sign-up, gets *their* password; a link from another
  person's sign-up lands in the owner's mailbox, never in theirs.
* **Account enumeration**: the page answers the same for a new address, a
  pending one and an existing account; an existing account's owner is mailed
  a note instead of a link, and the password is hashed in every case so the
  timing matches. Format errors (not an address, a weak password) are shown,
  as they say nothing about existing accounts.
* **Abuse**: at most :data:`SIGNUP_NETWORK` sign-ups per client network per
  hour (then 429) and :data:`MAILS_ADDRESS` mails per address per hour
  (further sign-ups get the same answer and no mail).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from homeport.accounts.db import Database
from homeport.accounts.identifiers import new_token, normalise_email, sha256_hex
from homeport.accounts.models import PendingSignup, User
from homeport.accounts.passwords import check_new_password, hash_password_async
from homeport.accounts.single_use import consume_once, rowcount
from homeport.accounts.throttle import Throttle, Window, account_key, network_key

__all__ = ["MAILS_ADDRESS", "SIGNUP_NETWORK", "VERIFY_LIFETIME", "SignupOutcome", "Signups"]

_log = logging.getLogger(__name__)

VERIFY_LIFETIME: Final = timedelta(hours=24)
SIGNUP_NETWORK: Final = Window(limit=5, window=timedelta(hours=1))
MAILS_ADDRESS: Final = Window(limit=3, window=timedelta(hours=1))
_MAX_TOKEN_CHARS: Final = 64


@dataclass(frozen=True, slots=True)
class SignupOutcome:
    """``wait`` > 0: 429. Otherwise mail ``email``: a ``verify`` link (``token``), or the
    ``exists`` note; ``mail`` None: no mail (cap reached). The page is the same for all."""

    wait: float = 0.0
    mail: Literal["verify", "exists"] | None = None
    email: str | None = None
    token: str | None = None


class Signups:
    def __init__(self, db: Database, throttle: Throttle, *, now: Callable[[], datetime]) -> None:
        self._db = db
        self._throttle = throttle
        self._now = now

    async def sign_up(self, email: str, password: str, *, ip: str | None) -> SignupOutcome:
        """Record a sign-up; raises ``InvalidEmail`` / ``PasswordPolicyError`` for bad input."""
        normal = normalise_email(email)
        check_new_password(password, context=[normal])
        wait = await self._throttle.attempt([(f"signup:net:{network_key(ip)}", SIGNUP_NETWORK)])
        if wait > 0:
            _log.warning("sign-up throttled")
            return SignupOutcome(wait=wait)
        # Hashed whatever happens next, so every answer costs the same.
        password_hash = await hash_password_async(password)
        capped = await self._throttle.attempt(
            [(f"signup:mail:{account_key(normal)}", MAILS_ADDRESS)]
        )
        async with self._db.session() as s:
            exists = await s.scalar(select(User.id).where(User.email == normal)) is not None
        if capped > 0:
            _log.warning("sign-up mail withheld: address was sent enough")
            return SignupOutcome()
        if exists:
            _log.info("sign-up for an existing account: owner told")
            return SignupOutcome(mail="exists", email=normal)
        token = new_token()
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            s.add(
                PendingSignup(
                    token_hash=sha256_hex(token),
                    email=normal,
                    password_hash=password_hash,
                    created_at=now,
                    expires_at=now + VERIFY_LIFETIME,
                )
            )
        _log.info("sign-up pending verification")
        return SignupOutcome(mail="verify", email=normal, token=token)

    async def pending_email(self, token: str) -> str | None:
        """The address of a live sign-up link (not used up), or ``None``."""
        row = await self._row(token)
        return None if row is None else row.email

    async def _row(self, token: str) -> PendingSignup | None:
        if not token or len(token) > _MAX_TOKEN_CHARS:
            return None
        async with self._db.session() as s:
            row = await s.get(PendingSignup, sha256_hex(token))
        if row is None or self._now() >= row.expires_at:
            return None
        return row

    async def verify(self, token: str) -> User | None:
        """Use a sign-up link: create the account with that sign-up's password.

        Every pending sign-up of the address is deleted (single use, and the
        other links die). ``None`` if the link is unknown or expired, or the
        address got an account meanwhile.
        """
        row = await self._row(token)
        if row is None:
            return None
        now = self._now()
        try:
            async with self._db.session(write=True) as s, s.begin():
                used = delete(PendingSignup).where(PendingSignup.token_hash == row.token_hash)
                if not await consume_once(s, used):  # a concurrent use won
                    return None
                await s.execute(delete(PendingSignup).where(PendingSignup.email == row.email))
                if await s.scalar(select(User.id).where(User.email == row.email)) is not None:
                    return None
                user = User(
                    email=row.email,
                    password_hash=row.password_hash,
                    created_at=now,
                    disabled=False,
                )
                s.add(user)
        except IntegrityError:  # the address got an account at the same moment
            return None
        _log.info("account created by verified sign-up: user %d", user.id)
        return user

    async def purge(self) -> int:
        async with self._db.session(write=True) as s, s.begin():
            result = await s.execute(
                delete(PendingSignup).where(PendingSignup.expires_at <= self._now())
            )
        return rowcount(result)
