"""The one tenant-isolation check and the roles on a home, for use inside a caller's transaction.

Two roles (deny by default: an account with neither may do nothing with a home):

* **owner** (``instances.owner_id``): opens the home and manages it: invites,
  removes people, makes app links, changes its settings, unlinks it, hands it
  over to a member;
* **member** (a row in ``instance_members``): opens the home, nothing more. A
  membership may carry an end date (``expires_at``): from that moment it opens
  nothing, whether or not the relay's sweep has deleted it yet.

What each role may do is :data:`PERMISSIONS`; the stores check it
(:mod:`homeport.accounts.sharing`), not only the pages.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

from sqlalchemy import ColumnElement, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from homeport.accounts.models import Instance, InstanceMember, User

__all__ = [
    "PERMISSIONS",
    "Action",
    "Role",
    "can_access_in",
    "live_membership",
    "role_in",
]

Role = Literal["owner", "member"]
Action = Literal[
    "open",
    "rename",
    "unlink",
    "invite",
    "remove_member",
    "set_member_end",
    "app_links",
    "settings",
    "transfer",
]

#: What each role may do with a home; anything not listed is refused.
PERMISSIONS: Final[dict[Role, frozenset[Action]]] = {
    "owner": frozenset(
        {
            "open",
            "rename",
            "unlink",
            "invite",
            "remove_member",
            "set_member_end",
            "app_links",
            "settings",
            "transfer",
        }
    ),
    "member": frozenset({"open"}),
}


def live_membership(now: datetime) -> ColumnElement[bool]:
    """A membership row that has not reached its end date."""
    return or_(InstanceMember.expires_at.is_(None), InstanceMember.expires_at > now)


async def role_in(s: AsyncSession, user_id: int, instance_id: str, *, now: datetime) -> Role | None:
    """The enabled account's role on the instance, or ``None`` (deny by default)."""
    owner = await s.scalar(
        select(Instance.owner_id)
        .join(User, User.id == user_id)
        .where(Instance.id == instance_id, User.disabled.is_(False))
    )
    if owner is None:
        return None
    if owner == user_id:
        return "owner"
    member = await s.scalar(
        select(InstanceMember.user_id).where(
            InstanceMember.user_id == user_id,
            InstanceMember.instance_id == instance_id,
            live_membership(now),
        )
    )
    return "member" if member is not None else None


async def can_access_in(s: AsyncSession, user_id: int, instance_id: str, *, now: datetime) -> bool:
    """Whether an enabled account owns or is a (not ended) member of the instance."""
    member = exists().where(
        InstanceMember.user_id == user_id,
        InstanceMember.instance_id == Instance.id,
        live_membership(now),
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
