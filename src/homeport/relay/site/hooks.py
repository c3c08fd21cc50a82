"""What the account site asks of the parts around it, as small explicit interfaces."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from aiohttp import web

__all__ = ["Homes", "InvitationMail", "Notices", "StepUp"]


class Homes(Protocol):
    """The tunnel hub as the account site sees it: is a home online, and unlinking one."""

    def tunnel_for(self, instance_id: str) -> object | None:
        """The live tunnel of ``instance_id``, or ``None`` when its add-on is offline."""

    async def close_instance(self, instance_id: str, reason: str = "unlinked") -> bool:
        """Close the home's tunnel (it was unlinked); ``True`` if one was open."""


class StepUp(Protocol):
    """A check between the last factor and the new session (the emailed code, R-EML)."""

    async def challenge(
        self, request: web.Request, user_id: int, next_path: str, *, second_factor: bool
    ) -> web.StreamResponse | None:
        """A response that asks for more (no session yet), or ``None``: go ahead."""

    async def signed_in(
        self, request: web.Request, response: web.StreamResponse, user_id: int, *, stepped_up: bool
    ) -> None:
        """A session was just created (``stepped_up``: after the check); remember what
        needs remembering on ``response``."""


class Notices(Protocol):
    """Tells the account's owner about a security change (R-OPS-05), e.g. by mail."""

    async def changed(self, request: web.Request, user_id: int, what: str) -> None:
        """``what`` happened to the account (a short phrase, e.g. "... was turned on")."""


class InvitationMail(Protocol):
    """Mails an invitation's accept link to the invited address (when mail is on)."""

    def invite(
        self, to: str, *, inviter: str, home: str, accept_url: str, expires: datetime | None
    ) -> bool:
        """Queue the mail; ``False`` if it could not be queued."""
