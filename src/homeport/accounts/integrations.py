"""Per home: may integrations on the internet reach Home Assistant without a Homeport session?

Two switches, both off by default: **webhooks** (``/api/webhook/<id>``) and
**voice assistants** (Alexa's and Google's smart-home endpoints and the
OAuth token endpoint their account linking refreshes against).  The relay
lets exactly those paths through when a switch is on
(:mod:`homeport.relay.integration_paths`); Home Assistant's own credentials
(the webhook id, its access tokens) are then the lock.

Threats this stops:

* **A member or a stranger opening the home to the internet.** Only the
  owner can change the switches (anyone else: "no such home"), and every
  change is an audit event.
* **Reading secrets out of the audit log.** A call through an integration is
  recorded as metadata only (:meth:`IntegrationSettings.record_call`): the kind
  of path, the time and the caller's address; never the webhook id (it *is*
  the webhook's password), a token or a body.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from homeport.accounts.audit import Audit, register_event_type
from homeport.accounts.db import Database
from homeport.accounts.errors import UnknownInstance
from homeport.accounts.identifiers import is_instance_id
from homeport.accounts.models import Instance, InstanceIntegrations

__all__ = ["CALL_EVENT", "CHANGED_EVENT", "IntegrationSettings", "Switches"]

CHANGED_EVENT: Final = "integrations.changed"
CALL_EVENT: Final = "integrations.call"
register_event_type(CHANGED_EVENT, "Integrations switched")
register_event_type(CALL_EVENT, "Integration call")


@dataclass(frozen=True, slots=True)
class Switches:
    """A home's integration switches (both off unless its owner turned one on)."""

    webhooks: bool = False
    voice: bool = False

    def describe(self) -> str:
        """The audit detail of a change: what is on now."""
        on = [name for name, value in (("webhooks", self.webhooks), ("voice", self.voice)) if value]
        return "on: " + ", ".join(on) if on else "all off"


class IntegrationSettings:
    """The switches of every home, over one :class:`Database`."""

    def __init__(self, db: Database, audit: Audit, *, now: Callable[[], datetime]) -> None:
        self._db = db
        self._audit = audit
        self._now = now

    async def get(self, instance_id: str) -> Switches:
        """A home's switches; off for a home without a row (and for no home at all)."""
        if not is_instance_id(instance_id):
            return Switches()
        async with self._db.session() as s:
            row = await s.get(InstanceIntegrations, instance_id)
        return Switches(row.webhooks, row.voice) if row is not None else Switches()

    async def set(
        self,
        owner_id: int,
        instance_id: str,
        switches: Switches,
        *,
        ip: str = "",
        user_agent: str = "",
        session_id: int | None = None,
    ) -> Switches:
        """Change a home's switches as its owner; the switches as they were before.

        Raises :class:`UnknownInstance` unless ``owner_id`` owns the home.
        Audited (with the owner's address and device) when something changed.
        """
        async with self._db.session(write=True) as s, s.begin():
            instance = await s.get(Instance, instance_id) if is_instance_id(instance_id) else None
            if instance is None or instance.owner_id != owner_id:
                raise UnknownInstance("No such home.")
            row = await s.get(InstanceIntegrations, instance_id)
            before = Switches(row.webhooks, row.voice) if row is not None else Switches()
            if row is None:
                s.add(
                    InstanceIntegrations(
                        instance_id=instance_id,
                        webhooks=switches.webhooks,
                        voice=switches.voice,
                        updated_at=self._now(),
                    )
                )
            else:
                row.webhooks = switches.webhooks
                row.voice = switches.voice
                row.updated_at = self._now()
        if before != switches:
            await self._audit.record(
                CHANGED_EVENT,
                user_id=owner_id,
                instance_id=instance_id,
                ip=ip,
                user_agent=user_agent,
                session_id=session_id,
                detail=switches.describe(),
            )
        return before

    async def record_call(self, instance_id: str, path_kind: str, ip: str) -> None:
        """An audit event for a call through an integration: its kind, time and address only."""
        await self._audit.record(
            CALL_EVENT, instance_id=instance_id, ip=ip, device="integration", detail=path_kind
        )

    @staticmethod
    async def delete_instance_rows(s: AsyncSession, instance_id: str) -> None:
        """Delete the switches of a home being unlinked (in the caller's transaction)."""
        await s.execute(
            delete(InstanceIntegrations).where(InstanceIntegrations.instance_id == instance_id)
        )
