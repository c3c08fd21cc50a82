"""Sharing a home: owner actions, invitations, app links and the second-factor policy.

Every method that changes an instance takes the acting account and checks that
it *owns* the instance (members may open a home, never manage it); "not
yours" and "no such home" raise the same :class:`UnknownInstance`, so ids
cannot be probed through these pages.

Threats and rules:

* **Invitations** (R-SHR). The accept token is 256 bits from :mod:`secrets`,
  shown to the owner once (in the accept link) and stored as SHA-256. It is
  accepted once (``UPDATE … WHERE accepted_at IS NULL`` with a row-count
  check), never after it was revoked or expired, and only by a signed-in
  account whose (normalised) email address *is* the invited address: a
  forwarded or leaked link is useless to anyone else, and a wrong account
  does not use it up. The owner's members list names the account that
  accepted.
* **Removing a member** ends their tenant sessions on that instance in the
  same transaction (:meth:`Instances.remove_member`); the relay also drops its
  gate cache and closes their open streams.
* **App links** open one instance for a companion app, which cannot pass a
  browser sign-in. The host label is 160 bits from :mod:`secrets` (32
  base32 characters, one DNS label under the tenant domain, so the wildcard
  certificate covers it); only its SHA-256 is stored and the host is found
  by that hash. A link works only while it exists, its instance exists and
  the instance owner's account is enabled. Home Assistant's own login still
  guards everything behind it. Last use is written at most once a minute.
* **Second factor required** (owner setting): a member may open the home only
  from a sign-in that used a second factor. Turning it on needs an owner
  session that used one (so owners cannot lock themselves out), revokes the
  instance's tenant sessions that did not, and voids unused hand-off codes.
"""

from __future__ import annotations

import base64
import logging
import re
import secrets
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final, Literal

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from homeport.accounts.db import Database
from homeport.accounts.errors import AccessDenied, AccountsError, UnknownInstance
from homeport.accounts.identifiers import is_instance_id, new_token, normalise_email, sha256_hex
from homeport.accounts.models import (
    APP_LINK_NAME_MAX,
    AppLink,
    HandoffCode,
    Instance,
    InstanceMember,
    InstancePolicy,
    Invitation,
    TotpCredential,
    User,
    WebSession,
)
from homeport.accounts.single_use import consume_once, rowcount

if TYPE_CHECKING:
    from homeport.accounts.instances import Instances

__all__ = [
    "APP_LINK_LABEL_LENGTH",
    "MAX_APP_LINKS",
    "MAX_PENDING_INVITATIONS",
    "AppLinkAccess",
    "InvitationInvalid",
    "InvitationRow",
    "InvitationView",
    "MemberRow",
    "Sharing",
    "WrongAccount",
    "display_name",
    "is_app_link_label",
    "new_app_link_label",
]

_log = logging.getLogger(__name__)

APP_LINK_BYTES: Final = 20  # 160 bits
APP_LINK_LABEL_LENGTH: Final = 32
_APP_LINK_LABEL = re.compile(r"[a-z2-7]{32}")
MAX_APP_LINKS: Final = 20
MAX_PENDING_INVITATIONS: Final = 50
MAX_INVITATION_LIFETIME: Final = timedelta(days=90)
LAST_USE_INTERVAL: Final = timedelta(minutes=1)
_MAX_TOKEN_CHARS: Final = 64

InvitationStatus = Literal["pending", "accepted", "expired", "revoked"]


class InvitationInvalid(AccountsError):
    """The invitation is unknown, used, revoked or expired (one answer for all)."""

    def __init__(
        self,
        message: str = "This invitation cannot be used: it has expired, was withdrawn, "
        "or was already accepted.",
    ) -> None:
        super().__init__(message)


class WrongAccount(AccountsError):
    """The signed-in account's address is not the invited one; the invitation stays."""


def new_app_link_label() -> str:
    """A fresh app-link host label: 160 random bits, lower-case base32, 32 characters."""
    raw = secrets.token_bytes(APP_LINK_BYTES)
    return base64.b32encode(raw).decode("ascii").lower()


def is_app_link_label(text: str) -> bool:
    """Whether ``text`` has the shape of an app-link label (cheap pre-check)."""
    return _APP_LINK_LABEL.fullmatch(text) is not None


def display_name(name: str, limit: int = 64) -> str:
    """The clean form of an instance or device name; :class:`ValueError` says what is wrong."""
    clean = unicodedata.normalize("NFKC", name).strip()
    if not clean or len(clean) > limit:
        raise ValueError(f"The name must be 1 to {limit} characters.")
    if any(not ch.isprintable() for ch in clean):
        raise ValueError("The name must not contain control characters.")
    return clean


@dataclass(frozen=True, slots=True)
class MemberRow:
    user_id: int
    email: str
    since: datetime


@dataclass(frozen=True, slots=True)
class InvitationRow:
    id: int
    email: str
    created_at: datetime
    expires_at: datetime | None
    status: InvitationStatus
    accepted_by_email: str | None


@dataclass(frozen=True, slots=True)
class InvitationView:
    """What the accept page shows about a live invitation."""

    instance_id: str
    instance_name: str
    inviter_email: str
    email: str
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class AppLinkAccess:
    """A live app link, as the relay's router found it by its host label."""

    link_id: int
    instance_id: str


class Sharing:
    """Owner actions on instances, over the same database and clock as :class:`Instances`."""

    def __init__(self, db: Database, instances: Instances, *, now: Callable[[], datetime]) -> None:
        self._db = db
        self._instances = instances
        self._now = now

    # ------------------------------------------------------------- ownership

    @staticmethod
    async def _owned(s: AsyncSession, owner_id: int, instance_id: str) -> Instance:
        instance = await s.get(Instance, instance_id) if is_instance_id(instance_id) else None
        if instance is None or instance.owner_id != owner_id:
            raise UnknownInstance("No such home.")
        return instance

    async def owned_instance(self, owner_id: int, instance_id: str) -> Instance:
        """The instance if ``owner_id`` owns it; else :class:`UnknownInstance`."""
        async with self._db.session() as s:
            return await self._owned(s, owner_id, instance_id)

    async def rename(self, owner_id: int, instance_id: str, name: str) -> str:
        """Rename an instance; the clean name. :class:`ValueError` for a bad one."""
        clean = display_name(name, 64)
        async with self._db.session(write=True) as s, s.begin():
            instance = await self._owned(s, owner_id, instance_id)
            instance.name = clean
        _log.info("instance %s renamed by user %d", instance_id, owner_id)
        return clean

    async def unlink(self, owner_id: int, instance_id: str) -> bool:
        """Unlink (delete) an instance its owner asks to; the relay closes its tunnel."""
        await self.owned_instance(owner_id, instance_id)
        return await self._instances.unlink(instance_id)

    @staticmethod
    async def delete_instance_rows(s: AsyncSession, instance_id: str) -> None:
        """Delete the sharing rows of an instance being unlinked (in the caller's transaction).

        Explicit, not only ON DELETE CASCADE: correct even where the backend
        was set up without foreign key enforcement.
        """
        for model in (AppLink, Invitation, InstancePolicy):
            await s.execute(delete(model).where(model.instance_id == instance_id))

    # --------------------------------------------------------------- members

    async def members(self, instance_id: str) -> list[MemberRow]:
        """The accounts allowed on an instance besides its owner, oldest first."""
        async with self._db.session() as s:
            rows = await s.execute(
                select(InstanceMember.user_id, User.email, InstanceMember.created_at)
                .join(User, User.id == InstanceMember.user_id)
                .where(InstanceMember.instance_id == instance_id)
                .order_by(InstanceMember.created_at, InstanceMember.user_id)
            )
            return [MemberRow(uid, email, since) for uid, email, since in rows]

    async def remove_member(self, owner_id: int, instance_id: str, user_id: int) -> bool:
        """Withdraw a member's access (and end their sessions there) at the owner's request."""
        await self.owned_instance(owner_id, instance_id)
        return await self._instances.remove_member(instance_id, user_id)

    async def leave(self, user_id: int, instance_id: str) -> bool:
        """A member gives up their access (and sessions) to a home shared with them."""
        if not is_instance_id(instance_id):
            return False
        async with self._db.session() as s:
            if await s.get(InstanceMember, (user_id, instance_id)) is None:
                return False  # the owner, or no access: nothing to leave, nothing ended
        return await self._instances.remove_member(instance_id, user_id)

    # ----------------------------------------------------------- invitations

    async def invite(
        self, owner_id: int, instance_id: str, email: str, *, lifetime: timedelta | None
    ) -> tuple[str, Invitation]:
        """Invite ``email`` to an instance: ``(accept token, row)``; the token is not stored.

        ``lifetime`` ``None`` means no expiry (until accepted or revoked); at
        most :data:`MAX_INVITATION_LIFETIME`. Raises :class:`InvalidEmail`,
        :class:`UnknownInstance`, or :class:`ValueError` (the owner's own
        address, an existing member, too many pending invitations).
        """
        normal = normalise_email(email)
        if lifetime is not None and not timedelta(0) < lifetime <= MAX_INVITATION_LIFETIME:
            raise ValueError("An invitation can last at most 90 days.")
        now = self._now()
        token = new_token()
        async with self._db.session(write=True) as s, s.begin():
            instance = await self._owned(s, owner_id, instance_id)
            owner_email = await s.scalar(select(User.email).where(User.id == instance.owner_id))
            if owner_email == normal:
                raise ValueError("You own this home already.")
            member = await s.scalar(
                select(InstanceMember.user_id)
                .join(User, User.id == InstanceMember.user_id)
                .where(InstanceMember.instance_id == instance_id, User.email == normal)
            )
            if member is not None:
                raise ValueError("This person can already open this home.")
            pending = await s.scalar(
                select(func.count())
                .select_from(Invitation)
                .where(Invitation.instance_id == instance_id, self._pending(now))
            )
            if (pending or 0) >= MAX_PENDING_INVITATIONS:
                raise ValueError("Too many pending invitations; withdraw some first.")
            row = Invitation(
                instance_id=instance_id,
                email=normal,
                token_hash=sha256_hex(token),
                invited_by=owner_id,
                created_at=now,
                expires_at=None if lifetime is None else now + lifetime,
                revoked_at=None,
                accepted_at=None,
                accepted_by=None,
            )
            s.add(row)
        _log.info("invitation %d created on instance %s by user %d", row.id, instance_id, owner_id)
        return token, row

    @staticmethod
    def _pending(now: datetime) -> ColumnElement[bool]:
        return and_(
            Invitation.accepted_at.is_(None),
            Invitation.revoked_at.is_(None),
            or_(Invitation.expires_at.is_(None), Invitation.expires_at > now),
        )

    async def invitations(self, instance_id: str) -> list[InvitationRow]:
        """The instance's invitations, newest first, with their status."""
        now = self._now()
        async with self._db.session() as s:
            rows = await s.execute(
                select(Invitation, User.email)
                .outerjoin(User, User.id == Invitation.accepted_by)
                .where(Invitation.instance_id == instance_id)
                .order_by(Invitation.created_at.desc(), Invitation.id.desc())
            )
            result = []
            for inv, accepted_email in rows:
                status: InvitationStatus
                if inv.accepted_at is not None:
                    status = "accepted"
                elif inv.revoked_at is not None:
                    status = "revoked"
                elif inv.expires_at is not None and inv.expires_at <= now:
                    status = "expired"
                else:
                    status = "pending"
                result.append(
                    InvitationRow(
                        inv.id, inv.email, inv.created_at, inv.expires_at, status, accepted_email
                    )
                )
            return result

    async def revoke_invitation(self, owner_id: int, instance_id: str, invitation_id: int) -> bool:
        """Withdraw a pending invitation; ``True`` if it was pending."""
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            await self._owned(s, owner_id, instance_id)
            result = await s.execute(
                update(Invitation)
                .where(
                    Invitation.id == invitation_id,
                    Invitation.instance_id == instance_id,
                    Invitation.accepted_at.is_(None),
                    Invitation.revoked_at.is_(None),
                )
                .values(revoked_at=now)
            )
        revoked = rowcount(result) == 1
        if revoked:
            _log.info("invitation %d revoked by user %d", invitation_id, owner_id)
        return revoked

    async def invitation(self, token: str) -> InvitationView | None:
        """The live invitation for an accept token, or ``None`` (one answer for every failure)."""
        if not token or len(token) > _MAX_TOKEN_CHARS:
            return None
        now = self._now()
        async with self._db.session() as s:
            found = (
                await s.execute(
                    select(Invitation, Instance.name, User.email)
                    .join(Instance, Instance.id == Invitation.instance_id)
                    .join(User, User.id == Instance.owner_id)
                    .where(Invitation.token_hash == sha256_hex(token), self._pending(now))
                )
            ).one_or_none()
        if found is None:
            return None
        inv, name, owner_email = found
        return InvitationView(inv.instance_id, name, owner_email, inv.email, inv.expires_at)

    async def accept(self, token: str, user_id: int) -> str:
        """Accept an invitation as the signed-in account ``user_id``; the instance id.

        Raises :class:`InvitationInvalid` (unknown, used, revoked, expired) or
        :class:`WrongAccount` (the account's address is not the invited one;
        the invitation is not used up).
        """
        if not token or len(token) > _MAX_TOKEN_CHARS:
            raise InvitationInvalid()
        now = self._now()
        token_hash = sha256_hex(token)
        async with self._db.session(write=True) as s, s.begin():
            user = await s.get(User, user_id)
            if user is None or user.disabled:
                raise AccessDenied("This account cannot accept invitations.")
            inv = await s.scalar(
                select(Invitation).where(Invitation.token_hash == token_hash, self._pending(now))
            )
            if inv is None:
                raise InvitationInvalid()
            if inv.email != user.email:
                raise WrongAccount(
                    f"This invitation was sent to {inv.email}. Sign in with that account "
                    "to accept it."
                )
            accepted = (
                update(Invitation)
                .where(Invitation.id == inv.id, self._pending(now))
                .values(accepted_at=now, accepted_by=user_id)
            )
            if not await consume_once(s, accepted):  # a concurrent accept or revoke won
                raise InvitationInvalid()
            instance_id = inv.instance_id
            if await s.get(InstanceMember, (user_id, instance_id)) is None:
                s.add(InstanceMember(user_id=user_id, instance_id=instance_id, created_at=now))
        _log.info("invitation %d accepted by user %d", inv.id, user_id)
        return instance_id

    # ------------------------------------------------------------- app links

    async def create_app_link(
        self, owner_id: int, instance_id: str, name: str
    ) -> tuple[str, AppLink]:
        """A new app link: ``(host label, row)``; the label is returned once, never stored."""
        clean = display_name(name, APP_LINK_NAME_MAX)
        now = self._now()
        label = new_app_link_label()
        async with self._db.session(write=True) as s, s.begin():
            await self._owned(s, owner_id, instance_id)
            count = await s.scalar(
                select(func.count()).select_from(AppLink).where(AppLink.instance_id == instance_id)
            )
            if (count or 0) >= MAX_APP_LINKS:
                raise ValueError(f"A home can have at most {MAX_APP_LINKS} app links.")
            row = AppLink(
                instance_id=instance_id,
                label_hash=sha256_hex(label),
                name=clean,
                created_by=owner_id,
                created_at=now,
                last_used_at=None,
            )
            s.add(row)
        _log.info("app link %d created on instance %s", row.id, instance_id)
        return label, row

    async def app_links(self, instance_id: str) -> list[AppLink]:
        """The instance's app links, oldest first."""
        async with self._db.session() as s:
            rows = await s.scalars(
                select(AppLink)
                .where(AppLink.instance_id == instance_id)
                .order_by(AppLink.created_at, AppLink.id)
            )
            return list(rows)

    async def revoke_app_link(self, owner_id: int, instance_id: str, link_id: int) -> bool:
        """Delete an app link; ``True`` if it existed. The relay closes its streams."""
        async with self._db.session(write=True) as s, s.begin():
            await self._owned(s, owner_id, instance_id)
            result = await s.execute(
                delete(AppLink).where(AppLink.id == link_id, AppLink.instance_id == instance_id)
            )
        revoked = rowcount(result) == 1
        if revoked:
            _log.info("app link %d revoked on instance %s", link_id, instance_id)
        return revoked

    async def resolve_app_link(self, label: str) -> AppLinkAccess | None:
        """The live app link behind a host label, or ``None`` (deny by default)."""
        if not is_app_link_label(label):
            return None
        async with self._db.session() as s:
            found = (
                await s.execute(
                    select(AppLink.id, AppLink.instance_id)
                    .join(Instance, Instance.id == AppLink.instance_id)
                    .join(User, User.id == Instance.owner_id)
                    .where(AppLink.label_hash == sha256_hex(label), User.disabled.is_(False))
                )
            ).one_or_none()
        if found is None:
            return None
        return AppLinkAccess(link_id=found[0], instance_id=found[1])

    async def touch_app_link(self, link_id: int) -> None:
        """Record a use of the link, writing at most once per :data:`LAST_USE_INTERVAL`."""
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            await s.execute(
                update(AppLink)
                .where(
                    AppLink.id == link_id,
                    or_(
                        AppLink.last_used_at.is_(None),
                        AppLink.last_used_at <= now - LAST_USE_INTERVAL,
                    ),
                )
                .values(last_used_at=now)
            )

    # ---------------------------------------------------------- 2FA policy

    async def requires_second_factor(self, instance_id: str) -> bool:
        async with self._db.session() as s:
            value = await s.scalar(
                select(InstancePolicy.require_second_factor).where(
                    InstancePolicy.instance_id == instance_id
                )
            )
        return bool(value)

    async def set_require_second_factor(
        self, owner_id: int, instance_id: str, required: bool, *, session_id: int
    ) -> list[int]:
        """Turn the policy on or off; the ids of the tenant sessions it ended.

        Turning it on needs ``session_id`` (the owner's current account session)
        to have used a second factor, else :class:`AccessDenied`.
        """
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            await self._owned(s, owner_id, instance_id)
            ended: list[int] = []
            if required:
                used = await s.scalar(
                    select(WebSession.second_factor).where(
                        WebSession.id == session_id, WebSession.user_id == owner_id
                    )
                )
                if not used or not await _has_totp(s, owner_id):
                    raise AccessDenied(
                        "Turn on two-step verification for your own account and sign in "
                        "with it first."
                    )
                weak = and_(
                    WebSession.instance_id == instance_id,
                    WebSession.second_factor.is_(False),
                    WebSession.revoked_at.is_(None),
                )
                ended = list(await s.scalars(select(WebSession.id).where(weak)))
                await s.execute(update(WebSession).where(weak).values(revoked_at=now))
                await s.execute(
                    delete(HandoffCode).where(
                        HandoffCode.instance_id == instance_id, HandoffCode.used_at.is_(None)
                    )
                )
            policy = await s.get(InstancePolicy, instance_id)
            if policy is None:
                s.add(
                    InstancePolicy(
                        instance_id=instance_id, require_second_factor=required, updated_at=now
                    )
                )
            else:
                policy.require_second_factor = required
                policy.updated_at = now
        _log.info(
            "instance %s: second factor %s (%d sessions ended)",
            instance_id,
            "required" if required else "optional",
            len(ended),
        )
        return ended

    async def second_factor_ok(self, user_id: int, instance_id: str, session_id: int) -> bool:
        """Whether this account session may open the instance under its 2FA policy."""
        async with self._db.session() as s:
            required = await s.scalar(
                select(InstancePolicy.require_second_factor).where(
                    InstancePolicy.instance_id == instance_id
                )
            )
            if not required:
                return True
            used = await s.scalar(
                select(WebSession.second_factor).where(
                    WebSession.id == session_id, WebSession.user_id == user_id
                )
            )
            return bool(used) and await _has_totp(s, user_id)


async def _has_totp(s: AsyncSession, user_id: int) -> bool:
    found = await s.scalar(
        select(TotpCredential.user_id).where(
            TotpCredential.user_id == user_id, TotpCredential.enabled_at.is_not(None)
        )
    )
    return found is not None
