"""Emailed code for a sign-in from a new network (R-EML-01..03), known devices and networks.

Threats and rules (security checklist 6.3, R-RATE-02):

* **A step-up, never a factor.** A challenge is started only for an account
  that has already passed its password (and its second factor when one is
  enabled); the emailed code adds a check, it never replaces one.
* **"New" means both** an unknown device cookie (``__Host-homeport_device``,
  256 random bits, only its SHA-256 stored, per account) **and** an unseen
  client network (IPv4 address, IPv6 /64: :func:`~homeport.accounts.throttle.
  network_key`), so privacy-address changes within one /64 do not prompt.
* **The code**: 6 digits from :mod:`secrets`, valid 10 minutes, single use,
  bound to the pending sign-in: the stored hash is SHA-256 of the pending
  cookie token *and* the code, so a code typed into another pending sign-in
  never matches, and a database reader (who lacks the token) cannot brute
  force the 10**6 codes offline.
* **5 tries per pending sign-in**, counted across resends; the 5th wrong code
  ends the pending sign-in, and the person must sign in again (password and
  factors). A resend issues a new code but never resets the count (NIST
  §3.1.3), is allowed at most :data:`MAX_SENDS` - 1 times, at least
  :data:`RESEND_INTERVAL` apart, and a pending sign-in lives at most
  :data:`PENDING_LIFETIME`.
* **Throttled like other credential checks**: wrong codes count against the
  account (:data:`CODE_ACCOUNT`, growing delays) and the client network
  (:data:`CODE_NETWORK`); mails per account are capped (:data:`MAILS_ACCOUNT`)
  so a password thief cannot mail-bomb the owner.
* **"This wasn't me"**: every mail carries a single-use link token (hashed
  at rest, valid :data:`ALERT_LIFETIME`) that ends the account's sessions;
  the relay's page does that (:meth:`EmailSignins.deny` says for whom).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from homeport.accounts.db import Database
from homeport.accounts.identifiers import new_token, sha256_hex
from homeport.accounts.models import (
    NEXT_PATH_MAX,
    EmailSignin,
    KnownDevice,
    KnownNetwork,
    PendingLogin,
    SigninAlert,
)
from homeport.accounts.single_use import consume_once, rowcount
from homeport.accounts.throttle import Backoff, Rule, Throttle, Window, network_key

__all__ = [
    "ALERT_LIFETIME",
    "CODE_DIGITS",
    "CODE_LIFETIME",
    "DEVICE_LIFETIME",
    "MAX_FAILURES",
    "MAX_SENDS",
    "CodeOutcome",
    "EmailSignins",
    "Issued",
    "new_code",
]

_log = logging.getLogger(__name__)

CODE_DIGITS: Final = 6
CODE_LIFETIME: Final = timedelta(minutes=10)
PENDING_LIFETIME: Final = timedelta(minutes=30)
MAX_FAILURES: Final = 5
MAX_SENDS: Final = 3
RESEND_INTERVAL: Final = timedelta(seconds=30)
ALERT_LIFETIME: Final = timedelta(days=7)
#: A device cookie unused this long is forgotten (and its cookie expires).
DEVICE_LIFETIME: Final = timedelta(days=180)
NETWORK_LIFETIME: Final = timedelta(days=180)
CODE_ACCOUNT: Final = Backoff(free=4, base=1.0, cap=15 * 60.0)
CODE_NETWORK: Final = Window(limit=20, window=timedelta(minutes=10))
MAILS_ACCOUNT: Final = Window(limit=10, window=timedelta(hours=1))
_MAX_TOKEN_CHARS: Final = 64


def new_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def _code_hash(token: str, code: str) -> str:
    return sha256_hex(f"{token}:{code}")


def _normal_code(code: str) -> str:
    digits = "".join(code.split())[:16]
    return digits if len(digits) == CODE_DIGITS and digits.isascii() and digits.isdigit() else ""


@dataclass(frozen=True, slots=True)
class Issued:
    """A code to mail: the pending sign-in's cookie token (new challenges only), the code
    and the "this wasn't me" token of this mail. ``wait`` > 0: nothing issued, retry later."""

    token: str
    code: str
    alert_token: str
    user_id: int
    wait: float = 0.0


@dataclass(frozen=True, slots=True)
class CodeOutcome:
    """``ok``: right code, sign-in may finish. ``ended``: pending sign-in gone (sign in again).
    ``wait`` > 0: refused unchecked, retry after this many seconds."""

    ok: bool
    user_id: int | None = None
    next_path: str = "/"
    ended: bool = False
    wait: float = 0.0


class EmailSignins:
    """Pending email-code sign-ins, "this wasn't me" links, known devices and networks."""

    def __init__(self, db: Database, throttle: Throttle, *, now: Callable[[], datetime]) -> None:
        self._db = db
        self._throttle = throttle
        self._now = now

    # ------------------------------------------------------- known places

    async def device_known(self, user_id: int, device_token: str | None) -> bool:
        """Whether this browser (its device cookie) already signed in to the account."""
        if not device_token or len(device_token) > _MAX_TOKEN_CHARS:
            return False
        async with self._db.session() as s:
            seen = await s.scalar(
                select(KnownDevice.last_seen_at).where(
                    KnownDevice.token_hash == sha256_hex(device_token),
                    KnownDevice.user_id == user_id,
                )
            )
        return seen is not None and self._now() - seen < DEVICE_LIFETIME

    async def is_known(self, user_id: int, device_token: str | None, ip: str | None) -> bool:
        """Whether this browser or this network already signed in to the account."""
        if await self.device_known(user_id, device_token):
            return True
        now = self._now()
        async with self._db.session() as s:
            seen = await s.scalar(
                select(KnownNetwork.last_seen_at).where(
                    KnownNetwork.user_id == user_id, KnownNetwork.network == network_key(ip)
                )
            )
        return seen is not None and now - seen < NETWORK_LIFETIME

    async def remember(self, user_id: int, device_token: str | None, ip: str | None) -> str:
        """Record a finished sign-in's browser and network; the device token for the cookie.

        A presented token is kept only if the relay minted it (it is known for
        some account); any other value is replaced, so a client cannot choose
        its own device identifier.
        """
        try:
            return await self._remember(user_id, device_token, ip)
        except IntegrityError:  # a concurrent sign-in of this browser or network wrote first
            return await self._remember(user_id, device_token, ip)

    async def _remember(self, user_id: int, device_token: str | None, ip: str | None) -> str:
        now = self._now()
        net = network_key(ip)
        async with self._db.session(write=True) as s, s.begin():
            token: str | None = None
            if device_token and len(device_token) <= _MAX_TOKEN_CHARS:
                minted = await s.scalar(
                    select(KnownDevice.user_id).where(
                        KnownDevice.token_hash == sha256_hex(device_token)
                    )
                )
                token = device_token if minted is not None else None
            if token is None:
                token = new_token()
            device = await s.get(KnownDevice, (sha256_hex(token), user_id))
            if device is None:
                s.add(
                    KnownDevice(
                        token_hash=sha256_hex(token),
                        user_id=user_id,
                        created_at=now,
                        last_seen_at=now,
                    )
                )
            else:
                device.last_seen_at = now
            if net != "unknown":
                network = await s.get(KnownNetwork, (user_id, net))
                if network is None:
                    s.add(
                        KnownNetwork(user_id=user_id, network=net, created_at=now, last_seen_at=now)
                    )
                else:
                    network.last_seen_at = now
        return token

    # -------------------------------------------------------- challenges

    async def start(self, user_id: int, next_path: str) -> Issued:
        """A new pending sign-in waiting for a mailed code (or ``wait``: too many mails)."""
        wait = await self._throttle.attempt([(f"eml:mail:{user_id}", MAILS_ACCOUNT)])
        if wait > 0:
            _log.warning("email sign-in refused: user %d was sent too many codes", user_id)
            return Issued("", "", "", user_id, wait)
        token, code = new_token(), new_code()
        now = self._now()
        if len(next_path) > NEXT_PATH_MAX:
            next_path = "/"
        async with self._db.session(write=True) as s, s.begin():
            s.add(
                EmailSignin(
                    token_hash=sha256_hex(token),
                    user_id=user_id,
                    next_path=next_path,
                    code_hash=_code_hash(token, code),
                    failures=0,
                    sends=1,
                    created_at=now,
                    last_sent_at=now,
                    code_expires_at=now + CODE_LIFETIME,
                    expires_at=now + PENDING_LIFETIME,
                    used_at=None,
                )
            )
            alert = self._new_alert(s, user_id, now)
        _log.info("email sign-in code issued: user %d", user_id)
        return Issued(token, code, alert, user_id)

    async def new_alert(self, user_id: int) -> str:
        """A "this wasn't me" link token for a mail about a sign-in that needed no code."""
        async with self._db.session(write=True) as s, s.begin():
            return self._new_alert(s, user_id, self._now())

    @staticmethod
    def _new_alert(s: AsyncSession, user_id: int, now: datetime) -> str:
        token = new_token()
        s.add(
            SigninAlert(
                token_hash=sha256_hex(token),
                user_id=user_id,
                created_at=now,
                expires_at=now + ALERT_LIFETIME,
                used_at=None,
            )
        )
        return token

    async def _live(self, token: str) -> EmailSignin | None:
        if not token or len(token) > _MAX_TOKEN_CHARS:
            return None
        now = self._now()
        async with self._db.session() as s:
            row = await s.get(EmailSignin, sha256_hex(token))
        if row is None or row.used_at is not None or now >= row.expires_at:
            return None
        if row.failures >= MAX_FAILURES:
            return None
        return row

    async def pending_user(self, token: str) -> int | None:
        """The account of the live pending sign-in behind this cookie, or ``None``."""
        row = await self._live(token)
        return None if row is None else row.user_id

    async def resend(self, token: str) -> Issued | None:
        """A new code for a live pending sign-in; ``None`` if it is gone.

        The failure count stays (a resend is no way around the 5 tries);
        ``wait`` > 0 when the last mail is too recent or the sends are used up
        (then ``wait`` is the rest of the pending sign-in's life).
        """
        row = await self._live(token)
        if row is None:
            return None
        now = self._now()
        if row.sends >= MAX_SENDS:
            return Issued("", "", "", row.user_id, (row.expires_at - now).total_seconds())
        ready = row.last_sent_at + RESEND_INTERVAL
        if now < ready:
            return Issued("", "", "", row.user_id, (ready - now).total_seconds())
        wait = await self._throttle.attempt([(f"eml:mail:{row.user_id}", MAILS_ACCOUNT)])
        if wait > 0:
            return Issued("", "", "", row.user_id, wait)
        code = new_code()
        async with self._db.session(write=True) as s, s.begin():
            resent = (
                update(EmailSignin)
                .where(
                    EmailSignin.token_hash == row.token_hash,
                    EmailSignin.used_at.is_(None),
                    EmailSignin.sends == row.sends,
                )
                .values(
                    code_hash=_code_hash(token, code),
                    sends=row.sends + 1,
                    last_sent_at=now,
                    code_expires_at=min(now + CODE_LIFETIME, row.expires_at),
                )
            )
            if not await consume_once(s, resent):  # a concurrent resend or use won
                return None
            alert = self._new_alert(s, row.user_id, now)
        _log.info("email sign-in code re-sent: user %d", row.user_id)
        return Issued(token, code, alert, row.user_id)

    async def verify(self, token: str, code: str, *, ip: str | None) -> CodeOutcome:
        """Check a code against the pending sign-in behind ``token``; uses both up on success."""
        row = await self._live(token)
        if row is None:
            return CodeOutcome(False, ended=True)
        user_id = row.user_id
        keys: list[tuple[str, Rule]] = [
            (f"eml:acct:{user_id}", CODE_ACCOUNT),
            (f"eml:net:{network_key(ip)}", CODE_NETWORK),
        ]
        wait = await self._throttle.attempt(keys)
        if wait > 0:
            _log.warning("email code check throttled: user %d", user_id)
            return CodeOutcome(False, user_id, wait=wait)
        now = self._now()
        candidate = _normal_code(code)
        right = hmac.compare_digest(row.code_hash, _code_hash(token, candidate or "x"))
        async with self._db.session(write=True) as s, s.begin():
            if right and candidate and now < row.code_expires_at:
                accepted = await consume_once(
                    s,
                    EmailSignin.use(
                        EmailSignin.token_hash == row.token_hash,
                        EmailSignin.code_hash == row.code_hash,
                        EmailSignin.failures < MAX_FAILURES,
                        EmailSignin.code_expires_at > now,
                        at=now,
                    ),
                )
            else:
                accepted = False
                await s.execute(
                    update(EmailSignin)
                    .where(EmailSignin.token_hash == row.token_hash, EmailSignin.used_at.is_(None))
                    .values(failures=EmailSignin.failures + 1)
                )
            failures = await s.scalar(
                select(EmailSignin.failures).where(EmailSignin.token_hash == row.token_hash)
            )
        if accepted:
            await self._throttle.succeeded(
                clear=[f"eml:acct:{user_id}"], refund=[f"eml:net:{network_key(ip)}"]
            )
            _log.info("email sign-in code accepted: user %d", user_id)
            return CodeOutcome(True, user_id, row.next_path)
        ended = (failures or 0) >= MAX_FAILURES
        _log.warning(
            "email sign-in code refused: user %d%s", user_id, " (pending sign-in ended)" * ended
        )
        return CodeOutcome(False, user_id, ended=ended)

    # ------------------------------------------------------ "wasn't me"

    async def alert_user(self, alert_token: str) -> int | None:
        """The account a live "this wasn't me" link is for (not used up), or ``None``."""
        if not alert_token or len(alert_token) > _MAX_TOKEN_CHARS:
            return None
        now = self._now()
        async with self._db.session() as s:
            row = await s.get(SigninAlert, sha256_hex(alert_token))
        if row is None or row.used_at is not None or now >= row.expires_at:
            return None
        return row.user_id

    async def deny(self, alert_token: str) -> int | None:
        """Use up a "this wasn't me" link and end the account's pending sign-ins.

        Returns the account id; the caller ends its sessions (and caches).
        ``None`` if the link is unknown, used or expired.
        """
        if not alert_token or len(alert_token) > _MAX_TOKEN_CHARS:
            return None
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            digest = sha256_hex(alert_token)
            used = SigninAlert.use(
                SigninAlert.token_hash == digest, SigninAlert.expires_at > now, at=now
            )
            if not await consume_once(s, used):
                return None
            user_id = await s.scalar(
                select(SigninAlert.user_id).where(SigninAlert.token_hash == digest)
            )
            assert user_id is not None
            await s.execute(
                update(EmailSignin)
                .where(EmailSignin.user_id == user_id, EmailSignin.used_at.is_(None))
                .values(used_at=now)
            )
            await s.execute(
                update(PendingLogin)
                .where(PendingLogin.user_id == user_id, PendingLogin.used_at.is_(None))
                .values(used_at=now)
            )
            # Every browser must prove itself again: forget the known devices.
            await s.execute(delete(KnownDevice).where(KnownDevice.user_id == user_id))
            await s.execute(delete(KnownNetwork).where(KnownNetwork.user_id == user_id))
        _log.warning("sign-in reported as not the owner: user %d", user_id)
        return user_id

    async def purge(self) -> int:
        """Delete finished or expired rows; rows deleted."""
        now = self._now()
        total = 0
        async with self._db.session(write=True) as s, s.begin():
            for stmt in (
                delete(EmailSignin).where(
                    or_(EmailSignin.expires_at <= now, EmailSignin.used_at.is_not(None))
                ),
                delete(SigninAlert).where(
                    or_(SigninAlert.expires_at <= now, SigninAlert.used_at.is_not(None))
                ),
                delete(KnownDevice).where(KnownDevice.last_seen_at <= now - DEVICE_LIFETIME),
                delete(KnownNetwork).where(KnownNetwork.last_seen_at <= now - NETWORK_LIFETIME),
            ):
                total += rowcount(await s.execute(stmt))
        return total
