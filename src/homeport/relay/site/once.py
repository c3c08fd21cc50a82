"""Secrets shown once, after a redirect: post/redirect/get for new links and codes.

A form that creates a secret (an app link, an invitation link, recovery codes)
answers with a ``303`` to a normal page, and that page shows the secret; so a
reload does not create a second one, Back does not land on a form address, and
the secret never sits in a URL.  Between the two requests the secret waits
here, in the relay's memory only (never on disk, never logged), for at most
:data:`LIFETIME`, bound to the account session that created it, and it is
handed out exactly once: the page that shows it takes it.

Threats this stops: a secret left in the browser's cache or history (the page
is ``no-store``; the URL holds only a random ticket), and a ticket used by
another session (bound to the creating session).  Memory is bounded
(:data:`MAX_ENTRIES`, oldest dropped first).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["LIFETIME", "MAX_ENTRIES", "ShownOnce"]

LIFETIME: Final = 300.0
MAX_ENTRIES: Final = 10_000


@dataclass(frozen=True, slots=True)
class _Entry:
    session_id: int
    kind: str
    payload: dict[str, Any]
    expires: float


class ShownOnce:
    """Tickets for secrets waiting to be shown on the page after a redirect."""

    def __init__(self, *, lifetime: float = LIFETIME, max_entries: int = MAX_ENTRIES) -> None:
        self._lifetime = lifetime
        self._max = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def put(self, session_id: int, kind: str, payload: dict[str, Any]) -> str:
        """Keep ``payload`` for the next page of ``session_id``; the ticket for its URL."""
        self._expire()
        while len(self._entries) >= self._max:
            self._entries.popitem(last=False)
        ticket = secrets.token_urlsafe(16)
        self._entries[ticket] = _Entry(session_id, kind, payload, time.monotonic() + self._lifetime)
        return ticket

    def take(self, session_id: int, kind: str, ticket: str | None) -> dict[str, Any] | None:
        """The payload, once; ``None`` if unknown, expired, taken, or another session's."""
        if not ticket or len(ticket) > 64:
            return None
        entry = self._entries.get(ticket)
        if entry is None or entry.session_id != session_id or entry.kind != kind:
            return None
        del self._entries[ticket]
        return entry.payload if entry.expires > time.monotonic() else None

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._entries:
            ticket, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                break
            del self._entries[ticket]
