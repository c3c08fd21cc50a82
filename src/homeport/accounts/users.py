"""Accounts: creating them, passwords, disabling.

Threats this stops (each method says which): account enumeration by timing
(:meth:`Users.authenticate`), weak passwords (:meth:`Users.create`,
:meth:`Users.set_password`), a thief staying signed in after a password
change or an account being disabled (the account's sessions end in the same
transaction).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import and_, select, update
from sqlalchemy.exc import IntegrityError

from homeport.accounts.audit import Audit, EventType
from homeport.accounts.db import Database
from homeport.accounts.errors import AccountExists, InvalidEmail, UnknownUser
from homeport.accounts.identifiers import normalise_email
from homeport.accounts.models import User, WebSession
from homeport.accounts.passwords import (
    MAX_PASSWORD_CHARS,
    check_new_password,
    hash_password_async,
    needs_rehash,
    verify_password_async,
)
from homeport.accounts.sessions import revoke_stmt
from homeport.accounts.single_use import rowcount

__all__ = ["Users"]

_log = logging.getLogger(__name__)


class Users:
    """The accounts themselves, over one :class:`Database`."""

    def __init__(self, db: Database, audit: Audit, *, now: Callable[[], datetime]) -> None:
        self._db = db
        self._audit = audit
        self._now = now
        self._dummy_hash: str | None = None

    async def create(self, email: str, password: str) -> User:
        """Create an account.

        Raises :class:`InvalidEmail`, :class:`PasswordPolicyError` (weak
        password; the message says why) or :class:`AccountExists`.
        """
        normal = normalise_email(email)
        check_new_password(password, context=[normal])
        async with self._db.session() as s:
            if await s.scalar(select(User.id).where(User.email == normal)) is not None:
                raise AccountExists("An account with this email address already exists.")
        password_hash = await hash_password_async(password)
        user = User(
            email=normal, password_hash=password_hash, created_at=self._now(), disabled=False
        )
        try:
            async with self._db.session(write=True) as s, s.begin():
                s.add(user)
        except IntegrityError as exc:
            raise AccountExists("An account with this email address already exists.") from exc
        _log.info("account created: user %d", user.id)
        return user

    async def all(self) -> list[User]:
        """All accounts, oldest first."""
        async with self._db.session() as s:
            return list(await s.scalars(select(User).order_by(User.id)))

    async def get(self, user_id: int) -> User | None:
        """The account with this id, or ``None``."""
        async with self._db.session() as s:
            return await s.get(User, user_id)

    async def by_email(self, email: str) -> User | None:
        """The account with this (normalised) email address, or ``None``."""
        try:
            normal = normalise_email(email)
        except InvalidEmail:
            return None
        async with self._db.session() as s:
            return await s.scalar(select(User).where(User.email == normal))

    async def set_disabled(self, user_id: int, disabled: bool) -> None:
        """Disable or re-enable an account; disabling revokes all its sessions.

        A disabled account cannot log in, and its sessions, hand-off codes and
        tenant access stop working at once (also checked on every lookup).
        Raises :class:`UnknownUser`.
        """
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            result = await s.execute(
                update(User).where(User.id == user_id).values(disabled=disabled)
            )
            if rowcount(result) != 1:
                raise UnknownUser("No such account.")
            if disabled:
                await s.execute(revoke_stmt(now, WebSession.user_id == user_id))
        _log.info("account %s: user %d", "disabled" if disabled else "enabled", user_id)
        await self._audit.record(
            EventType.ACCOUNT_DISABLED if disabled else EventType.ACCOUNT_ENABLED, user_id=user_id
        )

    async def set_password(
        self, user_id: int, new_password: str, *, keep_session_id: int | None = None
    ) -> None:
        """Set a new password and revoke the account's other sessions.

        Stops a thief who knew the old password (or held a session) from
        staying logged in after the owner changes it (ASVS 7.4.3). The caller
        checks the current password first when the user asks for the change.
        Raises :class:`PasswordPolicyError` or :class:`UnknownUser`.
        """
        user = await self.get(user_id)
        if user is None:
            raise UnknownUser("No such account.")
        check_new_password(new_password, context=[user.email])
        password_hash = await hash_password_async(new_password)
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            result = await s.execute(
                update(User)
                .where(User.id == user_id)
                .values(password_hash=password_hash, has_password=True)
            )
            if rowcount(result) != 1:
                raise UnknownUser("No such account.")
            condition = WebSession.user_id == user_id
            if keep_session_id is not None:
                condition = and_(condition, WebSession.id != keep_session_id)
            await s.execute(revoke_stmt(now, condition))
        _log.info("password changed: user %d", user_id)

    async def authenticate(self, email: str, password: str) -> User | None:
        """Check an email address and password; ``None`` for any failure.

        Stops account enumeration by timing: an unknown address, a disabled
        account and a wrong password all cost one Argon2id verification
        (unknown addresses are verified against a dummy hash) and all give
        the same ``None``. An over-long password is refused before any
        lookup, identically for every address. On success with outdated
        hash parameters, the hash is upgraded.
        """
        if self._dummy_hash is None:
            self._dummy_hash = await hash_password_async(secrets.token_urlsafe(24))
        if len(password) > MAX_PASSWORD_CHARS:
            return None
        try:
            normal: str | None = normalise_email(email)
        except InvalidEmail:
            normal = None
        user: User | None = None
        if normal is not None:
            async with self._db.session() as s:
                user = await s.scalar(select(User).where(User.email == normal))
        if user is None:
            await verify_password_async(self._dummy_hash, password)
            _log.info("login failed: unknown account")
            return None
        ok = await verify_password_async(user.password_hash, password)
        if not ok:
            _log.info("login failed: wrong password for user %d", user.id)
            return None
        if user.disabled:
            _log.info("login refused: user %d is disabled", user.id)
            return None
        if needs_rehash(user.password_hash):
            old_hash = user.password_hash
            new_hash = await hash_password_async(password)
            async with self._db.session(write=True) as s, s.begin():
                # Only if unchanged meanwhile: never undo a concurrent password change.
                result = await s.execute(
                    update(User)
                    .where(User.id == user.id, User.password_hash == old_hash)
                    .values(password_hash=new_hash)
                )
            if rowcount(result) == 1:
                user.password_hash = new_hash
                _log.info("password hash upgraded: user %d", user.id)
        _log.info("login succeeded: user %d", user.id)
        return user
