"""Offline alerts: the owner's opt-in mail when a home stays offline, and when it is back.

The hub records every connect and disconnect in the instance row
(``last_connected_at`` / ``last_disconnected_at``); this store keeps the owner's
choice (after how many minutes) and where each outage is, so the relay's
housekeeping mails exactly once when an outage outlasts the chosen time and
once when that home is back (:meth:`OfflineAlerts.due`).  A drop shorter than
the chosen time sends nothing, and nothing is ever mailed twice for one
outage, so a flapping home cannot flood its owner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import Delete, delete, select, update

from homeport.accounts.db import Database
from homeport.accounts.errors import UnknownInstance
from homeport.accounts.models import Instance, OfflineAlert, User

__all__ = ["AFTER_CHOICES", "OfflineAlerts", "Outage"]

#: What an owner may choose (minutes): short drops (an update, a restart) stay quiet.
AFTER_CHOICES: Final = (5, 15, 60, 240)


@dataclass(frozen=True, slots=True)
class Outage:
    """A home whose owner is to be mailed: offline ``since``, or back at ``back_at``."""

    instance_id: str
    name: str
    owner_email: str
    since: datetime
    back_at: datetime | None = None


class OfflineAlerts:
    def __init__(self, db: Database, *, now: Callable[[], datetime]) -> None:
        self._db = db
        self._now = now

    async def after(self, instance_id: str) -> int | None:
        """The owner's chosen delay in minutes, or ``None`` when alerts are off."""
        async with self._db.session() as s:
            row = await s.get(OfflineAlert, instance_id)
        return None if row is None else row.after_minutes

    async def choose(self, owner_id: int, instance_id: str, after: int | None) -> None:
        """Turn alerts on (after ``after`` minutes, one of :data:`AFTER_CHOICES`) or off.

        Raises :class:`UnknownInstance` unless ``owner_id`` owns the home.
        """
        if after is not None and after not in AFTER_CHOICES:
            raise ValueError("Choose one of the offered times.")
        async with self._db.session(write=True) as s, s.begin():
            owner = await s.scalar(select(Instance.owner_id).where(Instance.id == instance_id))
            if owner is None or owner != owner_id:
                raise UnknownInstance("no such instance")
            row = await s.get(OfflineAlert, instance_id)
            if after is None:
                if row is not None:
                    await s.delete(row)
            elif row is None:
                s.add(OfflineAlert(instance_id=instance_id, after_minutes=after))
            else:
                row.after_minutes = after

    async def due(self) -> tuple[list[Outage], list[Outage]]:
        """Homes to mail now: (offline for longer than chosen, not mailed yet;
        back online after an outage that was mailed)."""
        now = self._now()
        gone: list[Outage] = []
        back: list[Outage] = []
        async with self._db.session() as s:
            rows = await s.execute(
                select(OfflineAlert, Instance, User.email)
                .join(Instance, Instance.id == OfflineAlert.instance_id)
                .join(User, User.id == Instance.owner_id)
            )
            for alert, inst, email in rows:
                down = inst.last_disconnected_at
                if not inst.connected and down is not None:
                    late = now - down >= timedelta(minutes=alert.after_minutes)
                    if late and (alert.alerted_at is None or alert.alerted_at < down):
                        gone.append(Outage(inst.id, inst.name, email, down))
                elif inst.connected and alert.alerted_at is not None and down is not None:
                    back.append(Outage(inst.id, inst.name, email, down, inst.last_connected_at))
        return gone, back

    async def mailed(self, instance_id: str, *, offline: bool) -> None:
        """The offline mail went out (the outage is marked), or the back-online one did."""
        async with self._db.session(write=True) as s, s.begin():
            await s.execute(
                update(OfflineAlert)
                .where(OfflineAlert.instance_id == instance_id)
                .values(alerted_at=self._now() if offline else None)
            )

    @staticmethod
    def delete_for(instance_id: str) -> Delete:
        """The statement removing a home's alert (its unlinking does it explicitly)."""
        return delete(OfflineAlert).where(OfflineAlert.instance_id == instance_id)
