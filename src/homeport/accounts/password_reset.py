"""Password reset by email (R-PWD-05, R-RATE-02).

Threats and rules:

* **Account enumeration**: asking for a reset gives the same answer, at the
  same speed, whether or not an account has the address. Only the
  per-network check (:meth:`PasswordResets.admit`) runs before the answer;
  the work that differs between known and unknown addresses (looking the
  address up, the per-address mail cap, the new link: two extra writes) is
  :meth:`PasswordResets.issue`, which the relay runs in the background after
  answering. The counters are keyed by the address as typed.
* **Link theft and replay**: the link carries a 256-bit token, stored as its
  SHA-256, valid :data:`RESET_LIFETIME` (10 minutes, the checklist's bound),
  usable once; asking again or using one voids all earlier links of the
  account.
* **No way around a second factor**: a reset changes only the password; it
  never signs anyone in. Signing in afterwards still asks for TOTP (or a
  recovery code) when enabled.
* **A thief keeping a session**: setting the password ends every session of
  the account (and the caller drops them from the gate's cache); the owner
  is told by mail.
* **Mail bombing and guessing**: at most :data:`REQUESTS_NETWORK` reset
  requests per client network per hour (then 429), at most
  :data:`MAILS_ACCOUNT` reset mails per address per hour (further requests
  get the same answer and no mail, so a stranger cannot flood an inbox), and
  at most :data:`TOKEN_NETWORK` bad link tokens per network per 10 minutes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import delete, or_, select, update

from homeport.accounts.db import Database
from homeport.accounts.identifiers import new_token, sha256_hex
from homeport.accounts.models import EmailSignin, PasswordReset, PendingLogin, User
from homeport.accounts.single_use import consume_once, rowcount
from homeport.accounts.throttle import Throttle, Window, account_key, network_key

__all__ = [
    "MAILS_ACCOUNT",
    "REQUESTS_NETWORK",
    "RESET_LIFETIME",
    "TOKEN_NETWORK",
    "PasswordResets",
    "ResetRequest",
]

_log = logging.getLogger(__name__)

RESET_LIFETIME: Final = timedelta(minutes=10)
REQUESTS_NETWORK: Final = Window(limit=10, window=timedelta(hours=1))
MAILS_ACCOUNT: Final = Window(limit=3, window=timedelta(hours=1))
TOKEN_NETWORK: Final = Window(limit=20, window=timedelta(minutes=10))
_MAX_TOKEN_CHARS: Final = 64


@dataclass(frozen=True, slots=True)
class ResetRequest:
    """What to do after a reset request: ``wait`` > 0 means 429 (same for every address);
    otherwise mail ``token`` to ``email`` if both are set (an account exists and the
    per-address mail cap is not reached)."""

    wait: float = 0.0
    user_id: int | None = None
    email: str | None = None
    token: str | None = None


class PasswordResets:
    """Reset links over one database; the new password itself is set by ``Accounts``."""

    def __init__(self, db: Database, throttle: Throttle, *, now: Callable[[], datetime]) -> None:
        self._db = db
        self._throttle = throttle
        self._now = now

    async def request(
        self, email: str, normal_email: str | None, *, ip: str | None
    ) -> ResetRequest:
        """:meth:`admit` and :meth:`issue` in one go (the relay answers in between)."""
        wait = await self.admit(ip)
        if wait > 0:
            return ResetRequest(wait=wait)
        return await self.issue(email, normal_email)

    async def admit(self, ip: str | None) -> float:
        """Count a reset request against the client network; seconds to wait (0: go on).

        The same work for every address, so it may run before the answer.
        """
        wait = await self._throttle.attempt([(f"reset:net:{network_key(ip)}", REQUESTS_NETWORK)])
        if wait > 0:
            _log.warning("password reset request throttled")
        return wait

    async def issue(self, email: str, normal_email: str | None) -> ResetRequest:
        """Issue a reset link for ``normal_email`` if it has an enabled account.

        Costs more for a known address than an unknown one: run it after answering.
        """
        user: User | None = None
        if normal_email is not None:
            async with self._db.session() as s:
                user = await s.scalar(select(User).where(User.email == normal_email))
        if user is None or user.disabled:
            _log.info("password reset requested: no enabled account")
            return ResetRequest()
        mail_wait = await self._throttle.attempt(
            [(f"reset:mail:{account_key(email)}", MAILS_ACCOUNT)]
        )
        if mail_wait > 0:
            _log.warning("password reset mail withheld: user %d was sent enough", user.id)
            return ResetRequest()
        token = new_token()
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            await s.execute(delete(PasswordReset).where(PasswordReset.user_id == user.id))
            s.add(
                PasswordReset(
                    token_hash=sha256_hex(token),
                    user_id=user.id,
                    created_at=now,
                    expires_at=now + RESET_LIFETIME,
                    used_at=None,
                )
            )
        _log.info("password reset link issued: user %d", user.id)
        return ResetRequest(user_id=user.id, email=user.email, token=token)

    async def check_token(self, token: str, *, ip: str | None) -> tuple[int | None, float]:
        """``(user id, 0)`` for a live link; ``(None, wait)`` otherwise (wait > 0: throttled).

        Bad tokens count against the client network; good ones cost nothing.
        """
        key = f"reset:token:{network_key(ip)}"
        wait = await self._throttle.attempt([(key, TOKEN_NETWORK)])
        if wait > 0:
            return None, wait
        user_id = await self._live(token)
        if user_id is None:
            _log.warning("password reset link refused: unknown, used or expired")
            return None, 0.0
        await self._throttle.succeeded(clear=[], refund=[key])
        return user_id, 0.0

    async def _live(self, token: str) -> int | None:
        if not token or len(token) > _MAX_TOKEN_CHARS:
            return None
        now = self._now()
        async with self._db.session() as s:
            row = await s.get(PasswordReset, sha256_hex(token))
        if row is None or row.used_at is not None or now >= row.expires_at:
            return None
        return row.user_id

    async def consume(self, token: str) -> int | None:
        """Use the link up (once, atomically) and end the account's half-done sign-ins."""
        if not token or len(token) > _MAX_TOKEN_CHARS:
            return None
        now = self._now()
        digest = sha256_hex(token)
        async with self._db.session(write=True) as s, s.begin():
            used = PasswordReset.use(
                PasswordReset.token_hash == digest, PasswordReset.expires_at > now, at=now
            )
            if not await consume_once(s, used):
                return None
            user_id = await s.scalar(
                select(PasswordReset.user_id).where(PasswordReset.token_hash == digest)
            )
            assert user_id is not None
            # A sign-in that got past the old password must not finish after the reset.
            for model in (PendingLogin, EmailSignin):
                await s.execute(
                    update(model)
                    .where(model.user_id == user_id, model.used_at.is_(None))
                    .values(used_at=now)
                )
        return user_id

    async def purge(self) -> int:
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            result = await s.execute(
                delete(PasswordReset).where(
                    or_(PasswordReset.expires_at <= now, PasswordReset.used_at.is_not(None))
                )
            )
        return rowcount(result)
