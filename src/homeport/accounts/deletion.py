"""Deleting an account: by its owner (GDPR art. 17) or by the relay's operator.

One operation for both (:meth:`AccountDeletion.delete`); the account site asks
for re-authentication first, ``homeport admin user delete`` for ``--yes``.

What it does, and which threat each step stops:

* **The homes the account owns are unlinked** (:meth:`Instances.unlink`): their
  members, sessions, invitations, app links and policy go and their names are
  retired (R-MT-13), so nobody reaches a deleted person's home and an old
  address never opens someone else's. The caller closes their tunnels at once
  (the add-on is told "unlinked" by its tunnel closing and gets a link code on
  its next dial, as with any unlink).
* **Memberships in other people's homes are removed**
  (:meth:`Instances.remove_member`), which the owners see in their audit log.
* **Every session ends** and every row that names the account is deleted, in
  one transaction: whatever table refers to ``users.id`` (sessions, codes,
  factors, identities, known devices, pending changes...), found from the schema
  itself so a table added later cannot be forgotten; references that must
  outlive it (who accepted an invitation) are set to ``NULL``. App links the
  account created on homes that are now someone else's go too. The caller cuts
  the live traffic of the ended sessions and app links
  (:class:`Deleted` lists them).
* **What is kept, and how long** (docs/security.md, "Privacy"): the audit
  events, metadata only, until the 180-day purge, with an ``account.deleted``
  (or ``account.deleted_by_operator``) event of their own, so abuse can still
  be traced; throttle counters keyed by the address's SHA-256, until their
  one-day prune. Nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Column, Table, delete, or_, select, update

from homeport.accounts.audit import Audit, register_event_type
from homeport.accounts.db import Database
from homeport.accounts.errors import AccountsError, UnknownUser
from homeport.accounts.instances import Instances
from homeport.accounts.models import (
    AppLink,
    Base,
    Instance,
    InstanceMember,
    PendingSignup,
    User,
    WebSession,
)

__all__ = ["ACCOUNT_DELETED", "ACCOUNT_DELETED_BY_OPERATOR", "AccountDeletion", "Deleted"]

_log = logging.getLogger(__name__)

ACCOUNT_DELETED: Final = "account.deleted"
ACCOUNT_DELETED_BY_OPERATOR: Final = "account.deleted_by_operator"
register_event_type(ACCOUNT_DELETED, "Account deleted by its owner")
register_event_type(ACCOUNT_DELETED_BY_OPERATOR, "Account deleted by the relay's operator")
#: The ``device`` column of the operator's audit events.
OPERATOR_DEVICE: Final = "Relay operator (command line)"


@dataclass(frozen=True, slots=True)
class Deleted:
    """What a deletion ended, for the relay to cut at once (and to report)."""

    user_id: int
    email: str
    #: Homes the account owned, now unlinked: close their tunnels.
    homes: tuple[str, ...]
    #: Other people's homes the account could open.
    memberships: tuple[str, ...]
    #: Sessions that were live: cut their open traffic.
    sessions: tuple[int, ...]
    #: App links that died with the homes or with the account: cut their traffic.
    app_links: tuple[int, ...]


def _user_references() -> list[tuple[Table, Column[Any]]]:
    """Every (table, column) with a foreign key to ``users.id``, except a home's owner."""
    return [
        (table, column)
        for table in Base.metadata.sorted_tables
        if table.name != Instance.__tablename__
        for column in table.columns
        if any(key.target_fullname == "users.id" for key in column.foreign_keys)
    ]


class AccountDeletion:
    """Deletes accounts over the same database, clock and audit log as the other stores."""

    def __init__(
        self, db: Database, instances: Instances, audit: Audit, *, now: Callable[[], datetime]
    ) -> None:
        self._db = db
        self._instances = instances
        self._audit = audit
        self._now = now

    async def owned_homes(self, user_id: int) -> list[str]:
        async with self._db.session() as s:
            return list(await s.scalars(select(Instance.id).where(Instance.owner_id == user_id)))

    async def delete(
        self,
        user_id: int,
        *,
        by_operator: bool = False,
        ip: str | None = None,
        user_agent: str = "",
    ) -> Deleted:
        """Delete the account (see the module docstring); :class:`UnknownUser` if none."""
        async with self._db.session() as s:
            user = await s.get(User, user_id)
            if user is None:
                raise UnknownUser("No such account.")
            email = user.email
            homes = list(await s.scalars(select(Instance.id).where(Instance.owner_id == user_id)))
            memberships = list(
                await s.scalars(
                    select(InstanceMember.instance_id).where(InstanceMember.user_id == user_id)
                )
            )
            links = set(
                await s.scalars(
                    select(AppLink.id).where(
                        or_(AppLink.instance_id.in_(homes), AppLink.created_by == user_id)
                    )
                )
            )
        sessions = set()
        for instance_id in memberships:
            sessions |= await self._live_sessions(user_id, instance_id)
            await self._instances.remove_member(instance_id, user_id)
        for instance_id in homes:
            sessions |= await self._live_sessions(None, instance_id)
            await self._instances.unlink(instance_id)
        async with self._db.session(write=True) as s, s.begin():
            if await s.scalar(select(Instance.id).where(Instance.owner_id == user_id)):
                # A home linked to the account while it was being deleted.
                raise AccountsError("A home was linked meanwhile; delete again.")
            sessions |= set(
                await s.scalars(
                    select(WebSession.id).where(
                        WebSession.user_id == user_id, WebSession.revoked_at.is_(None)
                    )
                )
            )
            # Sessions first and explicitly: correct even without ON DELETE CASCADE.
            await s.execute(delete(WebSession).where(WebSession.user_id == user_id))
            for table, column in _user_references():
                if any(key.ondelete == "SET NULL" for key in column.foreign_keys):
                    await s.execute(
                        update(table).where(column == user_id).values({column.key: None})
                    )
                else:
                    await s.execute(delete(table).where(column == user_id))
            await s.execute(delete(PendingSignup).where(PendingSignup.email == email))
            await s.execute(delete(User).where(User.id == user_id))
        _log.info(
            "account deleted%s: user %d (%d homes unlinked, %d memberships)",
            " by the operator" if by_operator else "",
            user_id,
            len(homes),
            len(memberships),
        )
        await self._audit.record(
            ACCOUNT_DELETED_BY_OPERATOR if by_operator else ACCOUNT_DELETED,
            user_id=user_id,
            ip=ip,
            user_agent=user_agent,
            device=OPERATOR_DEVICE if by_operator else None,
            detail=f"{len(homes)} home(s) unlinked, {len(memberships)} membership(s) ended",
        )
        return Deleted(
            user_id,
            email,
            tuple(homes),
            tuple(memberships),
            tuple(sorted(sessions)),
            tuple(sorted(links)),
        )

    async def _live_sessions(self, user_id: int | None, instance_id: str) -> set[int]:
        """Live tenant sessions on a home (of one account, or everyone's)."""
        condition = WebSession.instance_id == instance_id
        async with self._db.session() as s:
            query = select(WebSession.id).where(condition, WebSession.revoked_at.is_(None))
            if user_id is not None:
                query = query.where(WebSession.user_id == user_id)
            return set(await s.scalars(query))
