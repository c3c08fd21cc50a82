"""TOTP second factor (RFC 6238), recovery codes, and the pending second step of a sign-in.

Threats and rules (R-TOTP-01..05, security checklist 6.4):

* **Algorithm** what authenticator apps implement: HMAC-SHA1, 6 digits,
  30 s steps. Seeds are 160 bits from :mod:`secrets`, sealed at rest by
  :class:`~homeport.accounts.secretbox.SecretBox` (key outside the database,
  the account id as associated data).
* **Window** T-1..T+1 only; every candidate is compared with
  :func:`hmac.compare_digest`, all three always computed.
* **Replay.** ``pyotp``'s ``verify`` accepts one code twice; here the last
  accepted step is stored and a code is accepted only for a *later* step,
  with ``UPDATE … WHERE last_step < :step`` so two concurrent requests
  cannot both use one code. An older step after a newer one is refused too.
* **Guessing** (6 digits < 64 bits, so NIST requires a limit) goes through
  :class:`~homeport.accounts.throttle.Throttle`: per account, free for
  4 failures, then a delay doubling from 1 s up to 15 min
  (:data:`TOTP_ACCOUNT`), plus at most 20 failures per client network per
  10 minutes (:data:`TOTP_NETWORK`). Codes and recovery codes share the
  counters. Only someone who already knows the password reaches this step,
  so the account-wide delay cannot be triggered by a stranger at will.
* **Enrolment** happens only in a signed-in account session (the relay's
  page), and the factor is enabled only once a code from the app checks.
* **Recovery codes**: 10, single use, shown once. Each has 120 bits
  (24 base32 characters, shown in groups of four), which is above the
  112 bits ASVS 6.5.2 asks for before a fast hash is acceptable; they are
  therefore stored as SHA-256 digests (no Argon2 cost on every attempt).
  Confirming a new enrolment replaces all earlier codes.
* **Pending sign-in**: after the password, a random 256-bit token (cookie)
  whose SHA-256 is stored with the account, the return path and a 5-minute
  expiry. It opens nothing; only a valid code consumes it (once) and lets
  the caller create a *new* session token (R-SES-03).
"""

from __future__ import annotations

import base64
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import pyotp
from sqlalchemy import delete, or_, select, update

from homeport.accounts.db import Database
from homeport.accounts.identifiers import new_token, sha256_hex
from homeport.accounts.models import (
    NEXT_PATH_MAX,
    PendingLogin,
    RecoveryCode,
    TotpCredential,
)
from homeport.accounts.secretbox import SecretBox
from homeport.accounts.single_use import consume_once, rowcount
from homeport.accounts.throttle import Backoff, Rule, Throttle, Window, network_key

__all__ = [
    "DIGITS",
    "ISSUER",
    "PENDING_LIFETIME",
    "RECOVERY_CODE_COUNT",
    "STEP_SECONDS",
    "TOTP_ACCOUNT",
    "TOTP_NETWORK",
    "Enrolment",
    "Outcome",
    "Pending",
    "Totp",
    "TotpError",
    "match_step",
    "new_recovery_code",
    "new_secret",
    "normalise_recovery_code",
]

_log = logging.getLogger(__name__)

DIGITS: Final = 6
STEP_SECONDS: Final = 30
SECRET_BYTES: Final = 20  # 160 bits, RFC 4226 R6
ISSUER: Final = "Homeport"
RECOVERY_CODE_COUNT: Final = 10
RECOVERY_CODE_BYTES: Final = 15  # 120 bits = 24 base32 characters
PENDING_LIFETIME: Final = timedelta(minutes=5)
TOTP_ACCOUNT: Final = Backoff(free=4, base=1.0, cap=15 * 60.0)
TOTP_NETWORK: Final = Window(limit=20, window=timedelta(minutes=10))


class TotpError(Exception):
    """A TOTP operation that cannot proceed (not enrolling, already enabled, no key)."""


@dataclass(frozen=True, slots=True)
class Enrolment:
    secret_base32: str
    uri: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """``ok``: the code was right. ``wait`` > 0: refused unchecked, retry after this."""

    ok: bool
    wait: float = 0.0


@dataclass(frozen=True, slots=True)
class Pending:
    user_id: int
    next_path: str


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=")


def match_step(secret: bytes, code: str, at: float) -> int | None:
    """The time step in T-1..T+1 whose code equals ``code``, else ``None``.

    Constant-time per candidate, and all three candidates are computed and
    compared whatever the input. ``at`` is Unix time in seconds.
    """
    candidate = "".join(code.split())
    well_formed = len(candidate) == DIGITS and candidate.isascii() and candidate.isdigit()
    if not well_formed:
        candidate = "x" * DIGITS  # still do the work, never match
    hotp = pyotp.HOTP(_b32(secret), digits=DIGITS, digest="sha1")
    now_step = int(at // STEP_SECONDS)
    found: int | None = None
    for step in (now_step - 1, now_step, now_step + 1):
        if step < 0:  # before 1970: nothing to match
            continue
        if hmac.compare_digest(hotp.at(step).encode(), candidate.encode()) and well_formed:
            found = step
    return found


def new_recovery_code() -> str:
    raw = _b32(secrets.token_bytes(RECOVERY_CODE_BYTES)).lower()
    return "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def normalise_recovery_code(code: str) -> str:
    return "".join(ch for ch in code.lower() if ch.isalnum())[:64]


def _keys(user_id: int, ip: str | None) -> list[tuple[str, Rule]]:
    return [(f"totp:acct:{user_id}", TOTP_ACCOUNT), (f"totp:net:{network_key(ip)}", TOTP_NETWORK)]


class Totp:
    """TOTP enrolment and checks, recovery codes and pending sign-ins over one database."""

    def __init__(
        self,
        db: Database,
        box: SecretBox | None,
        throttle: Throttle,
        *,
        now: Callable[[], datetime],
        wall: Callable[[], float] | None = None,
    ) -> None:
        self._db = db
        self._box = box
        self._throttle = throttle
        self._now = now
        #: Unix time for the TOTP step; defaults to the ``now`` clock.
        self._wall = wall or (lambda: self._now().timestamp())

    def _require_box(self) -> SecretBox:
        if self._box is None:
            raise TotpError("no secret-box key configured: TOTP is unavailable")
        return self._box

    @staticmethod
    def _aad(user_id: int) -> bytes:
        return f"homeport:totp_credentials:{user_id}".encode()

    # ------------------------------------------------------------- enrolment

    async def is_enabled(self, user_id: int) -> bool:
        async with self._db.session() as s:
            enabled = await s.scalar(
                select(TotpCredential.enabled_at).where(TotpCredential.user_id == user_id)
            )
        return enabled is not None

    async def start_enrolment(self, user_id: int, account_name: str) -> Enrolment:
        """A fresh seed for an account without TOTP, stored sealed and not yet enabled.

        Call only for a signed-in account session. Raises :class:`TotpError`
        if TOTP is already enabled.
        """
        box = self._require_box()
        secret = new_secret()
        sealed = box.seal(secret, self._aad(user_id))
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            row = await s.get(TotpCredential, user_id, with_for_update=True)
            if row is not None and row.enabled_at is not None:
                raise TotpError("TOTP is already enabled for this account.")
            if row is None:
                s.add(
                    TotpCredential(
                        user_id=user_id,
                        secret_sealed=sealed,
                        created_at=now,
                        enabled_at=None,
                        last_step=None,
                    )
                )
            else:
                row.secret_sealed, row.created_at, row.last_step = sealed, now, None
        _log.info("totp enrolment started: user %d", user_id)
        b32 = _b32(secret)
        uri = pyotp.TOTP(b32, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
            name=account_name, issuer_name=ISSUER
        )
        return Enrolment(secret_base32=b32, uri=uri)

    async def enrolment_secret(self, user_id: int) -> str | None:
        """The base32 seed of an enrolment still waiting for its first code."""
        async with self._db.session() as s:
            row = await s.get(TotpCredential, user_id)
        if row is None or row.enabled_at is not None:
            return None
        return _b32(self._require_box().open(row.secret_sealed, self._aad(user_id)))

    async def confirm_enrolment(
        self, user_id: int, code: str, *, ip: str | None
    ) -> tuple[Outcome, list[str]]:
        """Enable TOTP if ``code`` checks against the pending seed; then new recovery codes.

        Returns the outcome and, on success, the 10 recovery codes (shown once).
        """
        result = await self._check(user_id, code, ip=ip, enabling=True)
        if not result.ok:
            return result, []
        codes = await self._new_recovery_codes(user_id)
        _log.info("totp enabled: user %d", user_id)
        return result, codes

    async def disable(self, user_id: int) -> None:
        async with self._db.session(write=True) as s, s.begin():
            await s.execute(delete(TotpCredential).where(TotpCredential.user_id == user_id))
            await s.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
        _log.info("totp disabled: user %d", user_id)

    async def regenerate_recovery_codes(self, user_id: int) -> list[str]:
        """Ten fresh recovery codes for an account with TOTP on; the old ones stop working.

        The caller re-checks the person first (password or a current code).
        Raises :class:`TotpError` if TOTP is not enabled.
        """
        if not await self.is_enabled(user_id):
            raise TotpError("Two-step verification is not on.")
        codes = await self._new_recovery_codes(user_id)
        _log.info("recovery codes regenerated: user %d", user_id)
        return codes

    async def _new_recovery_codes(self, user_id: int) -> list[str]:
        codes = [new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            await s.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
            for code in codes:
                s.add(
                    RecoveryCode(
                        user_id=user_id,
                        code_hash=sha256_hex(normalise_recovery_code(code)),
                        created_at=now,
                        used_at=None,
                    )
                )
        return codes

    # ---------------------------------------------------------------- checks

    async def verify(self, user_id: int, code: str, *, ip: str | None) -> Outcome:
        """Check a code for an account with TOTP enabled: throttled, replay-safe."""
        return await self._check(user_id, code, ip=ip, enabling=False)

    async def _check(self, user_id: int, code: str, *, ip: str | None, enabling: bool) -> Outcome:
        box = self._require_box()
        keys = _keys(user_id, ip)
        wait = await self._throttle.attempt(keys)
        if wait > 0:
            _log.warning("totp check throttled: user %d", user_id)
            return Outcome(False, wait)
        async with self._db.session() as s:
            row = await s.get(TotpCredential, user_id)
        if row is None or (row.enabled_at is None) != enabling:
            _log.warning("totp check refused: user %d has no such authenticator", user_id)
            return Outcome(False)
        secret = box.open(row.secret_sealed, self._aad(user_id))
        step = match_step(secret, code[:32], self._wall())
        if step is None:
            _log.warning("totp check failed: user %d", user_id)
            return Outcome(False)
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            stmt = (
                update(TotpCredential)
                .where(
                    TotpCredential.user_id == user_id,
                    TotpCredential.secret_sealed == row.secret_sealed,
                    or_(TotpCredential.last_step.is_(None), TotpCredential.last_step < step),
                )
                .values(last_step=step)
            )
            if enabling:
                stmt = stmt.where(TotpCredential.enabled_at.is_(None)).values(enabled_at=now)
            else:
                stmt = stmt.where(TotpCredential.enabled_at.is_not(None))
            accepted = await consume_once(s, stmt)  # a code's time step counts once
        if not accepted:
            _log.warning("totp check refused: user %d replayed or stale code", user_id)
            return Outcome(False)
        await self._succeeded(user_id, ip)
        return Outcome(True)

    async def use_recovery_code(self, user_id: int, code: str, *, ip: str | None) -> Outcome:
        """Spend one recovery code (throttled with TOTP codes); single use, atomically."""
        keys = _keys(user_id, ip)
        wait = await self._throttle.attempt(keys)
        if wait > 0:
            return Outcome(False, wait)
        digest = sha256_hex(normalise_recovery_code(code[:128]))
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            enabled = await s.scalar(
                select(TotpCredential.enabled_at).where(TotpCredential.user_id == user_id)
            )
            spent = enabled is not None and await consume_once(
                s,
                RecoveryCode.use(
                    RecoveryCode.user_id == user_id, RecoveryCode.code_hash == digest, at=now
                ),
            )
        if not spent:
            _log.warning("recovery code refused: user %d", user_id)
            return Outcome(False)
        _log.info("recovery code used: user %d", user_id)
        await self._succeeded(user_id, ip)
        return Outcome(True)

    async def recovery_codes_left(self, user_id: int) -> int:
        async with self._db.session() as s:
            rows = await s.scalars(
                select(RecoveryCode.id).where(
                    RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None)
                )
            )
            return len(list(rows))

    async def _succeeded(self, user_id: int, ip: str | None) -> None:
        await self._throttle.succeeded(
            clear=[f"totp:acct:{user_id}"], refund=[f"totp:net:{network_key(ip)}"]
        )

    # -------------------------------------------------------- pending logins

    async def start_pending(self, user_id: int, next_path: str) -> str:
        """A pending sign-in waiting for the second factor; the cookie token (not stored)."""
        token = new_token()
        now = self._now()
        if len(next_path) > NEXT_PATH_MAX:
            next_path = "/"
        async with self._db.session(write=True) as s, s.begin():
            s.add(
                PendingLogin(
                    token_hash=sha256_hex(token),
                    user_id=user_id,
                    next_path=next_path,
                    created_at=now,
                    expires_at=now + PENDING_LIFETIME,
                    used_at=None,
                )
            )
        return token

    async def pending(self, token: str) -> Pending | None:
        """The live pending sign-in for this cookie, or ``None``."""
        if not token or len(token) > 64:
            return None
        now = self._now()
        async with self._db.session() as s:
            row = await s.get(PendingLogin, sha256_hex(token))
        if row is None or row.used_at is not None or now >= row.expires_at:
            return None
        return Pending(row.user_id, row.next_path)

    async def finish_pending(self, token: str) -> bool:
        """Use up the pending sign-in (once, atomically); ``False`` if it is gone."""
        if not token or len(token) > 64:
            return False
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            return await consume_once(
                s,
                PendingLogin.use(
                    PendingLogin.token_hash == sha256_hex(token),
                    PendingLogin.expires_at > now,
                    at=now,
                ),
            )

    async def purge(self) -> int:
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            result = await s.execute(
                delete(PendingLogin).where(
                    or_(PendingLogin.expires_at <= now, PendingLogin.used_at.is_not(None))
                )
            )
        return rowcount(result)
