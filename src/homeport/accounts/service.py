"""The accounts service: users, sessions, hand-off codes, instances and linking.

:class:`Accounts` is the only thing the relay's web handlers, tunnel hub and
admin CLI should call; it owns every rule about who may do what, so those
rules are tested here once rather than re-implemented per handler.

Design rules:

* **Deny by default.** Every check returns "no" unless each condition is
  positively met; tenant access is re-checked on every session lookup, so
  removing a member or disabling an account takes effect on the next
  request, not when a session expires.
* **Secrets only as hashes.** Tokens and codes are returned to the caller
  once and stored as SHA-256 digests; none is ever logged.
* **Single use is atomic.** Codes are consumed with
  ``UPDATE … WHERE used_at IS NULL`` and a row-count check inside a write
  transaction, so two concurrent requests cannot both redeem one code.
* **Injectable clock** (``now``) so expiry is tested exactly.

Session lifetimes (R-SES-05; decided in docs/security.md, "Sessions"):

* account sessions: idle 1 h, absolute 12 h (within NIST SP 800-63B-4
  AAL2: inactivity <= 1 h, re-authentication <= 24 h): this site changes
  passwords, factors, sharing;
* tenant sessions: idle 12 h, absolute 7 days, a documented deviation: HA
  dashboards stay open on wall tablets for days, Home Assistant's own login
  still guards every home, and an open stream or WebSocket counts as
  activity (:meth:`Accounts.live_session_ids`). The idle expiry slides
at most once per ``touch_interval`` (1 min) so a busy dashboard does not
write to the database on every request; the effective idle timeout is
therefore accurate to within that interval.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Delete,
    Update,
    and_,
    delete,
    exists,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from homeport.accounts.audit import Audit, EventType
from homeport.accounts.db import Database
from homeport.accounts.email_signin import EmailSignins
from homeport.accounts.errors import (
    AccessDenied,
    AccountExists,
    AlreadyLinked,
    InvalidEmail,
    LinkCodeInvalid,
    UnknownInstance,
    UnknownUser,
)
from homeport.accounts.identifiers import (
    canonical_public_key,
    format_link_code,
    is_instance_id,
    new_instance_id,
    new_link_code,
    new_token,
    normalise_email,
    normalise_link_code,
    sha256_hex,
)
from homeport.accounts.models import (
    INSTANCE_NAME_MAX,
    IP_MAX,
    USER_AGENT_MAX,
    HandoffCode,
    Instance,
    InstanceMember,
    LinkCode,
    PasskeyChallenge,
    PendingLogin,
    RetiredInstance,
    ThrottleEntry,
    User,
    WebSession,
)
from homeport.accounts.oidc import OidcStore
from homeport.accounts.passkeys import Passkeys
from homeport.accounts.password_reset import PasswordResets
from homeport.accounts.passwords import (
    MAX_PASSWORD_CHARS,
    check_new_password,
    hash_password_async,
    needs_rehash,
    verify_password_async,
)
from homeport.accounts.secretbox import SecretBox
from homeport.accounts.sharing import Sharing
from homeport.accounts.signup import Signups
from homeport.accounts.throttle import PRUNE_AFTER, Throttle
from homeport.accounts.totp import Totp

__all__ = ["Accounts", "InstanceRow", "SessionInfo", "SessionKind"]

_log = logging.getLogger(__name__)

SessionKind = Literal["account", "tenant"]
_KINDS: Final[frozenset[str]] = frozenset({"account", "tenant"})
_MAX_TOKEN_CHARS: Final = 64
_MAX_BINDING_CHARS: Final = 512
_MIN_BINDING_CHARS: Final = 16
#: Session ids per query in :meth:`Accounts.live_session_ids` (bound-parameter limits).
_LIVE_CHUNK: Final = 500

#: Session lifetimes (see the module docstring and docs/security.md).
ACCOUNT_IDLE: Final = timedelta(hours=1)
ACCOUNT_ABSOLUTE: Final = timedelta(hours=12)
TENANT_IDLE: Final = timedelta(hours=12)
TENANT_ABSOLUTE: Final = timedelta(days=7)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A valid session, as :meth:`Accounts.resolve_session` found it."""

    session_id: int
    user_id: int
    email: str
    kind: SessionKind
    instance_id: str | None
    created_at: datetime
    last_seen_at: datetime
    idle_expires_at: datetime
    absolute_expires_at: datetime


@dataclass(frozen=True, slots=True)
class InstanceRow:
    """An instance with its owner's email, for listings."""

    id: str
    name: str
    owner_id: int
    owner_email: str
    addon_public_key: str
    created_at: datetime
    last_connected_at: datetime | None
    connected: bool = False


def _rowcount(result: object) -> int:
    return cast(CursorResult[object], result).rowcount


def _clean_text(value: str, limit: int) -> str:
    """Printable-only, truncated copy of client-supplied metadata (user agent, IP)."""
    return "".join(ch if ch.isprintable() else "?" for ch in value[:limit])


def _instance_name(name: str) -> str:
    clean = unicodedata.normalize("NFKC", name).strip()
    if not clean or len(clean) > INSTANCE_NAME_MAX:
        raise ValueError(f"Instance name must be 1 to {INSTANCE_NAME_MAX} characters.")
    if any(not ch.isprintable() for ch in clean):
        raise ValueError("Instance name must not contain control characters.")
    return clean


class Accounts:
    """Accounts, sessions, hand-off codes and instances over one :class:`Database`."""

    def __init__(
        self,
        db: Database,
        *,
        now: Callable[[], datetime] = _utcnow,
        account_idle: timedelta = ACCOUNT_IDLE,
        account_absolute: timedelta = ACCOUNT_ABSOLUTE,
        tenant_idle: timedelta = TENANT_IDLE,
        tenant_absolute: timedelta = TENANT_ABSOLUTE,
        touch_interval: timedelta = timedelta(minutes=1),
        handoff_lifetime: timedelta = timedelta(seconds=60),
        link_code_lifetime: timedelta = timedelta(minutes=10),
        secret_box: SecretBox | None = None,
    ) -> None:
        self._db = db
        self._clock = now
        self._lifetimes: dict[str, tuple[timedelta, timedelta]] = {
            "account": (account_idle, account_absolute),
            "tenant": (tenant_idle, tenant_absolute),
        }
        self._touch_interval = touch_interval
        self._handoff_lifetime = handoff_lifetime
        self._link_code_lifetime = link_code_lifetime
        self._dummy_hash: str | None = None
        #: Abuse-control counters (R-RATE) in the same database, on the same clock.
        self.throttle = Throttle(db, now=self._now)
        #: TOTP second factor and pending sign-ins; seeds sealed by ``secret_box``.
        self.totp = Totp(db, secret_box, self.throttle, now=self._now)
        #: Passkeys (WebAuthn): second factor and passwordless sign-in.
        self.passkeys = Passkeys(db, self.throttle, now=self._now)
        #: Owner actions: invitations, app links, the second-factor policy.
        self.sharing = Sharing(db, self, now=self._now)
        #: OpenID sign-in flows and linked (issuer, subject) identities.
        self.oidc = OidcStore(db, secret_box, now=self._now)
        #: Audit log (metadata only, 180 days); other features record through it too.
        self.audit = Audit(db, now=self._now)
        #: Emailed codes for sign-ins from new networks, and password reset links.
        self.email_signins = EmailSignins(db, self.throttle, now=self._now)
        self.password_resets = PasswordResets(db, self.throttle, now=self._now)
        self.signups = Signups(db, self.throttle, now=self._now)
        #: Told the add-on key of each home this object links (see :meth:`on_linked`).
        self._link_listeners: list[Callable[[str], None]] = []

    def on_linked(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(addon_public_key)`` after each link made through this object.

        The tunnel hub uses it to answer an add-on waiting for its link at once;
        a link made by another process (``homeport admin link``) reaches the hub
        through its database poll instead.  Listeners must not block or raise.
        """
        self._link_listeners.append(listener)

    def _now(self) -> datetime:
        value = self._clock()
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("the clock must return timezone-aware datetimes")
        return value.astimezone(UTC)

    # ------------------------------------------------------------------ users

    async def create_user(self, email: str, password: str) -> User:
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

    async def list_users(self) -> list[User]:
        """All accounts, oldest first."""
        async with self._db.session() as s:
            return list(await s.scalars(select(User).order_by(User.id)))

    async def get_user(self, user_id: int) -> User | None:
        """The account with this id, or ``None``."""
        async with self._db.session() as s:
            return await s.get(User, user_id)

    async def get_user_by_email(self, email: str) -> User | None:
        """The account with this (normalised) email address, or ``None``."""
        try:
            normal = normalise_email(email)
        except InvalidEmail:
            return None
        async with self._db.session() as s:
            return await s.scalar(select(User).where(User.email == normal))

    async def set_user_disabled(self, user_id: int, disabled: bool) -> None:
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
            if _rowcount(result) != 1:
                raise UnknownUser("No such account.")
            if disabled:
                await s.execute(self._revoke_stmt(now, WebSession.user_id == user_id))
        _log.info("account %s: user %d", "disabled" if disabled else "enabled", user_id)
        await self.audit.record(
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
        user = await self.get_user(user_id)
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
            if _rowcount(result) != 1:
                raise UnknownUser("No such account.")
            condition = WebSession.user_id == user_id
            if keep_session_id is not None:
                condition = and_(condition, WebSession.id != keep_session_id)
            await s.execute(self._revoke_stmt(now, condition))
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
            if _rowcount(result) == 1:
                user.password_hash = new_hash
                _log.info("password hash upgraded: user %d", user.id)
        _log.info("login succeeded: user %d", user.id)
        return user

    # --------------------------------------------------------------- sessions

    @staticmethod
    def _revoke_stmt(now: datetime, condition: ColumnElement[bool]) -> Update:
        return (
            update(WebSession)
            .where(condition, WebSession.revoked_at.is_(None))
            .values(revoked_at=now)
        )

    async def create_session(
        self,
        user: User | int,
        kind: SessionKind,
        *,
        instance_id: str | None = None,
        user_agent: str,
        ip: str,
        handoff_code: str | None = None,
        second_factor: bool = False,
    ) -> tuple[str, WebSession]:
        """Start a session and return ``(token, row)``; the token is never stored.

        Call after every successful authentication (a fresh token each time
        stops session fixation). A ``"tenant"`` session needs ``instance_id``
        and an account allowed on it; an ``"account"`` session must not have
        one. ``user`` is a :class:`User` or its id; either way the account is
        re-read inside the transaction. Raises :class:`AccessDenied` for a
        missing or disabled account or an
        instance the account may not use, :class:`ValueError` for a bad
        ``kind``/``instance_id`` combination.

        ``handoff_code``: the (already redeemed) hand-off code a tenant session
        is created from; the session then remembers the account session that
        issued the code, so signing out there ends this session too, and
        inherits whether that sign-in used a second factor.

        ``second_factor``: the sign-in behind this account session passed one.
        """
        if kind not in _KINDS:
            raise ValueError(f"unknown session kind {kind!r}")
        if (kind == "tenant") != (instance_id is not None):
            raise ValueError("tenant sessions need an instance_id; account sessions take none")
        user_id = user if isinstance(user, int) else user.id
        idle, absolute = self._lifetimes[kind]
        now = self._now()
        token = new_token()
        row = WebSession(
            token_hash=sha256_hex(token),
            user_id=user_id,
            kind=kind,
            instance_id=instance_id,
            created_at=now,
            last_seen_at=now,
            idle_expires_at=min(now + idle, now + absolute),
            absolute_expires_at=now + absolute,
            revoked_at=None,
            user_agent=_clean_text(user_agent, USER_AGENT_MAX),
            ip=_clean_text(ip, IP_MAX),
            second_factor=second_factor and kind == "account",
        )
        async with self._db.session(write=True) as s, s.begin():
            disabled = await s.scalar(select(User.disabled).where(User.id == user_id))
            if disabled is None or disabled:
                raise AccessDenied("This account cannot sign in.")
            if instance_id is not None and not await self._can_access(s, user_id, instance_id):
                raise AccessDenied("This account may not use this instance.")
            if handoff_code and instance_id is not None and len(handoff_code) <= _MAX_TOKEN_CHARS:
                row.parent_session_id = await s.scalar(
                    select(HandoffCode.parent_session_id).where(
                        HandoffCode.code_hash == sha256_hex(handoff_code),
                        HandoffCode.user_id == user_id,
                        HandoffCode.instance_id == instance_id,
                        HandoffCode.used_at.is_not(None),
                    )
                )
                if row.parent_session_id is not None:
                    row.second_factor = bool(
                        await s.scalar(
                            select(WebSession.second_factor).where(
                                WebSession.id == row.parent_session_id
                            )
                        )
                    )
            s.add(row)
        _log.info(
            "session %d created: user %d, %s%s",
            row.id,
            user_id,
            kind,
            f" on instance {instance_id}" if instance_id else "",
        )
        return token, row

    async def resolve_session(
        self, token: str, *, kind: SessionKind, instance_id: str | None = None
    ) -> SessionInfo | None:
        """Return the live session for ``token``, or ``None``.

        Stops use of a session where it does not belong or after it ended:
        the token must hash to a stored session of this ``kind``; a tenant
        session only opens the instance it was issued for (``instance_id``
        must be the instance of the host being served); it must not be
        revoked or past its idle or absolute expiry; the account must not be
        disabled; and a tenant session's account must *still* be the owner
        or a member of the instance. Slides the idle expiry (never beyond
        the absolute one), writing at most once per ``touch_interval``.
        """
        if not token or len(token) > _MAX_TOKEN_CHARS or kind not in _KINDS:
            return None
        now = self._now()
        async with self._db.session() as s:
            found = (
                await s.execute(
                    select(WebSession, User.email, User.disabled)
                    .join(User, User.id == WebSession.user_id)
                    .where(WebSession.token_hash == sha256_hex(token))
                )
            ).one_or_none()
            if found is None:
                return None
            row, email, disabled = found
            if (
                row.kind != kind
                or row.instance_id != instance_id
                or row.revoked_at is not None
                or now >= row.idle_expires_at
                or now >= row.absolute_expires_at
                or disabled
            ):
                return None
            if row.instance_id is not None and not await self._can_access(
                s, row.user_id, row.instance_id
            ):
                return None
        last_seen, idle_expires = row.last_seen_at, row.idle_expires_at
        if now - row.last_seen_at >= self._touch_interval:
            idle, _absolute = self._lifetimes[row.kind]
            last_seen = now
            idle_expires = min(now + idle, row.absolute_expires_at)
            async with self._db.session(write=True) as s, s.begin():
                await s.execute(
                    update(WebSession)
                    .where(WebSession.id == row.id, WebSession.revoked_at.is_(None))
                    .values(last_seen_at=last_seen, idle_expires_at=idle_expires)
                )
        return SessionInfo(
            session_id=row.id,
            user_id=row.user_id,
            email=email,
            kind=kind,
            instance_id=row.instance_id,
            created_at=row.created_at,
            last_seen_at=last_seen,
            idle_expires_at=idle_expires,
            absolute_expires_at=row.absolute_expires_at,
        )

    async def revoke_session(self, session_id: int, *, user_id: int | None = None) -> bool:
        """End one session; ``True`` if it was live.

        Pass ``user_id`` whenever a user (not an admin) asks, so one account
        cannot end another's sessions by guessing ids.
        """
        condition = WebSession.id == session_id
        if user_id is not None:
            condition = and_(condition, WebSession.user_id == user_id)
        async with self._db.session(write=True) as s, s.begin():
            result = await s.execute(self._revoke_stmt(self._now(), condition))
        revoked = _rowcount(result) == 1
        if revoked:
            _log.info("session %d revoked", session_id)
        return revoked

    @staticmethod
    async def _live_session(s: AsyncSession, session_id: int) -> bool:
        found = await s.scalar(
            select(WebSession.id).where(
                WebSession.id == session_id, WebSession.revoked_at.is_(None)
            )
        )
        return found is not None

    async def sign_out(self, session_id: int) -> list[int]:
        """End an account session and everything it handed off; the ids ended.

        Stops a "signed out" person from staying in their homes: the tenant
        sessions created by hand-offs from this account session are revoked
        in the same transaction, and its unused hand-off codes are deleted
        (a code redeemed later is refused by :meth:`consume_handoff` anyway).
        The caller drops the returned ids from any session cache.
        """
        ids = await self._revoke_returning_ids(
            or_(WebSession.id == session_id, WebSession.parent_session_id == session_id),
            HandoffCode.parent_session_id == session_id,
        )
        _log.info("session %d signed out (%d sessions ended)", session_id, len(ids))
        return ids

    async def _revoke_returning_ids(
        self, sessions: ColumnElement[bool], codes: ColumnElement[bool]
    ) -> list[int]:
        """Revoke the live ``sessions`` and delete the unused hand-off ``codes``; the ids."""
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            ids = list(
                await s.scalars(
                    select(WebSession.id).where(sessions, WebSession.revoked_at.is_(None))
                )
            )
            await s.execute(self._revoke_stmt(now, sessions))
            await s.execute(delete(HandoffCode).where(codes, HandoffCode.used_at.is_(None)))
        return ids

    async def revoke_user_sessions(
        self, user_id: int, *, except_session_id: int | None = None
    ) -> int:
        """End every session of an account (optionally all but the current one)."""
        condition = WebSession.user_id == user_id
        if except_session_id is not None:
            condition = and_(condition, WebSession.id != except_session_id)
        async with self._db.session(write=True) as s, s.begin():
            result = await s.execute(self._revoke_stmt(self._now(), condition))
        count = _rowcount(result)
        _log.info("%d sessions revoked: user %d", count, user_id)
        return count

    async def revoke_other_sessions(self, user_id: int, keep_session_id: int) -> list[int]:
        """ "Sign out all other sessions": end every session but this browser's; the ids ended.

        Kept: the account session ``keep_session_id`` and the tenant sessions it
        handed off (the same browser). Unused hand-off codes of the ended
        account sessions are deleted. The caller cuts the ended sessions' live
        traffic (:meth:`homeport.relay.gate.SessionGate.end_sessions`).
        """
        ids = await self._revoke_returning_ids(
            and_(
                WebSession.user_id == user_id,
                WebSession.id != keep_session_id,
                or_(
                    WebSession.parent_session_id.is_(None),
                    WebSession.parent_session_id != keep_session_id,
                ),
            ),
            and_(
                HandoffCode.user_id == user_id,
                or_(
                    HandoffCode.parent_session_id.is_(None),
                    HandoffCode.parent_session_id != keep_session_id,
                ),
            ),
        )
        _log.info("other sessions revoked: user %d (%d ended)", user_id, len(ids))
        return ids

    async def live_session_ids(self, session_ids: Iterable[int]) -> set[int]:
        """Which of these sessions are still valid; the valid ones count as in use.

        The relay's sweep asks this about every session with open tunnel
        traffic, so a revocation made outside this process (admin CLI, another
        node), an absolute expiry, a disabled account or withdrawn access also
        cuts long-lived streams. An open stream is activity: the idle expiry of
        a live session slides as if a request had arrived (a wall tablet with a
        dashboard open is in use), never beyond the absolute expiry.
        """
        wanted = sorted(set(session_ids))
        now = self._now()
        alive: set[int] = set()
        touch: list[WebSession] = []
        member = exists().where(
            InstanceMember.user_id == WebSession.user_id,
            InstanceMember.instance_id == WebSession.instance_id,
        )
        async with self._db.session() as s:
            # One query per chunk, access included: the sweep asks every few seconds.
            for first in range(0, len(wanted), _LIVE_CHUNK):
                rows = await s.scalars(
                    select(WebSession)
                    .join(User, User.id == WebSession.user_id)
                    .outerjoin(Instance, Instance.id == WebSession.instance_id)
                    .where(
                        WebSession.id.in_(wanted[first : first + _LIVE_CHUNK]),
                        WebSession.revoked_at.is_(None),
                        WebSession.idle_expires_at > now,
                        WebSession.absolute_expires_at > now,
                        User.disabled.is_(False),
                        or_(
                            WebSession.instance_id.is_(None),
                            Instance.owner_id == WebSession.user_id,
                            member,
                        ),
                    )
                )
                for row in rows:
                    alive.add(row.id)
                    if now - row.last_seen_at >= self._touch_interval:
                        touch.append(row)
        if touch:
            async with self._db.session(write=True) as s, s.begin():
                for row in touch:
                    idle, _absolute = self._lifetimes[row.kind]
                    await s.execute(
                        update(WebSession)
                        .where(WebSession.id == row.id, WebSession.revoked_at.is_(None))
                        .values(
                            last_seen_at=now,
                            idle_expires_at=min(now + idle, row.absolute_expires_at),
                        )
                    )
        return alive

    async def list_sessions(self, user_id: int) -> list[WebSession]:
        """The account's live sessions, most recently used first."""
        now = self._now()
        async with self._db.session() as s:
            rows = await s.scalars(
                select(WebSession)
                .where(
                    WebSession.user_id == user_id,
                    WebSession.revoked_at.is_(None),
                    WebSession.idle_expires_at > now,
                    WebSession.absolute_expires_at > now,
                )
                .order_by(WebSession.last_seen_at.desc(), WebSession.id.desc())
            )
            return list(rows)

    # ----------------------------------------------------------------- access

    @staticmethod
    async def _can_access(s: AsyncSession, user_id: int, instance_id: str) -> bool:
        member = exists().where(
            InstanceMember.user_id == user_id, InstanceMember.instance_id == Instance.id
        )
        found = await s.scalar(
            select(Instance.id)
            .join(User, User.id == user_id)
            .where(
                Instance.id == instance_id,
                User.disabled.is_(False),
                or_(Instance.owner_id == user_id, member),
            )
        )
        return found is not None

    async def can_access(self, user_id: int, instance_id: str) -> bool:
        """Whether an enabled account owns or is a member of the instance.

        The one tenant-isolation check; anything else (unknown user or
        instance, disabled account, not shared) is ``False``.
        """
        if not is_instance_id(instance_id):
            return False
        async with self._db.session() as s:
            return await self._can_access(s, user_id, instance_id)

    async def add_member(self, instance_id: str, user_id: int) -> None:
        """Allow an account on an instance (idempotent).

        Raises :class:`UnknownInstance` or :class:`UnknownUser`.
        """
        async with self._db.session(write=True) as s, s.begin():
            if await s.get(Instance, instance_id) is None:
                raise UnknownInstance("No such instance.")
            if await s.get(User, user_id) is None:
                raise UnknownUser("No such account.")
            if await s.get(InstanceMember, (user_id, instance_id)) is None:
                s.add(
                    InstanceMember(user_id=user_id, instance_id=instance_id, created_at=self._now())
                )
        _log.info("member added: user %d on instance %s", user_id, instance_id)
        await self.audit.record(EventType.MEMBER_ADDED, user_id=user_id, instance_id=instance_id)

    async def remove_member(self, instance_id: str, user_id: int) -> bool:
        """Withdraw an account's access and end its sessions on the instance."""
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            result = await s.execute(
                delete(InstanceMember).where(
                    InstanceMember.user_id == user_id, InstanceMember.instance_id == instance_id
                )
            )
            await s.execute(
                self._revoke_stmt(
                    now,
                    and_(WebSession.user_id == user_id, WebSession.instance_id == instance_id),
                )
            )
            await s.execute(
                delete(HandoffCode).where(
                    HandoffCode.user_id == user_id, HandoffCode.instance_id == instance_id
                )
            )
        removed = _rowcount(result) == 1
        if removed:
            _log.info("member removed: user %d from instance %s", user_id, instance_id)
            await self.audit.record(
                EventType.MEMBER_REMOVED, user_id=user_id, instance_id=instance_id
            )
        return removed

    # ---------------------------------------------------------------- hand-off

    async def create_handoff(
        self, user_id: int, instance_id: str, binding: str, *, session_id: int | None = None
    ) -> str:
        """Issue a one-time code that carries a login to a tenant host.

        The code (256 bits) is valid for 60 s, once, for this account, this
        instance and this browser: ``binding`` is a random state value the
        relay also sets as a cookie on the tenant host before redirecting.
        ``session_id`` is the account session asking: the code, and the
        tenant session made from it, end when that session signs out.
        Raises :class:`AccessDenied` if the account may not use the instance.
        """
        if not _MIN_BINDING_CHARS <= len(binding) <= _MAX_BINDING_CHARS:
            raise ValueError("binding must be a random value of 16 to 512 characters")
        now = self._now()
        code = new_token()
        async with self._db.session(write=True) as s, s.begin():
            if not await self._can_access(s, user_id, instance_id):
                raise AccessDenied("This account may not use this instance.")
            s.add(
                HandoffCode(
                    code_hash=sha256_hex(code),
                    user_id=user_id,
                    instance_id=instance_id,
                    binding_hash=sha256_hex(binding),
                    created_at=now,
                    expires_at=now + self._handoff_lifetime,
                    used_at=None,
                    parent_session_id=session_id,
                )
            )
        _log.info("hand-off issued: user %d to instance %s", user_id, instance_id)
        return code

    async def consume_handoff(self, code: str, instance_id: str, binding: str | None) -> int | None:
        """Redeem a hand-off code on a tenant host; the account id, or ``None``.

        Stops replay and transplanting of a leaked code: it works once
        (atomically, even under concurrent requests), only before it
        expires, only on the instance it was issued for, only with the
        browser state it was bound to, and only while the account may still
        use the instance. Any presentation of a live code uses it up, even a
        failing one: a mismatch means the code is in the wrong hands.
        ``binding`` is ``None`` when the browser brought no state at all (no
        state cookie): the code is used up and refused all the same, so a code
        shown to a browser that never started this sign-in (a leaked link, a
        login-CSRF attempt) is gone for everyone.
        """
        if not code or len(code) > _MAX_TOKEN_CHARS:
            return None
        code_hash = sha256_hex(code)
        binding_hash = None if binding is None else sha256_hex(binding[: _MAX_BINDING_CHARS + 1])
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            result = await s.execute(
                update(HandoffCode)
                .where(HandoffCode.code_hash == code_hash, HandoffCode.used_at.is_(None))
                .values(used_at=now)
            )
            if _rowcount(result) != 1:
                _log.warning("hand-off refused: unknown or used code")
                return None
            row = await s.get_one(HandoffCode, code_hash)
            reason: str | None = None
            if now >= row.expires_at:
                reason = "expired"
            elif row.instance_id != instance_id:
                reason = "wrong instance"
            elif binding_hash is None:
                reason = "no browser state"
            elif not hmac.compare_digest(row.binding_hash, binding_hash):
                reason = "browser binding mismatch"
            elif not await self._can_access(s, row.user_id, row.instance_id):
                reason = "access withdrawn"
            elif row.parent_session_id is not None and not await self._live_session(
                s, row.parent_session_id
            ):
                reason = "issuing session ended"
            user_id = row.user_id
        if reason is not None:
            _log.warning("hand-off refused for user %d: %s", user_id, reason)
            return None
        _log.info("hand-off accepted: user %d on instance %s", user_id, instance_id)
        return user_id

    # ------------------------------------------------------- instances/linking

    async def create_link_code(self, addon_public_key: str) -> tuple[str, datetime]:
        """Issue a link code for an add-on key: ``("ABCDE-12345", expires_at)``.

        The add-on shows the code in its own UI/log; its owner types it into
        the account site (:meth:`link_instance`). 50 bits, valid 10 minutes,
        single use, stored hashed; a new code for the same key voids the
        earlier ones. The relay must rate-limit attempts to redeem codes.
        Raises :class:`ValueError` for a malformed key and
        :class:`AlreadyLinked` if the key already belongs to an instance.
        """
        key = canonical_public_key(addon_public_key)
        now = self._now()
        expires_at = now + self._link_code_lifetime
        async with self._db.session(write=True) as s, s.begin():
            if await s.scalar(select(Instance.id).where(Instance.addon_public_key == key)):
                raise AlreadyLinked("This add-on is already linked.")
            await s.execute(delete(LinkCode).where(LinkCode.addon_public_key == key))
            while True:
                code = new_link_code()
                if await s.get(LinkCode, sha256_hex(code)) is None:
                    break
            s.add(
                LinkCode(
                    code_hash=sha256_hex(code),
                    addon_public_key=key,
                    created_at=now,
                    expires_at=expires_at,
                    used_at=None,
                )
            )
        _log.info("link code issued for an add-on key (expires %s)", expires_at.isoformat())
        return format_link_code(code), expires_at

    async def link_instance(self, code: str, owner_email: str, name: str = "Home") -> Instance:
        """Redeem a link code: create the instance for the code's add-on key.

        Stops linking someone else's add-on by guessing or replaying: the
        code must exist, be unused and unexpired, and is used up atomically.
        Raises :class:`LinkCodeInvalid`, :class:`UnknownUser` (no enabled
        account with ``owner_email``), :class:`AlreadyLinked`, or
        :class:`ValueError` for a bad ``name``.
        """
        clean_name = _instance_name(name)
        normal_code = normalise_link_code(code)
        try:
            email = normalise_email(owner_email)
        except InvalidEmail as exc:
            raise UnknownUser("No account with this email address.") from exc
        now = self._now()
        try:
            async with self._db.session(write=True) as s, s.begin():
                owner = await s.scalar(select(User).where(User.email == email))
                if owner is None or owner.disabled:
                    raise UnknownUser("No account with this email address.")
                code_hash = sha256_hex(normal_code)
                result = await s.execute(
                    update(LinkCode)
                    .where(
                        LinkCode.code_hash == code_hash,
                        LinkCode.used_at.is_(None),
                        LinkCode.expires_at > now,
                    )
                    .values(used_at=now)
                )
                if _rowcount(result) != 1:
                    raise LinkCodeInvalid()
                key = await s.scalar(
                    select(LinkCode.addon_public_key).where(LinkCode.code_hash == code_hash)
                )
                if await s.scalar(select(Instance.id).where(Instance.addon_public_key == key)):
                    raise AlreadyLinked("This add-on is already linked.")
                instance_id = new_instance_id()
                while await s.get(RetiredInstance, instance_id) is not None:
                    instance_id = new_instance_id()  # R-MT-13: an old home's name never returns
                instance = Instance(
                    id=instance_id,
                    owner_id=owner.id,
                    name=clean_name,
                    addon_public_key=key,
                    created_at=now,
                    last_connected_at=None,
                )
                s.add(instance)
        except IntegrityError as exc:  # a concurrent link of the same key won
            raise AlreadyLinked("This add-on is already linked.") from exc
        except LinkCodeInvalid:
            _log.warning("link refused: invalid, used or expired code")
            raise
        _log.info("instance %s linked: owner user %d", instance.id, owner.id)
        await self.audit.record(
            EventType.INSTANCE_LINKED, user_id=owner.id, instance_id=instance.id
        )
        for listener in self._link_listeners:
            listener(instance.addon_public_key)
        return instance

    async def instance_for_key(self, public_key_text: str) -> Instance | None:
        """The instance an add-on key is linked to (for the tunnel hub), or ``None``."""
        try:
            key = canonical_public_key(public_key_text)
        except ValueError:
            return None
        async with self._db.session() as s:
            return await s.scalar(select(Instance).where(Instance.addon_public_key == key))

    async def get_instance(self, instance_id: str) -> Instance | None:
        """The instance with this id (tenant host label), or ``None``."""
        if not is_instance_id(instance_id):
            return None
        async with self._db.session() as s:
            return await s.get(Instance, instance_id)

    async def list_instances(self, *, user_id: int | None = None) -> list[InstanceRow]:
        """All instances (admin), or those ``user_id`` owns or is a member of."""
        stmt = select(Instance, User.email).join(User, User.id == Instance.owner_id)
        if user_id is not None:
            member = exists().where(
                InstanceMember.user_id == user_id, InstanceMember.instance_id == Instance.id
            )
            stmt = stmt.where(or_(Instance.owner_id == user_id, member))
        async with self._db.session() as s:
            rows = await s.execute(stmt.order_by(Instance.created_at, Instance.id))
            return [
                InstanceRow(
                    id=inst.id,
                    name=inst.name,
                    owner_id=inst.owner_id,
                    owner_email=email,
                    addon_public_key=inst.addon_public_key,
                    created_at=inst.created_at,
                    last_connected_at=inst.last_connected_at,
                    connected=inst.connected,
                )
                for inst, email in rows
            ]

    async def instances_for_user(self, user_id: int) -> list[InstanceRow]:
        """Instances the account owns or is a member of (``list_instances(user_id=...)``)."""
        return await self.list_instances(user_id=user_id)

    async def mark_connected(self, instance_id: str) -> None:
        """Record that the instance's add-on has just connected."""
        async with self._db.session(write=True) as s, s.begin():
            await s.execute(
                update(Instance)
                .where(Instance.id == instance_id)
                .values(last_connected_at=self._now())
            )

    async def mark_disconnected(self, instance_id: str | None = None) -> None:
        """Record that an add-on's tunnel dropped; ``None``: all of them.

        A single relay calls it for all instances at start-up, so a crash never
        leaves an instance listed as connected.  (Several relay nodes will keep
        this in the shared tunnel directory instead.)
        """
        stmt = update(Instance).values(last_disconnected_at=self._now())
        if instance_id is not None:
            stmt = stmt.where(Instance.id == instance_id)
        async with self._db.session(write=True) as s, s.begin():
            await s.execute(stmt)

    async def unlink_instance(self, instance_id: str) -> bool:
        """Delete an instance with its members, sessions and hand-off codes.

        The add-on key is free to be linked again with a new code. The
        tunnel hub must also drop a live tunnel for this key. The id is
        retired: no later instance gets it (R-MT-13), so an old tenant host,
        bookmarked or cached, never opens someone else's home.
        """
        async with self._db.session(write=True) as s, s.begin():
            instance = await s.get(Instance, instance_id)
            if instance is None:
                return False
            await s.execute(
                delete(LinkCode).where(LinkCode.addon_public_key == instance.addon_public_key)
            )
            # Explicit, not only ON DELETE CASCADE: correct even where the
            # backend was set up without foreign key enforcement.
            await s.execute(delete(WebSession).where(WebSession.instance_id == instance_id))
            await s.execute(delete(HandoffCode).where(HandoffCode.instance_id == instance_id))
            await s.execute(delete(InstanceMember).where(InstanceMember.instance_id == instance_id))
            await self.sharing.delete_instance_rows(s, instance_id)
            s.add(RetiredInstance(id=instance_id, retired_at=self._now()))
            owner_id = instance.owner_id
            await s.delete(instance)
        _log.info("instance %s unlinked", instance_id)
        await self.audit.record(
            EventType.INSTANCE_UNLINKED, user_id=owner_id, instance_id=instance_id
        )
        return True

    # ------------------------------------------------------------ housekeeping

    async def purge_expired(self, *, keep: timedelta = timedelta(days=30)) -> int:
        """Delete dead codes now and dead sessions after ``keep``; rows deleted.

        Run periodically (e.g. hourly) by the relay.
        """
        now = self._now()
        horizon = now - keep
        total = 0
        statements: Sequence[Delete] = (
            delete(LinkCode).where(or_(LinkCode.expires_at <= now, LinkCode.used_at.is_not(None))),
            delete(ThrottleEntry).where(
                ThrottleEntry.updated_at <= now - PRUNE_AFTER,
                or_(ThrottleEntry.next_allowed_at.is_(None), ThrottleEntry.next_allowed_at <= now),
            ),
            delete(HandoffCode).where(
                or_(HandoffCode.expires_at <= now, HandoffCode.used_at.is_not(None))
            ),
            delete(PendingLogin).where(
                or_(PendingLogin.expires_at <= now, PendingLogin.used_at.is_not(None))
            ),
            delete(PasskeyChallenge).where(PasskeyChallenge.expires_at <= now),
            delete(WebSession).where(
                or_(
                    WebSession.absolute_expires_at <= horizon,
                    WebSession.idle_expires_at <= horizon,
                    WebSession.revoked_at <= horizon,
                )
            ),
        )
        async with self._db.session(write=True) as s, s.begin():
            for stmt in statements:
                total += _rowcount(await s.execute(stmt))
        total += await self.email_signins.purge() + await self.password_resets.purge()
        total += await self.signups.purge()
        return total + await self.oidc.purge()
