"""Abuse control for credential checks: growing delays and per-network limits.

Threats this stops: online password guessing against one account (from one
network or many), password spraying from one network across many accounts,
and an add-on key generator flooding the relay with link codes. State lives
in the accounts database (table ``throttle``), so it survives a restart and
is shared by every worker on one database; the scale-out work will move it
to Redis.

Policy (R-RATE-01/02/03; the same text is summarised in ``docs/security.md``):

* **Keys, not people.** Counters are kept per *key*: ``pw:pair:<account>:<net>``
  (one account from one client network), ``pw:acct:<account>`` (one account
  from anywhere), ``pw:net:<net>`` (one network against any account) and
  ``link:net:<net>`` (link codes issued to one network). ``<account>`` is the
  SHA-256 of the normalised email address as typed, whether or not such an
  account exists, so unknown and known addresses are throttled identically
  and the table reveals no address. ``<net>`` is the client's IPv4 address,
  or its IPv6 /64 (one home or phone usually owns a whole /64); an
  IPv4-mapped IPv6 address counts as its IPv4 address.
* **Growing delays per account and network** (:data:`SIGNIN_PAIR`): the first
  4 consecutive failures cost nothing; from the 5th failure on, the next
  attempt must wait ``2 ** (n - 5)`` seconds (1 s, 2 s, 4 s, ...) capped at
  15 minutes. Attempts made while a delay runs are refused with 429 and
  ``Retry-After`` *without* checking the password, and are not counted.
* **Growing delays per account from anywhere** (:data:`SIGNIN_ACCOUNT`):
  the same from the 20th consecutive failure, capped at 1 minute, so
  guessing spread over many networks is slowed too, while an attacker can
  delay the owner by at most a minute per attempt, never lock them out.
* **Per-network limit** (:data:`SIGNIN_NETWORK`): at most 20 failed sign-ins
  per network in a fixed 10-minute window, whatever the account, then 429
  until the window ends.
* **Link codes** (:data:`LINK_NETWORK`): at most 10 new link codes per
  network per hour; the tunnel hub answers ``error``/``rate_limited``.
* **Success resets only what it proves.** A successful sign-in clears the
  (account, network) pair and the account-wide counter; it does not clear
  other networks' pairs (an attacker elsewhere keeps his delay) and gives
  back the one unit it took from the network limit.
* **No lock-out at will.** Nothing disables an account: delays are capped,
  and the owner signing in from their own network is slowed only by
  failures from that network and, by at most a minute, by the account-wide
  counter. (NIST's "disable the authenticator after 100 failures" and an
  email unlock need the email channel; they are not implemented yet.)
* **Race-free.** An attempt is counted *before* the password is checked, in
  one write transaction with the check, so a burst of parallel requests
  cannot all slip in under the limit; a success then undoes it.
* Rows untouched for a day (and past their delay) are pruned by
  :meth:`Throttle.prune` (called from ``Accounts.purge_expired``).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import math
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.exc import IntegrityError

from homeport.accounts.db import Database
from homeport.accounts.models import THROTTLE_KEY_MAX, ThrottleEntry
from homeport.accounts.single_use import rowcount

__all__ = [
    "LINK_NETWORK",
    "SIGNIN_ACCOUNT",
    "SIGNIN_NETWORK",
    "SIGNIN_PAIR",
    "Backoff",
    "Throttle",
    "Window",
    "account_key",
    "network_key",
    "retry_after",
    "signin_keys",
]

PRUNE_AFTER: Final = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Consecutive failures; from failure ``free + 1`` on, wait ``base * 2**k`` up to ``cap``."""

    free: int
    base: float
    cap: float

    def delay(self, failures: int) -> float:
        if failures <= self.free:
            return 0.0
        return float(min(self.cap, self.base * 2.0 ** min(failures - self.free - 1, 64)))


@dataclass(frozen=True, slots=True)
class Window:
    """At most ``limit`` events per fixed ``window``."""

    limit: int
    window: timedelta


Rule = Backoff | Window

SIGNIN_PAIR: Final = Backoff(free=4, base=1.0, cap=15 * 60.0)
SIGNIN_ACCOUNT: Final = Backoff(free=19, base=1.0, cap=60.0)
SIGNIN_NETWORK: Final = Window(limit=20, window=timedelta(minutes=10))
LINK_NETWORK: Final = Window(limit=10, window=timedelta(hours=1))


@functools.lru_cache(maxsize=4096)  # asked on every tenant request: parse an address once
def network_key(ip: str | None) -> str:
    """The client network an address counts against: IPv4 address, IPv6 /64."""
    try:
        address = ipaddress.ip_address((ip or "").split("%", 1)[0])
    except ValueError:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def account_key(email: str) -> str:
    """SHA-256 of the address as a person would mean it (NFKC, trimmed, case-folded)."""
    normal = unicodedata.normalize("NFKC", email).strip().casefold()
    return hashlib.sha256(normal.encode("utf-8", "surrogatepass")).hexdigest()


def signin_keys(email: str, ip: str | None) -> list[tuple[str, Rule]]:
    """The counters one password sign-in attempt touches, with their rules."""
    acct, net = account_key(email), network_key(ip)
    return [
        (f"pw:pair:{acct}:{net}", SIGNIN_PAIR),
        (f"pw:acct:{acct}", SIGNIN_ACCOUNT),
        (f"pw:net:{net}", SIGNIN_NETWORK),
    ]


class Throttle:
    """Counters in the ``throttle`` table; all times from the injected clock."""

    def __init__(self, db: Database, *, now: Callable[[], datetime]) -> None:
        self._db = db
        self._now = now

    async def attempt(self, keys: Sequence[tuple[str, Rule]]) -> float:
        """Count one attempt on every key, or refuse it; seconds to wait (0: go ahead).

        Refused attempts (any key still waiting) change nothing. Allowed
        attempts are counted as failures at once; call :meth:`succeeded`
        when the credential turns out right.
        """
        for key, _rule in keys:
            if len(key) > THROTTLE_KEY_MAX:
                raise ValueError("throttle key too long")
        for _try in range(3):
            try:
                return await self._attempt(keys)
            except IntegrityError:  # a concurrent first attempt created a row: retry
                continue
        return await self._attempt(keys)

    async def _attempt(self, keys: Sequence[tuple[str, Rule]]) -> float:
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            rows: dict[str, ThrottleEntry | None] = {}
            wait = 0.0
            for key, rule in keys:
                row = await s.scalar(
                    select(ThrottleEntry).where(ThrottleEntry.key == key).with_for_update()
                )
                if (
                    row is not None
                    and isinstance(rule, Window)
                    and now >= row.window_start + rule.window
                ):
                    row.failures, row.window_start, row.next_allowed_at = 0, now, None
                rows[key] = row
                if row is not None and row.next_allowed_at is not None:
                    wait = max(wait, (row.next_allowed_at - now).total_seconds())
            if wait > 0:
                return wait
            for key, rule in keys:
                row = rows[key]
                if row is None:
                    row = ThrottleEntry(key=key, failures=0, window_start=now, updated_at=now)
                    s.add(row)
                row.failures += 1
                row.updated_at = now
                if isinstance(rule, Backoff):
                    delay = rule.delay(row.failures)
                    row.next_allowed_at = now + timedelta(seconds=delay) if delay else None
                elif row.failures >= rule.limit:
                    row.next_allowed_at = row.window_start + rule.window
                else:
                    row.next_allowed_at = None
            return 0.0

    async def succeeded(self, clear: Sequence[str], refund: Sequence[str] = ()) -> None:
        """The credential was right: delete the ``clear`` counters, give one back on ``refund``."""
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            if clear:
                await s.execute(delete(ThrottleEntry).where(ThrottleEntry.key.in_(list(clear))))
            for key in refund:
                row = await s.get(ThrottleEntry, key, with_for_update=True)
                if row is not None and row.failures > 0:
                    row.failures -= 1
                    row.next_allowed_at = None
                    row.updated_at = now

    async def prune(self, keep: timedelta = PRUNE_AFTER) -> int:
        """Delete counters untouched for ``keep`` whose delay is over; rows deleted."""
        now = self._now()
        horizon = now - keep
        async with self._db.session(write=True) as s, s.begin():
            result = await s.execute(
                delete(ThrottleEntry).where(
                    and_(
                        ThrottleEntry.updated_at <= horizon,
                        or_(
                            ThrottleEntry.next_allowed_at.is_(None),
                            ThrottleEntry.next_allowed_at <= now,
                        ),
                    )
                )
            )
        return rowcount(result)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
