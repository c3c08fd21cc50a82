"""The renewal loop running inside the relay: keeps every ACME certificate fresh.

For each managed certificate: renew once a third of its lifetime is left
(:func:`~homeport.tls.acme_bot.renewal_decision`), then hand the new files to
:class:`~homeport.tls.served.ServedCertificates`, which serves them to new
handshakes without a restart. A failure (CA down, DNS refused, rate limit
beyond what the bot waits for itself) is retried with exponential back-off,
never in a tight loop, and the alert under 14 days left keeps firing
(R-ACME-03/06). The loop never dies on an error: an expired certificate is
worse than a log line.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from homeport.tls.acme_bot import AcmeBot, Issued
from homeport.tls.served import CertPair, ServedCertificates

__all__ = ["CertificateKeeper", "Managed"]

log = logging.getLogger(__name__)


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
    ) -> None:
        self.served = served
        self.managed = list(managed)
        self._now = now
        self._sleep = sleep
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.max_interval = max_interval
        self.renewals = 0
        self._on_renewed = on_renewed

    async def run(self) -> None:
        while True:
            wait = await self.check_once()
            await self._sleep(wait)

    async def check_once(self) -> float:
        """Renew what is due; return seconds until the next check is needed."""
        waits: list[dt.timedelta] = []
        for item in self.managed:
            now = self._now()
            if item.not_before is not None and now < item.not_before:
                waits.append(item.not_before - now)
                continue
            decision = item.bot.needs_renewal(now)
            if decision.renew:
                if await self._renew(item):
                    decision = item.bot.needs_renewal(self._now())
                else:
                    assert item.not_before is not None
                    waits.append(item.not_before - now)
            item.days_left = decision.remaining.total_seconds() / 86400
            item.alert = decision.alert
            if not decision.renew:
                waits.append(decision.renew_at - now)
        wait = min([self.max_interval, *waits])
        return max(1.0, wait.total_seconds())

    async def _renew(self, item: Managed) -> bool:
        try:
            issued = await item.bot.obtain_async()
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
