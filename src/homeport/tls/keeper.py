"""The renewal loop running inside the relay: keeps every ACME certificate fresh.

For each managed certificate: renew once a third of its lifetime is left
(:func:`~homeport.tls.acme_bot.renewal_decision`), then hand the new files to
:class:`~homeport.tls.served.ServedCertificates`, which serves them to new
handshakes without a restart. A failure (CA down, DNS refused, rate limit
beyond what the bot waits for itself) is retried with exponential back-off,
never in a tight loop, and the alert under 14 days left keeps firing
(R-ACME-03/06). The loop never dies on an error: an expired certificate is
worse than a log line.

**Shared** (``store`` and ``lease`` given, which the relay always does for its
ACME certificates): the certificates live in the database
(:mod:`homeport.tls.store`, key sealed) and one node at a time renews
(:mod:`homeport.tls.lease`). Each check:

1. **sync**: a stored version newer than the one served is opened, written to
   the bot's files and served (:meth:`ServedCertificates.reload`), so every node
   serves a renewed certificate without a restart. The check runs at least
   every :data:`POLL_INTERVAL` (the fallback: works with Redis down) and at once
   when :meth:`CertificateKeeper.wake` is called (a cluster notice);
2. **renew**, only when something is due (or the store has no row yet but this
   node has a fit certificate of its own, which it then stores): take the lease,
   sync again (another node may have just renewed), and order only what is
   still due; the result is stored under the lease's fencing token, and served.
   A node that cannot take the lease orders nothing and looks again later.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from homeport.accounts.db import DATABASE_ERRORS
from homeport.keys import write_secret_file
from homeport.tls.acme_bot import AcmeBot, Issued
from homeport.tls.check import CertificateProblem, check_certificate_files
from homeport.tls.lease import Held, RenewalLease
from homeport.tls.served import CertPair, ServedCertificates
from homeport.tls.store import CertificateRefused, CertificateStore, FencingError
from homeport.waits import wait_for_event

__all__ = ["POLL_INTERVAL", "CertificateKeeper", "Managed"]

log = logging.getLogger(__name__)

#: How often a node looks for a certificate stored by another, at the latest.
POLL_INTERVAL = dt.timedelta(seconds=60)


@dataclass
class Managed:
    #: which certificate of :class:`ServedCertificates` (``ACCOUNT`` / ``TENANT``)
    kind: str
    bot: AcmeBot
    failures: int = 0
    not_before: dt.datetime | None = None
    #: days left on the certificate in use (a gauge for monitoring); None before the first
    days_left: float | None = None
    alert: bool = False
    #: ``(fence, version)`` of the stored certificate served (shared mode); (0, 0): none
    stamp: tuple[int, int] = (0, 0)
    #: a stored row this node refused to open (tampered, or this node has another
    #: secret-box key): it is not tried again, and never overwritten from here
    refused: tuple[int, int] | None = None

    @property
    def version(self) -> int:
        return self.stamp[1]


class CertificateKeeper:
    def __init__(
        self,
        served: ServedCertificates,
        managed: Sequence[Managed],
        *,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        first_backoff: dt.timedelta = dt.timedelta(minutes=5),
        max_backoff: dt.timedelta = dt.timedelta(hours=6),
        max_interval: dt.timedelta = dt.timedelta(hours=12),
        on_renewed: Callable[[Managed, Issued], None] | None = None,
        store: CertificateStore | None = None,
        lease: RenewalLease | None = None,
        poll_interval: dt.timedelta = POLL_INTERVAL,
        on_stored: Callable[[str, int], None] | None = None,
    ) -> None:
        """``store`` and ``lease`` (both or neither): the shared mode (module docstring);
        ``on_stored(kind, version)``: told after this node stored a certificate."""
        if (store is None) != (lease is None):
            raise ValueError("store and lease go together")
        self.served = served
        self.managed = list(managed)
        self._now = now
        self._sleep = sleep
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.max_interval = max_interval
        self.renewals = 0
        self._on_renewed = on_renewed
        self.store = store
        self.lease = lease
        self.poll_interval = poll_interval
        #: told ``(kind, version)`` after this node stored a certificate (a cluster notice)
        self.on_stored = on_stored
        #: one check at a time (the loop, a wake-up and a test may overlap)
        self._busy = asyncio.Lock()
        self._wake = asyncio.Event()
        #: the store's ``(fence, version)`` of each kind, as last read
        self._stamps: dict[str, tuple[int, int]] = {}

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                wait = await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug or a full disk must not end renewals for good
                log.exception("acme.keeper_check_failed")
                wait = self.first_backoff.total_seconds()
            if self.store is None:
                await self._sleep(wait)
                continue
            await wait_for_event(self._wake, wait)

    def wake(self) -> None:
        """Look at the store now (another node told us it stored a certificate)."""
        self._wake.set()

    async def check_once(self) -> float:
        """Renew what is due; return seconds until the next check is needed."""
        async with self._busy:
            if self.lease is None:
                return await self._check()
            await self.sync()
            wanted = [item for item in self.managed if self._wants_lease(item)]
            if not wanted:
                return await self._check()
            try:
                async with self.lease.hold() as held:
                    if held is None:  # another node renews: look again soon
                        return min(self.poll_interval.total_seconds(), await self._check())
                    await self.sync()  # it may have renewed just before we got the lease
                    for item in self.managed:
                        if not self._stored(item) and self._fit(item):
                            await self._store(item, held, item.bot.cert_path, item.bot.key_path)
                    return await self._check(held)
            except DATABASE_ERRORS as exc:
                log.warning("acme.lease_unavailable", extra={"error": type(exc).__name__})
                return min(self.poll_interval.total_seconds(), await self._check(renew=False))

    async def _check(self, held: Held | None = None, *, renew: bool = True) -> float:
        waits: list[dt.timedelta] = []
        for item in self.managed:
            now = self._now()
            if item.not_before is not None and now < item.not_before:
                waits.append(item.not_before - now)
                continue
            decision = item.bot.needs_renewal(now)
            # Shared mode: only the lease holder orders.
            allowed = self.lease is None or (held is not None and not self._blocked(item))
            if decision.renew and renew and allowed:
                if await self._renew(item, held):
                    decision = item.bot.needs_renewal(self._now())
                else:
                    assert item.not_before is not None
                    waits.append(item.not_before - now)
            item.days_left = decision.remaining.total_seconds() / 86400
            item.alert = decision.alert
            if not decision.renew:
                waits.append(decision.renew_at - now)
        wait = min([self.max_interval, *waits])
        if self.store is not None:
            wait = min(wait, self.poll_interval)
        return max(1.0, wait.total_seconds())

    # ------------------------------------------------------- shared store

    def _stored(self, item: Managed) -> tuple[int, int] | None:
        return self._stamps.get(item.kind)

    def _fit(self, item: Managed) -> bool:
        try:
            check_certificate_files(item.bot.cert_path, item.bot.key_path, item.bot.names)
        except CertificateProblem:
            return False
        return True

    def _blocked(self, item: Managed) -> bool:
        """Whether this node refused the stored row: it cannot tell a tampered row from
        its own wrong secret-box key file, so it never overwrites the row (an operator
        must look: ``tls.stored_certificate_refused``)."""
        return item.refused is not None and item.refused == self._stored(item)

    def _wants_lease(self, item: Managed) -> bool:
        """Something for the lease holder to do: a renewal due, or a first certificate to store."""
        now = self._now()
        if item.not_before is not None and now < item.not_before:
            return False
        if self._blocked(item):
            if item.bot.needs_renewal(now).renew:
                log.error(
                    "acme.renewal_skipped",
                    extra={"kind": item.kind, "why": "the stored certificate was refused here"},
                )
            return False
        if not self._stored(item) and self._fit(item):
            return True
        return item.bot.needs_renewal(now).renew

    async def sync(self) -> None:
        """Serve every stored certificate newer than the one served here."""
        assert self.store is not None
        try:
            self._stamps = await self.store.stamps()
        except DATABASE_ERRORS as exc:  # keep serving what we have; next poll tries again
            log.warning("tls.certificate_store_unavailable", extra={"error": type(exc).__name__})
            return
        for item in self.managed:
            stored = self._stamps.get(item.kind)
            # A row refused here is not tried again (nor logged at every poll).
            if stored is not None and stored > item.stamp and stored != item.refused:
                await self._install(item)

    async def _install(self, item: Managed) -> None:
        assert self.store is not None
        try:
            stored = await self.store.load(item.kind)
        except CertificateRefused:
            item.refused = self._stored(item)
            return  # logged by the store; the certificate served stays
        except DATABASE_ERRORS as exc:
            log.warning("tls.certificate_store_unavailable", extra={"error": type(exc).__name__})
            return
        if stored is None:
            return
        bot = item.bot
        # Key first, as the bot writes them: a crash in between leaves a mismatch
        # that is detected, never a served pair that does not belong together.
        write_secret_file(bot.key_path, stored.key_pem, replace=True)
        write_secret_file(bot.cert_path, stored.chain_pem, replace=True)
        try:
            self.served.reload(item.kind, CertPair(bot.cert_path, bot.key_path))
        except (CertificateProblem, ssl.SSLError, OSError) as exc:
            log.error(
                "tls.stored_certificate_unusable",
                extra={"kind": item.kind, "version": stored.version, "error": str(exc)},
            )
            item.stamp = (stored.fence, stored.version)  # not again at every poll
            return
        item.stamp = (stored.fence, stored.version)
        log.info(
            "tls.certificate_loaded",
            extra={"kind": item.kind, "version": stored.version, "not_after": stored.not_after},
        )

    async def _store(self, item: Managed, held: Held, cert: Path, key: Path) -> bool:
        """Put this node's files for ``item`` into the store under ``held``'s token."""
        assert self.store is not None
        try:
            version = await self.store.put(item.kind, *_read_pair(cert, key), fence=held.token)
        except FencingError:
            # A newer holder has stored (or will store) one: serve that instead.
            await self.sync()
            return False
        item.stamp = (held.token, version)
        self._stamps = {**self._stamps, item.kind: item.stamp}
        if self.on_stored is not None:
            self.on_stored(item.kind, version)
        return True

    # ------------------------------------------------------------ renewal

    async def _renew(self, item: Managed, held: Held | None = None) -> bool:
        try:
            issued = await item.bot.obtain_async()
            if held is not None and not await self._store(
                item, held, issued.cert_path, issued.key_path
            ):
                return True  # superseded: the newer certificate is served by sync()
            self.served.reload(item.kind, CertPair(issued.cert_path, issued.key_path))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            item.failures += 1
            backoff = min(self.max_backoff, self.first_backoff * 2 ** (item.failures - 1))
            item.not_before = self._now() + backoff
            log.error(
                "acme.renewal_failed",
                extra={
                    "kind": item.kind,
                    "failures": item.failures,
                    "retry_in_s": backoff.total_seconds(),
                    "error": f"{type(exc).__name__}: {exc}",
                },
            )
            return False
        item.failures = 0
        item.not_before = None
        self.renewals += 1
        log.info("acme.renewed", extra={"kind": item.kind, "names": item.bot.names})
        if self._on_renewed is not None:
            self._on_renewed(item, issued)
        return True


def _read_pair(cert: Path, key: Path) -> tuple[bytes, bytes]:
    return cert.read_bytes(), key.read_bytes()
