"""The one tenant-isolation check, for use inside a caller's transaction."""

from __future__ import annotations

from sqlalchemy import exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from homeport.accounts.models import Instance, InstanceMember, User

__all__ = ["can_access_in"]


async def can_access_in(s: AsyncSession, user_id: int, instance_id: str) -> bool:
    """Whether an enabled account owns or is a member of the instance (deny by default)."""
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
