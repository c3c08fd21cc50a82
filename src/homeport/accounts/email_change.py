"""Changing an account's email address, and undoing a change from the old address.

The address is where sign-in codes, reset links and security notices go, so
whoever changes it can take the account over. Threats and rules:

* **A stolen session changing the address.** The account site asks for the
  password or a current authenticator code first (throttled like a sign-in);
  this store is only reached after that.
* **An address nobody controls, or a typo.** Nothing changes until the code
  mailed to the *new* address is typed in: 6 digits from :mod:`secrets`,
  valid :data:`CODE_LIFETIME`, bound to the browser that asked (a cookie
  token; the stored hash is of the token *and* the code, so a database reader
  cannot brute-force it offline) and to the account, at most
  :data:`MAX_FAILURES` wrong codes, wrong codes throttled per account and per
  network like the sign-in code. One change is pending per account; asking
  again voids the earlier one. Mails per account are capped
  (:data:`MAILS_ACCOUNT`).
* **Enumerating accounts by address.** An address that already has an
  account gets the same answer; its mailbox gets a note instead of a code,
  and no code can complete the change.
* **A change the owner did not make.** The *old* address is told at once,
  with a single-use "this was not me" link (256 bits, hashed at rest, valid
  :data:`UNDO_LIFETIME`, 7 days). Using it puts the old address back, voids
  every other undo link and pending change, ends every session, every
  half-done sign-in and pending reset, and forgets every known device and
  network, so the next sign-in from anywhere must confirm a code mailed to
  the restored address. The person is then sent to reset the password
  (whoever changed the address knew it).
* **Old links after a change.** Reset links mailed to the old address die
  with the change.
* Sign-in identities from Google, Apple or another OpenID provider are
  (issuer, subject) pairs, not addresses: they keep working unchanged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from homeport.accounts.db import Database
from homeport.accounts.email_signin import new_code
from homeport.accounts.errors import AccountExists
from homeport.accounts.identifiers import new_token, normalise_email, sha256_hex
from homeport.accounts.models import (
    EmailChange,
    EmailChangeUndo,
    EmailSignin,
    KnownDevice,
    KnownNetwork,
    PasswordReset,
    PendingLogin,
    User,
    WebSession,
)
from homeport.accounts.sessions import revoke_stmt
from homeport.accounts.single_use import consume_once, rowcount
from homeport.accounts.throttle import Backoff, Rule, Throttle, Window, network_key

__all__ = [
    "CODE_LIFETIME",
    "MAILS_ACCOUNT",
    "MAX_FAILURES",
    "UNDO_LIFETIME",
    "ChangeConfirmed",
    "ChangeStarted",
    "EmailChanges",
    "Undone",
]

_log = logging.getLogger(__name__)

CODE_LIFETIME: Final = timedelta(minutes=15)
UNDO_LIFETIME: Final = timedelta(days=7)
MAX_FAILURES: Final = 5
MAILS_ACCOUNT: Final = Window(limit=5, window=timedelta(hours=1))
CODE_ACCOUNT: Final = Backoff(free=4, base=1.0, cap=15 * 60.0)
CODE_NETWORK: Final = Window(limit=20, window=timedelta(minutes=10))
_MAX_TOKEN_CHARS: Final = 64


def _code_hash(token: str, code: str) -> str:
    return sha256_hex(f"{token}:{code}")


def _normal_code(code: str) -> str:
    digits = "".join(code.split())[:16]
    return digits if len(digits) == 6 and digits.isascii() and digits.isdigit() else ""


@dataclass(frozen=True, slots=True)
class ChangeStarted:
    """``wait`` > 0: too many mails, nothing started. Otherwise mail ``new_email``: the
    ``code`` (``mail`` "code") or, for an address that has an account, a note ("exists");
    set ``token`` as the browser's cookie either way (the answers look the same)."""

    new_email: str
    token: str = ""
    code: str = ""
    mail: Literal["code", "exists"] | None = None
    wait: float = 0.0


@dataclass(frozen=True, slots=True)
class ChangeConfirmed:
    """``ok``: the address is now ``new_email``; mail ``old_email`` the ``undo_token`` link;
    ``ended``: the other sessions ended (cut their traffic). Otherwise ``gone``: the
    pending change is over (start again); ``wait`` > 0: throttled; ``taken``: the new
    address got an account meanwhile."""

    ok: bool
    old_email: str = ""
    new_email: str = ""
    undo_token: str = ""
    ended: tuple[int, ...] = ()
    gone: bool = False
    wait: float = 0.0
    taken: bool = False


@dataclass(frozen=True, slots=True)
class Undone:
    """The change was undone for ``user_id``: ``email`` is the address now (the old one,
    unless ``restored`` is false because another account took it meanwhile)."""

    user_id: int
    email: str
    restored: bool


class EmailChanges:
    """Pending address changes and undo links, over one database and clock."""

    def __init__(self, db: Database, throttle: Throttle, *, now: Callable[[], datetime]) -> None:
        self._db = db
        self._throttle = throttle
        self._now = now

    async def start(self, user_id: int, new_email: str) -> ChangeStarted:
        """Start a change to ``new_email`` (after the caller re-authenticated the person).

        Raises :class:`~homeport.accounts.errors.InvalidEmail` for a malformed
        address and :class:`ValueError` for the account's own.
        """
        normal = normalise_email(new_email)
        async with self._db.session() as s:
            current = await s.scalar(select(User.email).where(User.id == user_id))
        if current is None:
            raise ValueError("No such account.")
        if current == normal:
            raise ValueError("This is your address already.")
        wait = await self._throttle.attempt([(f"emlchg:mail:{user_id}", MAILS_ACCOUNT)])
        if wait > 0:
            _log.warning("email change refused: user %d was sent too many codes", user_id)
            return ChangeStarted(normal, wait=wait)
        token, code = new_token(), new_code()
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            taken = await s.scalar(select(User.id).where(User.email == normal)) is not None
            await s.execute(delete(EmailChange).where(EmailChange.user_id == user_id))
            s.add(
                EmailChange(
                    token_hash=sha256_hex(token),
                    user_id=user_id,
                    new_email=normal,
                    # For a taken address, a code that was never sent: nothing completes it.
                    code_hash=_code_hash(token, new_code() + "-void" if taken else code),
                    failures=0,
                    created_at=now,
                    expires_at=now + CODE_LIFETIME,
                    used_at=None,
                )
            )
        _log.info("email change started: user %d", user_id)
        if taken:
            return ChangeStarted(normal, token=token, mail="exists")
        return ChangeStarted(normal, token=token, code=code, mail="code")

    async def _live(self, token: str, user_id: int) -> EmailChange | None:
        if not token or len(token) > _MAX_TOKEN_CHARS:
            return None
        now = self._now()
        async with self._db.session() as s:
            row = await s.get(EmailChange, sha256_hex(token))
        if (
            row is None
            or row.user_id != user_id
            or row.used_at is not None
            or now >= row.expires_at
            or row.failures >= MAX_FAILURES
        ):
            return None
        return row

    async def pending(self, token: str, user_id: int) -> str | None:
        """The new address of this browser's live pending change for the account, or ``None``."""
        row = await self._live(token, user_id)
        return None if row is None else row.new_email

    async def confirm(
        self, token: str, code: str, *, user_id: int, keep_session_id: int | None, ip: str | None
    ) -> ChangeConfirmed:
        """Check the mailed code; on success change the address (one transaction).

        The account's other sessions end with the change (``keep_session_id``
        is the one asking); the caller cuts their open traffic.
        """
        row = await self._live(token, user_id)
        if row is None:
            return ChangeConfirmed(False, gone=True)
        keys: list[tuple[str, Rule]] = [
            (f"emlchg:acct:{user_id}", CODE_ACCOUNT),
            (f"emlchg:net:{network_key(ip)}", CODE_NETWORK),
        ]
        wait = await self._throttle.attempt(keys)
        if wait > 0:
            _log.warning("email change code check throttled: user %d", user_id)
            return ChangeConfirmed(False, wait=wait)
        candidate = _normal_code(code)
        right = bool(candidate) and hmac.compare_digest(row.code_hash, _code_hash(token, candidate))
        now = self._now()
        undo_token = new_token()
        try:
            async with self._db.session(write=True) as s, s.begin():
                if not right:
                    await s.execute(
                        update(EmailChange)
                        .where(
                            EmailChange.token_hash == row.token_hash,
                            EmailChange.used_at.is_(None),
                        )
                        .values(failures=EmailChange.failures + 1)
                    )
                    failures = await s.scalar(
                        select(EmailChange.failures).where(EmailChange.token_hash == row.token_hash)
                    )
                    _log.warning("email change code refused: user %d", user_id)
                    return ChangeConfirmed(False, gone=(failures or 0) >= MAX_FAILURES)
                used = EmailChange.use(
                    EmailChange.token_hash == row.token_hash,
                    EmailChange.user_id == user_id,
                    EmailChange.failures < MAX_FAILURES,
                    EmailChange.expires_at > now,
                    at=now,
                )
                if not await consume_once(s, used):  # a concurrent confirm won
                    return ChangeConfirmed(False, gone=True)
                old_email = await s.scalar(select(User.email).where(User.id == user_id))
                if old_email is None:
                    return ChangeConfirmed(False, gone=True)
                if await s.scalar(select(User.id).where(User.email == row.new_email)):
                    raise AccountExists("taken")
                await s.execute(update(User).where(User.id == user_id).values(email=row.new_email))
                # Links mailed to the old address die with it; one change at a time.
                await s.execute(delete(PasswordReset).where(PasswordReset.user_id == user_id))
                await s.execute(delete(EmailChange).where(EmailChange.user_id == user_id))
                others = WebSession.user_id == user_id
                if keep_session_id is not None:
                    others = and_(
                        others,
                        WebSession.id != keep_session_id,
                        or_(
                            WebSession.parent_session_id.is_(None),
                            WebSession.parent_session_id != keep_session_id,
                        ),
                    )
                ended = tuple(
                    await s.scalars(
                        select(WebSession.id).where(others, WebSession.revoked_at.is_(None))
                    )
                )
                await s.execute(revoke_stmt(now, others))
                s.add(
                    EmailChangeUndo(
                        token_hash=sha256_hex(undo_token),
                        user_id=user_id,
                        old_email=old_email,
                        new_email=row.new_email,
                        created_at=now,
                        expires_at=now + UNDO_LIFETIME,
                        used_at=None,
                    )
                )
        except (AccountExists, IntegrityError):
            async with self._db.session(write=True) as s, s.begin():
                await s.execute(delete(EmailChange).where(EmailChange.user_id == user_id))
            _log.warning("email change refused: the new address has an account now")
            return ChangeConfirmed(False, gone=True, taken=True)
        await self._throttle.succeeded(
            clear=[f"emlchg:acct:{user_id}"], refund=[f"emlchg:net:{network_key(ip)}"]
        )
        _log.info("email address changed: user %d", user_id)
        return ChangeConfirmed(
            True,
            old_email=old_email,
            new_email=row.new_email,
            undo_token=undo_token,
            ended=ended,
        )

    async def undo_view(self, token: str) -> tuple[str, str] | None:
        """``(old address, new address)`` of a live undo link (not used up), or ``None``."""
        if not token or len(token) > _MAX_TOKEN_CHARS:
            return None
        async with self._db.session() as s:
            row = await s.get(EmailChangeUndo, sha256_hex(token))
        if row is None or row.used_at is not None or self._now() >= row.expires_at:
            return None
        return row.old_email, row.new_email

    async def undo(self, token: str) -> Undone | None:
        """Use an undo link: the old address back, everything in flight ended (see the module).

        ``None`` if the link is unknown, used or expired. The caller ends the
        sessions' open traffic (every session of the account was revoked).
        """
        if not token or len(token) > _MAX_TOKEN_CHARS:
            return None
        now = self._now()
        digest = sha256_hex(token)
        async with self._db.session(write=True) as s, s.begin():
            used = EmailChangeUndo.use(
                EmailChangeUndo.token_hash == digest, EmailChangeUndo.expires_at > now, at=now
            )
            if not await consume_once(s, used):
                return None
            row = await s.get_one(EmailChangeUndo, digest)
            user_id = row.user_id
            holder = await s.scalar(
                select(User.id).where(User.email == row.old_email, User.id != user_id)
            )
            restored = holder is None
            if restored:
                await s.execute(update(User).where(User.id == user_id).values(email=row.old_email))
            email = await s.scalar(select(User.email).where(User.id == user_id)) or ""
            # Every other undo link (a second change by the same hand) and pending change die.
            await s.execute(
                delete(EmailChangeUndo).where(
                    EmailChangeUndo.user_id == user_id, EmailChangeUndo.token_hash != digest
                )
            )
            await s.execute(delete(EmailChange).where(EmailChange.user_id == user_id))
            await s.execute(delete(PasswordReset).where(PasswordReset.user_id == user_id))
            for model in (EmailSignin, PendingLogin):
                await s.execute(
                    update(model)
                    .where(model.user_id == user_id, model.used_at.is_(None))
                    .values(used_at=now)
                )
            await s.execute(delete(KnownDevice).where(KnownDevice.user_id == user_id))
            await s.execute(delete(KnownNetwork).where(KnownNetwork.user_id == user_id))
            await s.execute(revoke_stmt(now, WebSession.user_id == user_id))
        _log.warning(
            "email change undone from the old address: user %d%s",
            user_id,
            "" if restored else " (old address taken meanwhile: not restored)",
        )
        return Undone(user_id, email, restored)

    async def purge(self) -> int:
        """Delete finished or expired rows; rows deleted."""
        now = self._now()
        total = 0
        async with self._db.session(write=True) as s, s.begin():
            for model in (EmailChange, EmailChangeUndo):
                over = or_(model.expires_at <= now, model.used_at.is_not(None))
                total += rowcount(await s.execute(delete(model).where(over)))
        return total
