"""The renewal lease: at most one relay node renews certificates at a time.

Threat this stops: two nodes ordering the same certificate at once (wasted
orders against the CA's rate limits, two keys in play) and, worse, a node that
stalled mid-renewal (a long GC pause, a frozen VM, a network partition) waking
up and overwriting the certificate a newer renewer has stored since.

A row in the shared database (``renewal_leases``, one row ``acme``), not a Redis
key: the database is what every node already shares (a single relay has its
SQLite file, a cluster its PostgreSQL), so one mechanism serves both and a
Redis outage does not stop renewals; and the token is checked in the *same
transaction* as the certificate write (:meth:`CertificateStore.put
<homeport.tls.store.CertificateStore.put>`), which a lock in another engine
could not give.

* :meth:`RenewalLease.acquire` takes the row (``SELECT ... FOR UPDATE`` on
  PostgreSQL; ``BEGIN IMMEDIATE`` on SQLite) if it is free or expired, and
  gives it a new **fencing token** (the previous plus one).
* The holder extends it every ``ttl / 3`` while it works (:meth:`hold`); if an
  extension finds the row taken over, :attr:`Held.lost` is set.
* A holder that stops extending (dead, paused) loses the lease after ``ttl``;
  the next node gets a larger token, and any write still carrying the old one
  is refused by the store. Expiry compares node clocks (kept by NTP); a clock
  that is off only makes the lease change hands early or late, never lets an
  old token write.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from sqlalchemy import select

from homeport.accounts.db import DATABASE_ERRORS, Database
from homeport.accounts.models import RenewalLease as LeaseRow

__all__ = ["DEFAULT_TTL", "Held", "RenewalLease"]

log = logging.getLogger(__name__)

LEASE_NAME = "acme"
#: A holder that stops extending is replaced after this long. An ACME order takes
#: seconds to a minute; the lease is extended every third of it while held.
DEFAULT_TTL = dt.timedelta(seconds=120)


@dataclass
class Held:
    """A lease this node holds: its fencing token, and whether it was lost since."""

    token: int
    lost: bool = False


class RenewalLease:
    """This node's handle on the renewal lease (see the module docstring)."""

    def __init__(
        self,
        database: Database,
        node: str,
        *,
        ttl: dt.timedelta = DEFAULT_TTL,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.database = database
        self.node = node
        self.ttl = ttl
        self._now = now
        #: times this node found the lease held by another (a metric, and for tests)
        self.refusals = 0

    async def acquire(self) -> Held | None:
        """Take the lease with a new fencing token if it is free, expired or ours; else None."""
        async with self.database.session(write=True) as s, s.begin():
            row = await s.scalar(
                select(LeaseRow).where(LeaseRow.name == LEASE_NAME).with_for_update()
            )
            if row is None:
                raise RuntimeError("renewal lease row missing: database not migrated")
            now = self._now()
            if row.holder not in (None, self.node) and row.expires_at > now:
                self.refusals += 1
                return None
            row.token += 1
            row.holder = self.node
            row.expires_at = now + self.ttl
            token = row.token
        log.info("acme.lease_acquired", extra={"node": self.node, "token": token})
        return Held(token)

    async def extend(self, held: Held) -> bool:
        """Push the expiry out; False (and ``held.lost``) if the lease changed hands."""
        async with self.database.session(write=True) as s, s.begin():
            row = await s.scalar(
                select(LeaseRow).where(LeaseRow.name == LEASE_NAME).with_for_update()
            )
            if row is None or row.token != held.token or row.holder != self.node:
                held.lost = True
            else:
                row.expires_at = self._now() + self.ttl
        if held.lost:
            log.warning("acme.lease_lost", extra={"node": self.node, "token": held.token})
        return not held.lost

    async def release(self, held: Held) -> None:
        """Let another node take the lease at once (only if it is still ours)."""
        async with self.database.session(write=True) as s, s.begin():
            row = await s.scalar(
                select(LeaseRow).where(LeaseRow.name == LEASE_NAME).with_for_update()
            )
            if row is not None and row.token == held.token and row.holder == self.node:
                row.holder = None
                row.expires_at = self._now()

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[Held | None]:
        """The lease for the body (None if another node holds it), extended meanwhile."""
        held = await self.acquire()
        if held is None:
            yield None
            return
        task = asyncio.create_task(self._keep(held), name="acme-lease")
        try:
            yield held
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            try:
                await self.release(held)
            except DATABASE_ERRORS as exc:  # it expires by itself
                log.warning("acme.lease_release_failed", extra={"error": type(exc).__name__})

    async def _keep(self, held: Held) -> None:
        interval = self.ttl.total_seconds() / 3
        while not held.lost:
            await asyncio.sleep(interval)
            try:
                await self.extend(held)
            except DATABASE_ERRORS as exc:  # try again; the store's fencing check still holds
                log.warning("acme.lease_extend_failed", extra={"error": type(exc).__name__})
