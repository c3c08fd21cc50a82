"""Everything the relay holds about one account, as one JSON document (GDPR art. 15 and 20).

What it carries: the account, the homes it owns (with their members, invitations,
app links and policy), its memberships in other people's homes, its sessions
(ended ones too, until they are purged), its second factors, its sign-in
identities at OpenID providers, the browsers and networks it is known from, and
the audit events it may see (its own, and those on the homes it owns).

Threat this stops: the export becoming a way to steal the account or a home. It
never carries a secret or anything derived from one: no password hash, no
session or link token or their hashes, no TOTP seed or recovery code, no passkey
key material, no app-link host label (only its name and times). Pending codes
and links are left out for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from homeport.accounts.audit import Audit, describe_event
from homeport.accounts.db import Database
from homeport.accounts.errors import UnknownUser
from homeport.accounts.models import (
    AppLink,
    Instance,
    InstanceMember,
    InstancePolicy,
    Invitation,
    KnownDevice,
    KnownNetwork,
    OidcIdentity,
    PasskeyCredential,
    RecoveryCode,
    TotpCredential,
    User,
    WebSession,
)

__all__ = ["EXPORT_FORMAT", "AccountExport"]

#: The document's ``format`` field; bumped when its shape changes.
EXPORT_FORMAT: Final = "homeport-account-export/1"


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


class AccountExport:
    """Reads one account's data for its owner (see the module docstring for what and why)."""

    def __init__(self, db: Database, audit: Audit, *, now: Callable[[], datetime]) -> None:
        self._db = db
        self._audit = audit
        self._now = now

    async def export(self, user_id: int) -> dict[str, Any]:
        """The export document; :class:`UnknownUser` if the account does not exist."""
        async with self._db.session() as s:
            user = await s.get(User, user_id)
            if user is None:
                raise UnknownUser("No such account.")
            document: dict[str, Any] = {
                "format": EXPORT_FORMAT,
                "exported_at": _time(self._now()),
                "account": {
                    "id": user.id,
                    "email": user.email,
                    "created_at": _time(user.created_at),
                    "disabled": user.disabled,
                    "has_password": user.has_password,
                },
                "homes_owned": await self._homes(s, user_id),
                "memberships": await self._memberships(s, user_id),
                "sessions": [
                    {
                        "id": row.id,
                        "kind": row.kind,
                        "home_id": row.instance_id,
                        "created_at": _time(row.created_at),
                        "last_seen_at": _time(row.last_seen_at),
                        "idle_expires_at": _time(row.idle_expires_at),
                        "absolute_expires_at": _time(row.absolute_expires_at),
                        "ended_at": _time(row.revoked_at),
                        "ip": row.ip,
                        "user_agent": row.user_agent,
                        "second_factor": row.second_factor,
                    }
                    for row in await s.scalars(
                        select(WebSession)
                        .where(WebSession.user_id == user_id)
                        .order_by(WebSession.created_at, WebSession.id)
                    )
                ],
                "second_factors": await self._factors(s, user_id),
                "sign_in_identities": [
                    {
                        "provider": row.provider,
                        "issuer": row.issuer,
                        "subject": row.subject,
                        "email": row.email,
                        "created_at": _time(row.created_at),
                        "last_used_at": _time(row.last_used_at),
                    }
                    for row in await s.scalars(
                        select(OidcIdentity)
                        .where(OidcIdentity.user_id == user_id)
                        .order_by(OidcIdentity.id)
                    )
                ],
                "known_devices": [
                    {"created_at": _time(row.created_at), "last_seen_at": _time(row.last_seen_at)}
                    for row in await s.scalars(
                        select(KnownDevice)
                        .where(KnownDevice.user_id == user_id)
                        .order_by(KnownDevice.created_at)
                    )
                ],
                "known_networks": [
                    {
                        "network": row.network,
                        "created_at": _time(row.created_at),
                        "last_seen_at": _time(row.last_seen_at),
                    }
                    for row in await s.scalars(
                        select(KnownNetwork)
                        .where(KnownNetwork.user_id == user_id)
                        .order_by(KnownNetwork.created_at, KnownNetwork.network)
                    )
                ],
            }
        document["audit_events"] = [
            {
                "at": _time(event.at),
                "type": event.kind,
                "what": describe_event(event.kind),
                "home_id": event.instance_id,
                "mine": event.user_id == user_id,
                "ip": event.ip,
                "device": event.device,
                "factor": event.factor,
                "session_id": event.session_id,
                "detail": event.detail,
            }
            for event in await self._audit.export(user_id)
        ]
        return document

    @staticmethod
    async def _homes(s: AsyncSession, user_id: int) -> list[dict[str, Any]]:
        homes = []
        for home in await s.scalars(
            select(Instance).where(Instance.owner_id == user_id).order_by(Instance.created_at)
        ):
            members = await s.execute(
                select(User.email, InstanceMember.created_at, InstanceMember.expires_at)
                .join(User, User.id == InstanceMember.user_id)
                .where(InstanceMember.instance_id == home.id)
                .order_by(InstanceMember.created_at, User.email)
            )
            invitations = await s.scalars(
                select(Invitation)
                .where(Invitation.instance_id == home.id)
                .order_by(Invitation.created_at, Invitation.id)
            )
            links = await s.scalars(
                select(AppLink).where(AppLink.instance_id == home.id).order_by(AppLink.id)
            )
            policy = await s.get(InstancePolicy, home.id)
            homes.append(
                {
                    "id": home.id,
                    "name": home.name,
                    "linked_at": _time(home.created_at),
                    "last_connected_at": _time(home.last_connected_at),
                    "last_disconnected_at": _time(home.last_disconnected_at),
                    "require_second_factor": bool(policy and policy.require_second_factor),
                    "members": [
                        {"email": email, "since": _time(since), "until": _time(until)}
                        for email, since, until in members
                    ],
                    "invitations": [
                        {
                            "email": inv.email,
                            "created_at": _time(inv.created_at),
                            "expires_at": _time(inv.expires_at),
                            "accepted_at": _time(inv.accepted_at),
                            "withdrawn_at": _time(inv.revoked_at),
                        }
                        for inv in invitations
                    ],
                    "app_links": [
                        {
                            "id": link.id,
                            "name": link.name,
                            "created_at": _time(link.created_at),
                            "last_used_at": _time(link.last_used_at),
                            "expires_at": _time(link.expires_at),
                        }
                        for link in links
                    ],
                }
            )
        return homes

    @staticmethod
    async def _memberships(s: AsyncSession, user_id: int) -> list[dict[str, Any]]:
        rows = await s.execute(
            select(
                Instance.id,
                Instance.name,
                User.email,
                InstanceMember.created_at,
                InstanceMember.expires_at,
            )
            .join(InstanceMember, InstanceMember.instance_id == Instance.id)
            .join(User, User.id == Instance.owner_id)
            .where(InstanceMember.user_id == user_id)
            .order_by(InstanceMember.created_at, Instance.id)
        )
        return [
            {
                "home_id": home_id,
                "home_name": name,
                "owner_email": owner,
                "role": "member",
                "since": _time(since),
                "until": _time(until),
            }
            for home_id, name, owner, since, until in rows
        ]

    @staticmethod
    async def _factors(s: AsyncSession, user_id: int) -> dict[str, Any]:
        totp = await s.get(TotpCredential, user_id)
        codes = await s.scalar(
            select(func.count())
            .select_from(RecoveryCode)
            .where(RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None))
        )
        passkeys = await s.scalars(
            select(PasskeyCredential)
            .where(PasskeyCredential.user_id == user_id)
            .order_by(PasskeyCredential.created_at, PasskeyCredential.id)
        )
        return {
            "authenticator_app": None
            if totp is None
            else {"added_at": _time(totp.created_at), "turned_on_at": _time(totp.enabled_at)},
            "recovery_codes_left": int(codes or 0),
            "passkeys": [
                {
                    "name": key.name,
                    "created_at": _time(key.created_at),
                    "last_used_at": _time(key.last_used_at),
                    "backed_up": key.backed_up,
                }
                for key in passkeys
            ],
        }
