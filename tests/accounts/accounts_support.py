"""Helpers shared by the accounts tests (imported as a plain module)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

from homeport.accounts import Accounts, User

PASSWORD = "correct horse battery staple"


class Clock:
    """A settable clock for :class:`Accounts` (``now=clock``)."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def addon_key(n: int) -> str:
    """A distinct, well-formed add-on public key text for test number ``n``."""
    raw = n.to_bytes(32, "big")
    return "ed25519:" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def link(accounts: Accounts, owner: User, n: int = 1, name: str = "Home") -> str:
    """Link add-on key ``n`` to ``owner``; return the instance id."""
    code, _expires = await accounts.create_link_code(addon_key(n))
    instance = await accounts.link_instance(code, owner.email, name)
    return instance.id
