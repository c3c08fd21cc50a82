"""Sharing a home: owner actions, invitations, app links, end dates, hand-over, 2FA policy.

Every method that changes an instance takes the acting account and checks its
role there against :data:`~homeport.accounts.access.PERMISSIONS`: the *owner*
manages the home, a *member* may only open it. A member asking to manage gets
:class:`NotOwner` (they know the home exists: they can open it); anyone else
gets :class:`UnknownInstance`, the same as for a home that does not exist, so
ids cannot be probed through these pages.

Threats and rules:

* **A member managing a home** (privilege escalation between the two roles):
  the role is read in the same transaction as the change, from the database,
  never from the page; an ended membership has no role at all.
* **Access that outlives its end date.** A membership's ``expires_at`` and an
  app link's are checked by every query that grants access
  (:func:`~homeport.accounts.access.live_membership`, :func:`_link_live`), so
  from that instant a new request, sign-in, hand-off or app-link lookup is
  refused whatever the sweep did; :meth:`Sharing.end_expired` (the relay's
  5 s sweep) then deletes them, ends the member's sessions there like a
  removal, and reports them so the relay cuts their open traffic. Each row is
  ended, and audited, by exactly one relay process (row-count checked delete).
  An ended membership brought back by a new invitation starts from nothing:
  its old sessions stay ended.
* **Hand-over by anyone but the owner, or to the wrong person.** Only the
  owner may transfer, only to a current (not ended) member with an enabled
  account, in one transaction whose ``UPDATE … WHERE owner_id = <owner>`` makes
  two concurrent hand-overs impossible (the second finds no row). The old
  owner stays a member; sessions are unchanged.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final, Literal

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from homeport.accounts.access import PERMISSIONS, Action, Role, live_membership, role_in
from homeport.accounts.audit import Audit, EventType
from homeport.accounts.db import Database
from homeport.accounts.errors import AccessDenied, AccountsError, NotOwner, UnknownInstance
from homeport.accounts.identifiers import (
    ROUTING_PREFIX,
    is_instance_id,
    new_token,
    normalise_email,
    sha256_hex,
)
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
from homeport.accounts.sessions import revoke_stmt
from homeport.accounts.single_use import consume_once, rowcount

if TYPE_CHECKING:
    from homeport.accounts.instances import Instances

__all__ = [
    "APP_LINK_LABEL_LENGTH",
    "MAX_APP_LINKS",
    "MAX_PENDING_INVITATIONS",
    "AppLinkAccess",
    "Expired",
    "InvitationInvalid",
    "InvitationRow",
    "InvitationView",
    "MemberRow",
    "Sharing",
    "WrongAccount",
    "display_name",
    "is_app_link_label",
    "new_app_link_label",
    "withdraw_in",
]

_log = logging.getLogger(__name__)

APP_LINK_SECRET_BYTES: Final = 15  # 120 bits, after the home's routing prefix
APP_LINK_LABEL_LENGTH: Final = 32
_APP_LINK_LABEL = re.compile(r"[a-z2-7]{32}")
MAX_APP_LINKS: Final = 20
MAX_PENDING_INVITATIONS: Final = 50
MAX_INVITATION_LIFETIME: Final = timedelta(days=90)
LAST_USE_INTERVAL: Final = timedelta(minutes=1)
#: The furthest end date a membership or an app link may be given.
MAX_END: Final = timedelta(days=3660)
#: Most memberships (and, apart, app links) one :meth:`Sharing.end_expired` ends.
END_BATCH: Final = 500
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


def new_app_link_label(instance_id: str) -> str:
    """A fresh app-link host label: 32 characters of lower-case base32.

    The first :data:`ROUTING_PREFIX` are the home's own (its tenant label's), so
    that in a cluster HAProxy sends the app link to the node that holds the home's
    tunnel (``cluster_local/haproxy.py`` hashes only those characters); the other
    24 are 120 random bits, the secret.  The prefix tells nothing that the link's
    holder does not already reach through it.
    """
    secret = base64.b32encode(secrets.token_bytes(APP_LINK_SECRET_BYTES)).decode("ascii").lower()
    return instance_id[:ROUTING_PREFIX] + secret


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
    #: When the membership ends by itself; ``None``: until removed.
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Expired:
    """What reached its end date and was just ended (for the relay to cut)."""

    #: ``(user id, instance id)`` of each membership that ended.
    members: tuple[tuple[int, str], ...] = ()
    #: ``(link id, instance id)`` of each app link that ended.
    app_links: tuple[tuple[int, str], ...] = ()


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

    def __init__(
        self,
        db: Database,
        instances: Instances,
        *,
        now: Callable[[], datetime],
        audit: Audit | None = None,
    ) -> None:
        self._db = db
        self._instances = instances
        self._now = now
        self._audit = audit

    # ------------------------------------------------------------- roles

    async def _allowed(
        self, s: AsyncSession, user_id: int, instance_id: str, action: Action
    ) -> Instance:
        """The instance if the account's role there allows ``action`` (:data:`PERMISSIONS`).

        A member asking for more than opening it: :class:`NotOwner`. No role (a
        stranger, an ended membership, a disabled account) or no such home: the
        same :class:`UnknownInstance`.
        """
        instance = await s.get(Instance, instance_id) if is_instance_id(instance_id) else None
        role = None if instance is None else await role_in(s, user_id, instance_id, now=self._now())
        if instance is None or role is None:
            raise UnknownInstance("No such home.")
        if action not in PERMISSIONS[role]:
            raise NotOwner()
        return instance

    async def owned_instance(
        self, owner_id: int, instance_id: str, action: Action = "settings"
    ) -> Instance:
        """The instance if ``owner_id`` may do ``action`` there (the owner).

        :class:`NotOwner` for a member, :class:`UnknownInstance` for anyone else.
        """
        async with self._db.session() as s:
            return await self._allowed(s, owner_id, instance_id, action)

    async def role(self, user_id: int, instance_id: str) -> Role | None:
        """The account's role on the instance: ``"owner"``, ``"member"`` or ``None``."""
        if not is_instance_id(instance_id):
            return None
        async with self._db.session() as s:
            return await role_in(s, user_id, instance_id, now=self._now())

    async def rename(self, owner_id: int, instance_id: str, name: str) -> str:
        """Rename an instance; the clean name. :class:`ValueError` for a bad one."""
        clean = display_name(name, 64)
        async with self._db.session(write=True) as s, s.begin():
            instance = await self._allowed(s, owner_id, instance_id, "rename")
            instance.name = clean
        _log.info("instance %s renamed by user %d", instance_id, owner_id)
        return clean

    async def unlink(self, owner_id: int, instance_id: str) -> bool:
        """Unlink (delete) an instance its owner asks to; the relay closes its tunnel."""
        await self.owned_instance(owner_id, instance_id, "unlink")
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
                select(
                    InstanceMember.user_id,
                    User.email,
                    InstanceMember.created_at,
                    InstanceMember.expires_at,
                )
                .join(User, User.id == InstanceMember.user_id)
                .where(InstanceMember.instance_id == instance_id, live_membership(self._now()))
                .order_by(InstanceMember.created_at, InstanceMember.user_id)
            )
            return [MemberRow(uid, email, since, until) for uid, email, since, until in rows]

    async def remove_member(self, owner_id: int, instance_id: str, user_id: int) -> bool:
        """Withdraw a member's access (and end their sessions there) at the owner's request."""
        await self.owned_instance(owner_id, instance_id, "remove_member")
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
            instance = await self._allowed(s, owner_id, instance_id, "invite")
            owner_email = await s.scalar(select(User.email).where(User.id == instance.owner_id))
            if owner_email == normal:
                raise ValueError("You own this home already.")
            member = await s.scalar(
                select(InstanceMember.user_id)
                .join(User, User.id == InstanceMember.user_id)
                .where(
                    InstanceMember.instance_id == instance_id,
                    User.email == normal,
                    live_membership(now),
                )
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
            await self._allowed(s, owner_id, instance_id, "invite")
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
            member = await s.get(InstanceMember, (user_id, instance_id))
            if member is not None and member.expires_at is not None and member.expires_at <= now:
                # Ended, not yet swept: end it properly first, so that sessions from
                # the old membership do not come back to life with the new one.
                await withdraw_in(s, user_id, instance_id, now)
                s.expunge(member)
                member = None
            if member is None:
                s.add(InstanceMember(user_id=user_id, instance_id=instance_id, created_at=now))
        _log.info("invitation %d accepted by user %d", inv.id, user_id)
        return instance_id

    # ------------------------------------------------------------- app links

    async def create_app_link(
        self, owner_id: int, instance_id: str, name: str, *, expires_at: datetime | None = None
    ) -> tuple[str, AppLink]:
        """A new app link: ``(host label, row)``; the label is returned once, never stored.

        ``expires_at``: when it stops working by itself (``None``: until revoked).
        """
        clean = display_name(name, APP_LINK_NAME_MAX)
        now = self._now()
        _check_end(expires_at, now)
        label = new_app_link_label(instance_id)
        async with self._db.session(write=True) as s, s.begin():
            await self._allowed(s, owner_id, instance_id, "app_links")
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
                expires_at=expires_at,
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
            await self._allowed(s, owner_id, instance_id, "app_links")
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
                    .where(
                        AppLink.label_hash == sha256_hex(label),
                        User.disabled.is_(False),
                        _link_live(self._now()),
                    )
                )
            ).one_or_none()
        if found is None:
            return None
        return AppLinkAccess(link_id=found[0], instance_id=found[1])

    async def live_app_link_ids(self, link_ids: Iterable[int]) -> set[int]:
        """Which of these app links still work (the relay's sweep cuts the others' traffic).

        A link revoked or deleted outside this process (an admin command, an
        account deletion), past its expiry, or whose owner's account was
        disabled, is not live.
        """
        wanted = sorted(set(link_ids))
        now = self._now()
        alive: set[int] = set()
        async with self._db.session() as s:
            for first in range(0, len(wanted), 500):
                alive |= set(
                    await s.scalars(
                        select(AppLink.id)
                        .join(Instance, Instance.id == AppLink.instance_id)
                        .join(User, User.id == Instance.owner_id)
                        .where(
                            AppLink.id.in_(wanted[first : first + 500]),
                            User.disabled.is_(False),
                            _link_live(now),
                        )
                    )
                )
        return alive

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

    # ------------------------------------------------- end dates and expiry

    async def set_member_end(
        self, owner_id: int, instance_id: str, user_id: int, until: datetime | None
    ) -> bool:
        """Give a membership an end date (``None``: none); ``True`` if the member exists.

        :class:`ValueError` for an end that is not in the future (to end access now,
        remove the member).
        """
        now = self._now()
        _check_end(until, now)
        async with self._db.session(write=True) as s, s.begin():
            await self._allowed(s, owner_id, instance_id, "set_member_end")
            result = await s.execute(
                update(InstanceMember)
                .where(
                    InstanceMember.user_id == user_id,
                    InstanceMember.instance_id == instance_id,
                    live_membership(now),
                )
                .values(expires_at=until)
            )
        changed = rowcount(result) == 1
        if changed:
            _log.info("member end set: user %d on instance %s", user_id, instance_id)
        return changed

    async def set_app_link_expiry(
        self, owner_id: int, instance_id: str, link_id: int, until: datetime | None
    ) -> bool:
        """Give an app link an expiry (``None``: none); ``True`` if the link exists."""
        now = self._now()
        _check_end(until, now)
        async with self._db.session(write=True) as s, s.begin():
            await self._allowed(s, owner_id, instance_id, "app_links")
            result = await s.execute(
                update(AppLink)
                .where(AppLink.id == link_id, AppLink.instance_id == instance_id, _link_live(now))
                .values(expires_at=until)
            )
        changed = rowcount(result) == 1
        if changed:
            _log.info("app link %d expiry set on instance %s", link_id, instance_id)
        return changed

    async def end_expired(self, *, limit: int = END_BATCH) -> Expired:
        """Delete memberships and app links past their end (the relay's sweep runs this).

        Each ended membership also loses its sessions and unused hand-off codes on
        that home, like a removal; each end is audited. At most ``limit`` of each
        per call (the rest next round). Every row is deleted with a row-count
        check, so with several relay processes each end is reported and audited
        once. The caller cuts the open traffic and drops its caches.
        """
        now = self._now()
        members: list[tuple[int, str]] = []
        links: list[tuple[int, str, int]] = []
        async with self._db.session(write=True) as s, s.begin():
            due_members = (
                await s.execute(
                    select(InstanceMember.user_id, InstanceMember.instance_id)
                    .where(InstanceMember.expires_at <= now)
                    .order_by(InstanceMember.expires_at)
                    .limit(limit)
                )
            ).all()
            for user_id, instance_id in due_members:
                if await withdraw_in(
                    s, user_id, instance_id, now, InstanceMember.expires_at <= now
                ):
                    members.append((user_id, instance_id))
            due_links = (
                await s.execute(
                    select(AppLink.id, AppLink.instance_id, Instance.owner_id)
                    .join(Instance, Instance.id == AppLink.instance_id)
                    .where(AppLink.expires_at <= now)
                    .order_by(AppLink.expires_at)
                    .limit(limit)
                )
            ).all()
            for link_id, instance_id, owner_id in due_links:
                gone = await s.execute(
                    delete(AppLink).where(AppLink.id == link_id, AppLink.expires_at <= now)
                )
                if rowcount(gone) == 1:
                    links.append((link_id, instance_id, owner_id))
        for user_id, instance_id in members:
            _log.info("membership ended on time: user %d on instance %s", user_id, instance_id)
            if self._audit is not None:
                await self._audit.record(
                    EventType.MEMBER_EXPIRED,
                    user_id=user_id,
                    instance_id=instance_id,
                    device="Homeport (end date reached)",
                )
        for link_id, instance_id, owner_id in links:
            _log.info("app link %d expired on instance %s", link_id, instance_id)
            if self._audit is not None:
                await self._audit.record(
                    EventType.APP_LINK_EXPIRED,
                    user_id=owner_id,
                    instance_id=instance_id,
                    device="Homeport (expiry reached)",
                    detail=f"app link {link_id}",
                )
        return Expired(
            tuple(members), tuple((link_id, instance_id) for link_id, instance_id, _ in links)
        )

    # ------------------------------------------------------------- ownership

    async def transfer(self, owner_id: int, instance_id: str, new_owner_id: int) -> None:
        """Hand the home over to one of its members; the old owner becomes a member.

        Only the owner may (:data:`PERMISSIONS`: :class:`NotOwner` for a member,
        :class:`UnknownInstance` for anyone else), only to a current member with
        an enabled account (:class:`ValueError` otherwise). One transaction, and
        the owner is changed by ``UPDATE … WHERE owner_id = <owner>`` first: of two
        concurrent hand-overs the second finds no row and changes nothing, so the
        home always has exactly one owner and no member is lost. The new owner's
        end date, if any, goes (an owner has none); sessions stay valid.
        """
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            await self._allowed(s, owner_id, instance_id, "transfer")
            if new_owner_id == owner_id:
                raise ValueError("You own this home already.")
            if await role_in(s, new_owner_id, instance_id, now=now) != "member":
                raise ValueError("Only a person who can open this home can become its owner.")
            moved = await s.execute(
                update(Instance)
                .where(Instance.id == instance_id, Instance.owner_id == owner_id)
                .values(owner_id=new_owner_id)
                .execution_options(synchronize_session=False)
            )
            if rowcount(moved) != 1:  # handed over meanwhile, by a concurrent request
                raise NotOwner()
            await s.execute(
                delete(InstanceMember).where(
                    InstanceMember.user_id.in_([new_owner_id, owner_id]),
                    InstanceMember.instance_id == instance_id,
                )
            )
            s.add(
                InstanceMember(
                    user_id=owner_id, instance_id=instance_id, created_at=now, expires_at=None
                )
            )
        _log.info(
            "instance %s handed over: user %d to user %d", instance_id, owner_id, new_owner_id
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
            await self._allowed(s, owner_id, instance_id, "settings")
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


async def withdraw_in(
    s: AsyncSession,
    user_id: int,
    instance_id: str,
    now: datetime,
    *also: ColumnElement[bool],
) -> bool:
    """Delete a membership and end its sessions and hand-off codes on that home, in the
    caller's transaction; ``True`` if this call deleted the row.

    ``also``: further conditions on the membership row (e.g. that it has ended);
    when it is not deleted, nothing else is touched.
    """
    gone = await s.execute(
        delete(InstanceMember).where(
            InstanceMember.user_id == user_id, InstanceMember.instance_id == instance_id, *also
        )
    )
    if rowcount(gone) != 1:
        return False
    await s.execute(
        revoke_stmt(now, and_(WebSession.user_id == user_id, WebSession.instance_id == instance_id))
    )
    await s.execute(
        delete(HandoffCode).where(
            HandoffCode.user_id == user_id, HandoffCode.instance_id == instance_id
        )
    )
    return True


def _check_end(until: datetime | None, now: datetime) -> None:
    if until is None:
        return
    if until.tzinfo is None or until.utcoffset() is None:
        raise ValueError("An end date needs a time zone.")
    if until <= now:
        raise ValueError("The end must be in the future.")
    if until > now + MAX_END:
        raise ValueError("The end can be at most ten years away.")


def _link_live(now: datetime) -> ColumnElement[bool]:
    return or_(AppLink.expires_at.is_(None), AppLink.expires_at > now)
