"""Audit events recorded from account-site requests, with the request's place and device."""

from __future__ import annotations

from aiohttp import web

from homeport.accounts.audit import Audit, EventType
from homeport.accounts.sessions import SessionInfo

__all__ = ["AuditTrail"]


class AuditTrail:
    def __init__(self, audit: Audit) -> None:
        self._audit = audit

    async def record(
        self,
        request: web.Request,
        kind: EventType | str,
        session: SessionInfo | None = None,
        *,
        user_id: int | None = None,
        instance_id: str | None = None,
        factor: str | None = None,
        detail: str = "",
    ) -> None:
        """Record an audit event with this request's place and device."""
        await self._audit.record(
            kind,
            user_id=session.user_id if session is not None else user_id,
            instance_id=instance_id,
            ip=request.remote or "",
            user_agent=request.headers.get("User-Agent", ""),
            factor=factor,
            session_id=session.session_id if session is not None else None,
            detail=detail,
        )
