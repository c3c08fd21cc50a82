"""Homes (instances): linking an add-on by code, owners and members, unlinking.

Threats this stops (each method says which): linking someone else's add-on
by guessing or replaying a code (50 bits, 10 minutes, single use, stored
hashed), an old home's name coming back for someone else (R-MT-13: retired
ids), access that outlives its withdrawal (members' sessions end with it).
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, false, or_, select, update
from sqlalchemy.exc import IntegrityError

from homeport.accounts.access import can_access_in, live_membership
from homeport.accounts.alerts import OfflineAlerts
from homeport.accounts.audit import Audit, EventType
from homeport.accounts.db import Database
from homeport.accounts.errors import (
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
    normalise_email,
    normalise_link_code,
    sha256_hex,
)
from homeport.accounts.integrations import IntegrationSettings
from homeport.accounts.models import (
    INSTANCE_NAME_MAX,
    HandoffCode,
    Instance,
    InstanceMember,
    LinkCode,
    RetiredInstance,
    User,
    WebSession,
)
from homeport.accounts.sharing import Sharing, withdraw_in
from homeport.accounts.single_use import consume_once

__all__ = ["InstanceRow", "Instances"]

_log = logging.getLogger(__name__)


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
    #: For a listing by member: when that account's access ends (``None``: no end).
    member_until: datetime | None = None
    #: When the add-on's tunnel last dropped (the start of an outage while offline).
    last_disconnected_at: datetime | None = None


def _instance_name(name: str) -> str:
    clean = unicodedata.normalize("NFKC", name).strip()
    if not clean or len(clean) > INSTANCE_NAME_MAX:
        raise ValueError(f"Instance name must be 1 to {INSTANCE_NAME_MAX} characters.")
    if any(not ch.isprintable() for ch in clean):
        raise ValueError("Instance name must not contain control characters.")
    return clean


class Instances:
    """Instances, their members and link codes, over one :class:`Database`."""

    def __init__(
        self,
        db: Database,
        audit: Audit,
        *,
        now: Callable[[], datetime],
        link_code_lifetime: timedelta = timedelta(minutes=10),
    ) -> None:
        self._db = db
        self._audit = audit
        self._now = now
        self._link_code_lifetime = link_code_lifetime
        #: Told the add-on key of each home linked through this store (see :meth:`on_linked`).
        self._link_listeners: list[Callable[[str], None]] = []

    def on_linked(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(addon_public_key)`` after each link made through this store.

        The tunnel hub uses it to answer an add-on waiting for its link at once;
        a link made by another process (``homeport admin link``) reaches the hub
        through its database poll instead.  Listeners must not block or raise.
        """
        self._link_listeners.append(listener)

    async def can_access(self, user_id: int, instance_id: str) -> bool:
        """Whether an enabled account owns or is a member of the instance.

        The one tenant-isolation check; anything else (unknown user or
        instance, disabled account, not shared) is ``False``.
        """
        if not is_instance_id(instance_id):
            return False
        async with self._db.session() as s:
            return await can_access_in(s, user_id, instance_id, now=self._now())

    async def add_member(self, instance_id: str, user_id: int) -> None:
        """Allow an account on an instance (idempotent).

        Raises :class:`UnknownInstance` or :class:`UnknownUser`.
        """
        async with self._db.session(write=True) as s, s.begin():
            if await s.get(Instance, instance_id) is None:
                raise UnknownInstance("No such instance.")
            if await s.get(User, user_id) is None:
                raise UnknownUser("No such account.")
            now = self._now()
            member = await s.get(InstanceMember, (user_id, instance_id))
            if member is not None and member.expires_at is not None and member.expires_at <= now:
                # Ended, not yet swept: its old sessions must not come back with this one.
                await withdraw_in(s, user_id, instance_id, now)
                s.expunge(member)
                member = None
            if member is None:
                s.add(InstanceMember(user_id=user_id, instance_id=instance_id, created_at=now))
        _log.info("member added: user %d on instance %s", user_id, instance_id)
        await self._audit.record(EventType.MEMBER_ADDED, user_id=user_id, instance_id=instance_id)

    async def remove_member(self, instance_id: str, user_id: int) -> bool:
        """Withdraw an account's access and end its sessions on the instance."""
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            removed = await withdraw_in(s, user_id, instance_id, now)
        if removed:
            _log.info("member removed: user %d from instance %s", user_id, instance_id)
            await self._audit.record(
                EventType.MEMBER_REMOVED, user_id=user_id, instance_id=instance_id
            )
        return removed

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

    async def link(self, code: str, owner_email: str, name: str = "Home") -> Instance:
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
                used = LinkCode.use(
                    LinkCode.code_hash == code_hash, LinkCode.expires_at > now, at=now
                )
                if not await consume_once(s, used):
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
        await self._audit.record(
            EventType.INSTANCE_LINKED, user_id=owner.id, instance_id=instance.id
        )
        for listener in self._link_listeners:
            listener(instance.addon_public_key)
        return instance

    async def for_key(self, public_key_text: str) -> Instance | None:
        """The instance an add-on key is linked to (for the tunnel hub), or ``None``."""
        try:
            key = canonical_public_key(public_key_text)
        except ValueError:
            return None
        async with self._db.session() as s:
            return await s.scalar(select(Instance).where(Instance.addon_public_key == key))

    async def get(self, instance_id: str) -> Instance | None:
        """The instance with this id (tenant host label), or ``None``."""
        if not is_instance_id(instance_id):
            return None
        async with self._db.session() as s:
            return await s.get(Instance, instance_id)

    async def existing(self, instance_ids: Iterable[str]) -> set[str]:
        """Which of these homes still exist (the relay's sweep closes the others' tunnels)."""
        wanted = sorted({i for i in instance_ids if is_instance_id(i)})
        found: set[str] = set()
        async with self._db.session() as s:
            for first in range(0, len(wanted), 500):
                found |= set(
                    await s.scalars(
                        select(Instance.id).where(Instance.id.in_(wanted[first : first + 500]))
                    )
                )
        return found

    async def find(self, *, user_id: int | None = None) -> list[InstanceRow]:
        """All instances (admin), or those ``user_id`` owns or is a member of."""
        stmt = select(Instance, User.email, InstanceMember.expires_at).join(
            User, User.id == Instance.owner_id
        )
        if user_id is None:
            stmt = stmt.outerjoin(InstanceMember, false())
        else:
            stmt = stmt.outerjoin(
                InstanceMember,
                and_(
                    InstanceMember.instance_id == Instance.id,
                    InstanceMember.user_id == user_id,
                    live_membership(self._now()),
                ),
            ).where(or_(Instance.owner_id == user_id, InstanceMember.user_id.is_not(None)))
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
                    member_until=until,
                    last_disconnected_at=inst.last_disconnected_at,
                )
                for inst, email, until in rows
            ]

    async def mark_connected(self, instance_id: str) -> None:
        """Record that the instance's add-on has just connected."""
        await self.record_presence({instance_id: self._now()}, {})

    async def record_presence(
        self, connected: Mapping[str, datetime], disconnected: Mapping[str, datetime]
    ) -> None:
        """Write many homes' connect and disconnect times in one transaction.

        The relay gathers them (relay/presence.py) so that every add-on
        dialling back at once costs a few transactions, not one each.  A home
        deleted meanwhile is skipped.
        """
        rows: dict[str, dict[str, Any]] = {}
        for instance_id, at in connected.items():
            rows.setdefault(instance_id, {"id": instance_id})["last_connected_at"] = at
        for instance_id, at in disconnected.items():
            rows.setdefault(instance_id, {"id": instance_id})["last_disconnected_at"] = at
        if not rows:
            return
        async with self._db.session(write=True) as s, s.begin():
            ids = list(rows)
            known: set[str] = set()
            for start in range(0, len(ids), 1000):  # well under any engine's bound-parameter cap
                chunk = select(Instance.id).where(Instance.id.in_(ids[start : start + 1000]))
                known.update((await s.scalars(chunk)).all())
            # Grouped by the columns they set: one executemany per shape.
            shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for instance_id, row in rows.items():
                if instance_id in known:
                    shapes.setdefault(tuple(sorted(row)), []).append(row)
            for batch in shapes.values():
                await s.execute(update(Instance), batch)

    async def connected_before(self, cutoff: datetime) -> list[str]:
        """Homes recorded as connected whose tunnel came up before ``cutoff``.

        The cluster's presence sweep (relay/cluster/presence.py) checks these
        against the live directory: one that no node holds any more is stale.
        """
        stmt = select(Instance.id).where(
            Instance.last_connected_at.is_not(None),
            Instance.last_connected_at < cutoff,
            or_(
                Instance.last_disconnected_at.is_(None),
                Instance.last_disconnected_at < Instance.last_connected_at,
            ),
        )
        async with self._db.session() as s:
            return list((await s.scalars(stmt)).all())

    async def mark_disconnected_many(self, instance_ids: Sequence[str]) -> None:
        """:meth:`mark_disconnected` for several homes at once (those no node holds)."""
        if not instance_ids:
            return
        now = self._now()
        ids = list(instance_ids)
        async with self._db.session(write=True) as s, s.begin():
            for start in range(0, len(ids), 1000):
                await s.execute(
                    update(Instance)
                    .where(Instance.id.in_(ids[start : start + 1000]))
                    .values(last_disconnected_at=now)
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

    async def unlink(self, instance_id: str) -> bool:
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
            await Sharing.delete_instance_rows(s, instance_id)
            await IntegrationSettings.delete_instance_rows(s, instance_id)
            await s.execute(OfflineAlerts.delete_for(instance_id))
            s.add(RetiredInstance(id=instance_id, retired_at=self._now()))
            owner_id = instance.owner_id
            await s.delete(instance)
        _log.info("instance %s unlinked", instance_id)
        await self._audit.record(
            EventType.INSTANCE_UNLINKED, user_id=owner_id, instance_id=instance_id
        )
        return True
