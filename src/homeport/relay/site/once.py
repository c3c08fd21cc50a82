"""Secrets shown once, after a redirect: post/redirect/get for new links and codes.

A form that creates a secret (an app link, an invitation link, recovery codes)
answers with a ``303`` to a normal page, and that page shows the secret; so a
reload does not create a second one, Back does not land on a form address, and
the secret never sits in a URL.  Between the two requests the secret waits for
at most :data:`LIFETIME`, bound to the account session that created it and to
its kind, and it is handed out exactly once: the page that shows it takes it.

Where it waits:

* a single relay: in its memory (:class:`ShownOnce`; never on disk, never
  logged; at most :data:`MAX_ENTRIES`, oldest dropped first);
* several relay nodes (``--redis-url``): the page after the redirect may be
  served by another node, so the secret waits in Redis (:class:`SealedShownOnce`),
  encrypted with the relay's secret-box key (AES-256-GCM,
  :mod:`homeport.accounts.secretbox`), under a name derived from the ticket,
  the session and the kind, with a Redis expiry, and taken with ``GETDEL``.

Threats this stops: a secret left in the browser's cache or history (the page
is ``no-store``; the URL holds only a random ticket); a ticket used by another
session (bound to the creating session: the other session derives another
name and finds nothing, and the owner's entry is left alone); and, on a
cluster, a secret read from Redis or its dumps (sealed: Redis holds neither the
ticket nor the secret, only ciphertext bound by the AEAD to its name, session
and kind, so an entry altered or moved to another name does not open).

When Redis cannot be reached (:class:`OnceUnavailable`) nothing is shown to
anyone else and nothing is lost silently: a form whose secret cannot be kept
shows it in its own answer instead of redirecting (the caller's job), and a
page that cannot take its secret says to reload (a ``GETDEL`` that never
reached Redis spent nothing; one lost in a hung Redis may have) or else to
make a new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from homeport.accounts.secretbox import SecretBox, SecretBoxError

__all__ = [
    "LIFETIME",
    "MAX_ENTRIES",
    "OnceStore",
    "OnceUnavailable",
    "SealedShownOnce",
    "ShownOnce",
]

log = logging.getLogger(__name__)

LIFETIME: Final = 300.0
MAX_ENTRIES: Final = 10_000
#: Longest ticket looked up (``token_urlsafe(16)`` is 22 characters).
MAX_TICKET: Final = 64
#: Redis key prefix of the sealed entries.
PREFIX: Final = "homeport:once:"
_DOMAIN: Final = b"homeport shown-once v1\n"
#: Connect and command timeout against Redis, seconds: a page does not hang on it.
REDIS_TIMEOUT: Final = 1.0


class OnceUnavailable(ConnectionError):
    """The store cannot be reached right now (Redis down): neither kept nor taken."""


class OnceStore(Protocol):
    """Where secrets wait for the page after the redirect."""

    async def put(self, session_id: int, kind: str, payload: dict[str, Any]) -> str:
        """Keep ``payload`` for the next page of ``session_id``; the ticket for its URL."""
        ...

    async def take(self, session_id: int, kind: str, ticket: str | None) -> dict[str, Any] | None:
        """The payload, once; ``None`` if unknown, expired, taken, or another session's."""
        ...


@dataclass(frozen=True, slots=True)
class _Entry:
    session_id: int
    kind: str
    payload: dict[str, Any]
    expires: float


class ShownOnce:
    """A single relay's tickets, in its memory (see the module docstring)."""

    def __init__(self, *, lifetime: float = LIFETIME, max_entries: int = MAX_ENTRIES) -> None:
        self._lifetime = lifetime
        self._max = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    async def put(self, session_id: int, kind: str, payload: dict[str, Any]) -> str:
        self._expire()
        while len(self._entries) >= self._max:
            self._entries.popitem(last=False)
        ticket = secrets.token_urlsafe(16)
        self._entries[ticket] = _Entry(session_id, kind, payload, time.monotonic() + self._lifetime)
        return ticket

    async def take(self, session_id: int, kind: str, ticket: str | None) -> dict[str, Any] | None:
        if not ticket or len(ticket) > MAX_TICKET:
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


class SealedShownOnce:
    """Several nodes' tickets: sealed entries in Redis, read once (see the module docstring)."""

    def __init__(self, redis_url: str, box: SecretBox, *, lifetime: float = LIFETIME) -> None:
        self._box = box
        self._lifetime_ms = max(1, int(lifetime * 1000))
        self._redis = aioredis.Redis.from_url(
            redis_url,
            socket_connect_timeout=REDIS_TIMEOUT,
            socket_timeout=REDIS_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )

    async def close(self) -> None:
        await self._redis.aclose()

    @staticmethod
    def name(session_id: int, kind: str, ticket: str) -> str:
        """The Redis key of an entry: a hash, so Redis never holds the ticket itself."""
        digest = hashlib.sha256(f"{ticket}\n{session_id}\n{kind}".encode()).hexdigest()
        return PREFIX + digest

    @staticmethod
    def _associated(name: str, session_id: int, kind: str) -> bytes:
        return _DOMAIN + f"{name}\n{session_id}\n{kind}".encode()

    async def put(self, session_id: int, kind: str, payload: dict[str, Any]) -> str:
        ticket = secrets.token_urlsafe(16)
        name = self.name(session_id, kind, ticket)
        sealed = self._box.seal(
            json.dumps(payload, separators=(",", ":")).encode(),
            self._associated(name, session_id, kind),
        )
        try:
            await self._redis.set(name, sealed, px=self._lifetime_ms, nx=True)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("site.once_unavailable", extra={"op": "put", "error": type(exc).__name__})
            raise OnceUnavailable(type(exc).__name__) from None
        return ticket

    async def take(self, session_id: int, kind: str, ticket: str | None) -> dict[str, Any] | None:
        if not ticket or len(ticket) > MAX_TICKET:
            return None
        name = self.name(session_id, kind, ticket)
        try:
            sealed = await self._redis.getdel(name)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("site.once_unavailable", extra={"op": "take", "error": type(exc).__name__})
            raise OnceUnavailable(type(exc).__name__) from None
        if not isinstance(sealed, bytes):
            return None
        try:
            payload = json.loads(self._box.open(sealed, self._associated(name, session_id, kind)))
        except (SecretBoxError, ValueError):
            # Altered in Redis, moved to another name, or sealed under another key.
            log.warning("site.once_refused", extra={"kind": kind})
            return None
        return payload if isinstance(payload, dict) else None
