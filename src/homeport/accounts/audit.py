"""The audit log: who signed in, from where, and what changed, per account and per home.

Threats this helps with: an account taken over quietly (the owner sees
sign-ins, failed attempts and changes they did not make), and a home opened
by someone it was shared with in ways the owner did not expect (the owner of
a home sees events on it, whoever caused them).

Rules:

* **Metadata only.** An event holds its type, time, account, home, client
  address, a short device summary (never the raw ``User-Agent``), the factor
  used and a short detail text; never a password, code, token or relayed
  byte. Every event is also written as one structured log line (R-OPS-01).
* **Kept 180 days** (:data:`RETENTION`); :meth:`Audit.purge` deletes older
  events and the relay runs it hourly.
* **Extensible.** :class:`EventType` names the events of the core; other
  features add theirs with :func:`register_event_type` and pass the string.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from sqlalchemy import ColumnElement, delete, or_, select

from homeport.accounts.db import Database
from homeport.accounts.devices import describe_device, describe_network
from homeport.accounts.models import (
    AUDIT_DETAIL_MAX,
    AUDIT_DEVICE_MAX,
    AUDIT_FACTOR_MAX,
    AUDIT_KIND_MAX,
    IP_MAX,
    AuditEvent,
    Instance,
)
from homeport.accounts.single_use import rowcount

__all__ = [
    "RETENTION",
    "Audit",
    "EventType",
    "describe_event",
    "register_event_type",
    "to_csv",
]

_log = logging.getLogger(__name__)

RETENTION: Final = timedelta(days=180)
#: Most rows one CSV export carries (the newest ones); 180 days of a busy account fit.
EXPORT_LIMIT: Final = 20_000
_KIND: Final = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")


class EventType(StrEnum):
    SIGNIN_SUCCEEDED = "signin.succeeded"
    SIGNIN_FAILED = "signin.failed"
    SECOND_FACTOR_FAILED = "signin.second_factor_failed"
    SESSION_CREATED = "session.created"
    SESSION_REVOKED = "session.revoked"
    SIGNED_OUT = "session.signed_out"
    PASSWORD_CHANGED = "password.changed"  # noqa: S105 (an event name)
    PASSWORD_CHANGE_FAILED = "password.change_failed"  # noqa: S105
    TOTP_ENABLED = "factor.totp_enabled"
    TOTP_DISABLED = "factor.totp_disabled"
    RECOVERY_CODES_REGENERATED = "factor.recovery_codes_regenerated"
    PASSKEY_ADDED = "factor.passkey_added"
    PASSKEY_REMOVED = "factor.passkey_removed"
    ACCOUNT_DISABLED = "account.disabled"
    ACCOUNT_ENABLED = "account.enabled"
    INSTANCE_LINKED = "instance.linked"
    INSTANCE_UNLINKED = "instance.unlinked"
    MEMBER_ADDED = "instance.member_added"
    MEMBER_REMOVED = "instance.member_removed"
    INVITATION_SENT = "invitation.sent"
    INVITATION_ACCEPTED = "invitation.accepted"
    INVITATION_REVOKED = "invitation.revoked"
    APP_LINK_CREATED = "app_link.created"
    APP_LINK_REVOKED = "app_link.revoked"


_LABELS: dict[str, str] = {
    EventType.SIGNIN_SUCCEEDED: "Signed in",
    EventType.SIGNIN_FAILED: "Failed sign-in",
    EventType.SECOND_FACTOR_FAILED: "Wrong second-factor code",
    EventType.SESSION_CREATED: "New session",
    EventType.SESSION_REVOKED: "Session ended",
    EventType.SIGNED_OUT: "Signed out",
    EventType.PASSWORD_CHANGED: "Password changed",
    EventType.PASSWORD_CHANGE_FAILED: "Password change refused",
    EventType.TOTP_ENABLED: "Authenticator app turned on",
    EventType.TOTP_DISABLED: "Authenticator app turned off",
    EventType.RECOVERY_CODES_REGENERATED: "New recovery codes",
    EventType.PASSKEY_ADDED: "Passkey added",
    EventType.PASSKEY_REMOVED: "Passkey removed",
    EventType.ACCOUNT_DISABLED: "Account disabled",
    EventType.ACCOUNT_ENABLED: "Account enabled",
    EventType.INSTANCE_LINKED: "Home linked",
    EventType.INSTANCE_UNLINKED: "Home unlinked",
    EventType.MEMBER_ADDED: "Person added to a home",
    EventType.MEMBER_REMOVED: "Person removed from a home",
    EventType.INVITATION_SENT: "Invitation sent",
    EventType.INVITATION_ACCEPTED: "Invitation accepted",
    EventType.INVITATION_REVOKED: "Invitation withdrawn",
    EventType.APP_LINK_CREATED: "App link created",
    EventType.APP_LINK_REVOKED: "App link revoked",
}


def register_event_type(kind: str, label: str) -> None:
    """Let another feature record ``kind`` (``"area.what"``, lower case) with a page label."""
    if not _KIND.fullmatch(kind) or len(kind) > AUDIT_KIND_MAX:
        raise ValueError(f"audit event types look like 'area.what_happened', not {kind!r}")
    _LABELS.setdefault(kind, label)


def describe_event(kind: str) -> str:
    """The label shown on the audit page (the raw type for one nobody registered)."""
    return _LABELS.get(kind, kind)


def _clean(value: str, limit: int) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in value[:limit])


class Audit:
    """Records and reads audit events in the accounts database."""

    def __init__(self, db: Database, *, now: Callable[[], datetime]) -> None:
        self._db = db
        self._now = now

    async def record(
        self,
        kind: EventType | str,
        *,
        user_id: int | None = None,
        instance_id: str | None = None,
        ip: str | None = None,
        user_agent: str = "",
        factor: str | None = None,
        session_id: int | None = None,
        detail: str = "",
        device: str | None = None,
    ) -> None:
        """Store one event and log it. Never pass secrets in ``detail``.

        ``device`` names the device when there is no User-Agent to describe
        (e.g. "Homeport add-on panel" for a request over an add-on's tunnel).
        """
        kind = str(kind)
        if kind not in _LABELS:
            raise ValueError(f"unknown audit event type {kind!r}: register it first")
        event = AuditEvent(
            at=self._now(),
            kind=kind,
            user_id=user_id,
            instance_id=instance_id,
            ip=_clean(ip or "", IP_MAX),
            device=(
                _clean(device, AUDIT_DEVICE_MAX)
                if device is not None
                else describe_device(user_agent)[:AUDIT_DEVICE_MAX]
                if user_agent
                else ""
            ),
            factor=_clean(factor, AUDIT_FACTOR_MAX) if factor else None,
            session_id=session_id,
            detail=_clean(detail, AUDIT_DETAIL_MAX),
        )
        async with self._db.session(write=True) as s, s.begin():
            s.add(event)
        _log.info(
            "audit.%s",
            kind,
            extra={
                "audit": kind,
                "user": user_id,
                "instance": instance_id,
                "ip": event.ip or None,
                "device": event.device or None,
                "factor": factor,
                "session": session_id,
            },
        )

    @staticmethod
    def _visible_to(user_id: int) -> ColumnElement[bool]:
        owned = select(Instance.id).where(Instance.owner_id == user_id)
        return or_(AuditEvent.user_id == user_id, AuditEvent.instance_id.in_(owned))

    async def page(
        self,
        user_id: int,
        *,
        page: int = 0,
        per_page: int = 50,
        instance_id: str | None = None,
    ) -> tuple[list[AuditEvent], bool]:
        """Newest first: the account's events and those on homes it owns; ``(rows, more)``.

        ``instance_id``: only the events on that home, and only if the account
        owns it (otherwise nothing: a member does not see other people's visits).
        """
        page = max(0, page)
        condition = self._visible_to(user_id)
        if instance_id is not None:
            owned = select(Instance.id).where(
                Instance.id == instance_id, Instance.owner_id == user_id
            )
            condition = AuditEvent.instance_id.in_(owned)
        async with self._db.session() as s:
            rows = list(
                await s.scalars(
                    select(AuditEvent)
                    .where(condition)
                    .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
                    .offset(page * per_page)
                    .limit(per_page + 1)
                )
            )
        return rows[:per_page], len(rows) > per_page

    async def for_instance(self, instance_id: str, *, limit: int = 200) -> list[AuditEvent]:
        """The newest events on one home (for its owner)."""
        async with self._db.session() as s:
            return list(
                await s.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.instance_id == instance_id)
                    .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
                    .limit(limit)
                )
            )

    async def export(self, user_id: int) -> list[AuditEvent]:
        """What the CSV export carries: the newest :data:`EXPORT_LIMIT` visible events."""
        rows, _more = await self.page(user_id, per_page=EXPORT_LIMIT)
        return rows

    async def purge(self, *, keep: timedelta = RETENTION) -> int:
        """Delete events older than ``keep``; how many."""
        async with self._db.session(write=True) as s, s.begin():
            result = await s.execute(delete(AuditEvent).where(AuditEvent.at < self._now() - keep))
        return rowcount(result)


#: Spreadsheets run a cell that starts with one of these as a formula
#: (CSV injection, OWASP); a leading apostrophe makes it plain text.
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")

CSV_COLUMNS: Final = (
    "time_utc",
    "event",
    "type",
    "home",
    "ip",
    "network",
    "device",
    "factor",
    "detail",
)


def _cell(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_START) else value


def to_csv(events: Iterable[AuditEvent], home_names: dict[str, str]) -> str:
    """RFC 4180 CSV (``csv`` module quoting) with formula-looking cells defused."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for event in events:
        home = ""
        if event.instance_id is not None:
            home = home_names.get(event.instance_id, event.instance_id)
        writer.writerow(
            [
                _cell(value)
                for value in (
                    event.at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    describe_event(event.kind),
                    event.kind,
                    home,
                    event.ip,
                    describe_network(event.ip) if event.ip else "",
                    event.device,
                    event.factor or "",
                    event.detail,
                )
            ]
        )
    return out.getvalue()
