"""Sessions on the account site and on tenant hosts, and the hand-off between them.

Threats this stops (each method says which): session fixation (a fresh token
on every sign-in), a session used where it does not belong or after it ended
(:meth:`Sessions.resolve`), a "signed out" person staying in their homes
(:meth:`Sessions.sign_out`), replay and transplanting of a hand-off code
(:meth:`Sessions.consume_handoff`: once, for its instance and browser only).
Tokens and codes are returned once and stored as SHA-256 digests.

Session lifetimes (R-SES-05; decided in docs/security.md, "Sessions"):

* account sessions: idle 1 h, absolute 12 h (within NIST SP 800-63B-4
  AAL2: inactivity <= 1 h, re-authentication <= 24 h): this site changes
  passwords, factors, sharing;
* tenant sessions: idle 12 h, absolute 7 days, a documented deviation: HA
  dashboards stay open on wall tablets for days, Home Assistant's own login
  still guards every home, and an open stream or WebSocket counts as
  activity (:meth:`Sessions.live_ids`). The idle expiry slides at most once
  per ``touch_interval`` (1 min) so a busy dashboard does not write to the
  database on every request; the effective idle timeout is therefore
  accurate to within that interval.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from sqlalchemy import ColumnElement, Update, and_, delete, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from homeport.accounts.access import can_access_in
from homeport.accounts.db import Database
from homeport.accounts.errors import AccessDenied
from homeport.accounts.identifiers import new_token, sha256_hex
from homeport.accounts.models import (
    IP_MAX,
    USER_AGENT_MAX,
    HandoffCode,
    Instance,
    InstanceMember,
    User,
    WebSession,
)
from homeport.accounts.single_use import consume_once, rowcount

__all__ = [
    "ACCOUNT_ABSOLUTE",
    "ACCOUNT_IDLE",
    "TENANT_ABSOLUTE",
    "TENANT_IDLE",
    "SessionInfo",
    "SessionKind",
    "Sessions",
    "revoke_stmt",
]

_log = logging.getLogger(__name__)

SessionKind = Literal["account", "tenant"]
_KINDS: Final[frozenset[str]] = frozenset({"account", "tenant"})
_MAX_TOKEN_CHARS: Final = 64
_MAX_BINDING_CHARS: Final = 512
_MIN_BINDING_CHARS: Final = 16
#: Session ids per query in :meth:`Sessions.live_ids` (bound-parameter limits).
_LIVE_CHUNK: Final = 500

#: Session lifetimes (see the module docstring and docs/security.md).
ACCOUNT_IDLE: Final = timedelta(hours=1)
ACCOUNT_ABSOLUTE: Final = timedelta(hours=12)
TENANT_IDLE: Final = timedelta(hours=12)
TENANT_ABSOLUTE: Final = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A valid session, as :meth:`Sessions.resolve` found it."""

    session_id: int
    user_id: int
    email: str
    kind: SessionKind
    instance_id: str | None
    created_at: datetime
    last_seen_at: datetime
    idle_expires_at: datetime
    absolute_expires_at: datetime


def _clean_text(value: str, limit: int) -> str:
    """Printable-only, truncated copy of client-supplied metadata (user agent, IP)."""
    return "".join(ch if ch.isprintable() else "?" for ch in value[:limit])


def revoke_stmt(now: datetime, condition: ColumnElement[bool]) -> Update:
    """End the live sessions matching ``condition`` (for callers' own transactions)."""
    return (
        update(WebSession).where(condition, WebSession.revoked_at.is_(None)).values(revoked_at=now)
    )


async def _live_session(s: AsyncSession, session_id: int) -> bool:
    found = await s.scalar(
        select(WebSession.id).where(WebSession.id == session_id, WebSession.revoked_at.is_(None))
    )
    return found is not None


class Sessions:
    """Account and tenant sessions and hand-off codes, over one :class:`Database`."""

    def __init__(
        self,
        db: Database,
        *,
        now: Callable[[], datetime],
        account_idle: timedelta = ACCOUNT_IDLE,
        account_absolute: timedelta = ACCOUNT_ABSOLUTE,
        tenant_idle: timedelta = TENANT_IDLE,
        tenant_absolute: timedelta = TENANT_ABSOLUTE,
        touch_interval: timedelta = timedelta(minutes=1),
        handoff_lifetime: timedelta = timedelta(seconds=60),
    ) -> None:
        self._db = db
        self._now = now
        self._lifetimes: dict[str, tuple[timedelta, timedelta]] = {
            "account": (account_idle, account_absolute),
            "tenant": (tenant_idle, tenant_absolute),
        }
        self._touch_interval = touch_interval
        self._handoff_lifetime = handoff_lifetime

    async def create(
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
            if instance_id is not None and not await can_access_in(s, user_id, instance_id):
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

    async def resolve(
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
            if row.instance_id is not None and not await can_access_in(
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

    async def revoke(self, session_id: int, *, user_id: int | None = None) -> bool:
        """End one session; ``True`` if it was live.

        Pass ``user_id`` whenever a user (not an admin) asks, so one account
        cannot end another's sessions by guessing ids.
        """
        condition = WebSession.id == session_id
        if user_id is not None:
            condition = and_(condition, WebSession.user_id == user_id)
        async with self._db.session(write=True) as s, s.begin():
            result = await s.execute(revoke_stmt(self._now(), condition))
        revoked = rowcount(result) == 1
        if revoked:
            _log.info("session %d revoked", session_id)
        return revoked

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
            await s.execute(revoke_stmt(now, sessions))
            await s.execute(delete(HandoffCode).where(codes, HandoffCode.used_at.is_(None)))
        return ids

    async def revoke_user(self, user_id: int, *, except_session_id: int | None = None) -> int:
        """End every session of an account (optionally all but the current one)."""
        condition = WebSession.user_id == user_id
        if except_session_id is not None:
            condition = and_(condition, WebSession.id != except_session_id)
        async with self._db.session(write=True) as s, s.begin():
            result = await s.execute(revoke_stmt(self._now(), condition))
        count = rowcount(result)
        _log.info("%d sessions revoked: user %d", count, user_id)
        return count

    async def revoke_others(self, user_id: int, keep_session_id: int) -> list[int]:
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

    async def live_ids(self, session_ids: Iterable[int]) -> set[int]:
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

    async def of_user(self, user_id: int) -> list[WebSession]:
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
            if not await can_access_in(s, user_id, instance_id):
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
            if not await consume_once(
                s, HandoffCode.use(HandoffCode.code_hash == code_hash, at=now)
            ):
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
            elif not await can_access_in(s, row.user_id, row.instance_id):
                reason = "access withdrawn"
            elif row.parent_session_id is not None and not await _live_session(
                s, row.parent_session_id
            ):
                reason = "issuing session ended"
            user_id = row.user_id
        if reason is not None:
            _log.warning("hand-off refused for user %d: %s", user_id, reason)
            return None
        _log.info("hand-off accepted: user %d on instance %s", user_id, instance_id)
        return user_id
