"""The relay's background chores: cut traffic of sessions that ended elsewhere, purge old rows.

* **Live-session sweep** (every :data:`SWEEP_SECONDS`): every session with an
  open tunnel stream or WebSocket is re-checked against the database. A
  revocation made outside this process (the admin CLI, another relay node
  before the Redis fan-out exists), an absolute expiry, a disabled account or
  withdrawn access thus cuts long-lived streams within seconds, not only
  revocations made here (which cut at once). Sessions still valid count as
  in use (:meth:`Accounts.live_session_ids`).
* **End dates** (same interval): memberships and app links past their end
  date (:meth:`Sharing.end_expired`) are deleted and their open traffic cut,
  like a removal or a revocation. The database refuses them from the moment
  they end; the sweep makes the cut within :data:`SWEEP_SECONDS`.
* **App links and homes** (same interval): every app link with open traffic
  is re-checked (:meth:`Sharing.live_app_link_ids`), and every live tunnel's
  home (:meth:`Instances.existing`). An app link deleted, or a home unlinked,
  outside this process (``homeport admin user delete`` / ``instance unlink``)
  thus has its open traffic cut and its tunnel closed within seconds, as the
  account site does at once for its own.
* **Purge** (every :data:`PURGE_SECONDS`): expired codes, sessions, pending
  sign-ins and throttle rows (:meth:`Accounts.purge_expired`) and audit
  events older than 180 days (:meth:`Audit.purge`).
* **Offline alerts** (every :data:`ALERT_SECONDS`, with mail only): the owners
  who asked are mailed once when a home has been offline longer than they
  chose, and once when it is back (:class:`homeport.accounts.alerts.OfflineAlerts`).
* **Degraded** (a cluster node whose Redis channel is down, see
  :mod:`homeport.relay.cluster.node`): the sweep runs every
  :data:`DEGRADED_SWEEP_SECONDS` instead, so revocations made on other nodes,
  which this one can no longer hear, still cut its open traffic within about
  a second; :meth:`Housekeeping.sweep_soon` runs one at once (when the channel
  comes back: news sent meanwhile was lost).

A failing chore is logged and retried next round; it never stops the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from homeport.accounts.db import DATABASE_ERRORS
from homeport.accounts.service import Accounts
from homeport.mail.mailer import Outbox
from homeport.mail.messages import MailWriter
from homeport.relay.app_links import AppLinkGate
from homeport.relay.gate import SessionGate
from homeport.relay.live import Ending
from homeport.waits import wait_for_event

log = logging.getLogger(__name__)

SWEEP_SECONDS = 5.0
DEGRADED_SWEEP_SECONDS = 1.0
PURGE_SECONDS = 3600.0
ALERT_SECONDS = 30.0


class Tunnels(Protocol):
    """The tunnel hub as the sweep sees it: the live tunnels by home, and closing one."""

    @property
    def tunnels(self) -> Mapping[str, object]: ...

    async def close_instance(self, instance_id: str, reason: str = "unlinked") -> bool: ...


class Housekeeping:
    def __init__(
        self,
        accounts: Accounts,
        gate: SessionGate,
        *,
        app_links: AppLinkGate | None = None,
        hub: Tunnels | None = None,
        sweep_seconds: float = SWEEP_SECONDS,
        purge_seconds: float = PURGE_SECONDS,
        alert_seconds: float = ALERT_SECONDS,
        mail: tuple[Outbox, MailWriter] | None = None,
        manage_url: Callable[[str], str] = lambda instance_id: "",
    ) -> None:
        self.accounts = accounts
        self.gate = gate
        self.app_links = app_links
        self.hub = hub
        self.sweep_seconds = sweep_seconds
        self.purge_seconds = purge_seconds
        self.alert_seconds = alert_seconds
        #: Where offline alerts go; ``None``: the relay has no mail, nobody is alerted.
        self.mail = mail
        self.manage_url = manage_url
        #: Sweep every DEGRADED_SWEEP_SECONDS instead (see the module docstring).
        self.degraded = False
        self._sweep_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(
                self._every(self._sweep_interval, self.tick, "sweep", wake=self._sweep_now)
            ),
            asyncio.create_task(self._every(self.purge_seconds, self.purge, "purge")),
        ]
        if self.mail is not None:
            self._tasks.append(
                asyncio.create_task(self._every(self.alert_seconds, self.alert, "alerts"))
            )

    def _sweep_interval(self) -> float:
        if self.degraded:
            return min(self.sweep_seconds, DEGRADED_SWEEP_SECONDS)
        return self.sweep_seconds

    def sweep_soon(self) -> None:
        """Run the sweep chores now rather than at the end of the interval."""
        self._sweep_now.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def sweep(self) -> int:
        """Cut the open traffic of sessions that are no longer valid; how many sessions."""
        open_ids = self.gate.live.session_ids()
        if not open_ids:
            return 0
        dead = open_ids - await self.accounts.live_session_ids(open_ids)
        if dead:
            log.info("relay.sweep_ended_sessions", extra={"sessions": len(dead)})
            self.gate.end_sessions(dead)
        return len(dead)

    async def tick(self) -> int:
        """Every sweep chore once; how many things were ended."""
        ended = await self.end_expired()
        ended += await self.sweep() + await self.sweep_app_links()
        return ended + await self.sweep_tunnels()

    async def end_expired(self) -> int:
        """End memberships and app links that reached their end date, with their traffic."""
        expired = await self.accounts.sharing.end_expired()
        for user_id, instance_id in expired.members:
            self.gate.end_user(user_id, instance_id=instance_id, why=Ending.ACCESS_WITHDRAWN)
        for link_id, _instance_id in expired.app_links:
            if self.app_links is not None:
                self.app_links.forget_link(link_id)
            self.gate.live.end_app_link(link_id)
        ended = len(expired.members) + len(expired.app_links)
        if ended:
            log.info(
                "relay.sweep_ended_expired",
                extra={"members": len(expired.members), "app_links": len(expired.app_links)},
            )
        return ended

    async def sweep_app_links(self) -> int:
        """Cut the open traffic of app links that no longer work; how many links."""
        open_ids = self.gate.live.app_link_ids()
        if not open_ids:
            return 0
        dead = open_ids - await self.accounts.sharing.live_app_link_ids(open_ids)
        for link_id in dead:
            if self.app_links is not None:
                self.app_links.forget_link(link_id)
            self.gate.live.end_app_link(link_id)
        if dead:
            log.info("relay.sweep_ended_app_links", extra={"app_links": len(dead)})
        return len(dead)

    async def sweep_tunnels(self) -> int:
        """Close the tunnels of homes unlinked elsewhere (and cut their traffic); how many."""
        if self.hub is None or not self.hub.tunnels:
            return 0
        live = set(self.hub.tunnels)
        gone = live - await self.accounts.instances.existing(live)
        for instance_id in gone:
            if self.app_links is not None:
                self.app_links.forget_instance(instance_id)
            self.gate.end_instance(instance_id)
            await self.hub.close_instance(instance_id)
        if gone:
            log.info("relay.sweep_closed_tunnels", extra={"tunnels": len(gone)})
        return len(gone)

    async def purge(self) -> int:
        rows = await self.accounts.purge_expired()
        rows += await self.accounts.audit.purge()
        log.info("relay.purged", extra={"rows": rows})
        return rows

    async def alert(self) -> int:
        """Mail the owners whose homes crossed their offline time, or came back; how many.

        The outage is marked only once its mail is queued, so a full outbox means
        a retry next round, never a lost or a doubled mail.
        """
        if self.mail is None:
            return 0
        outbox, writer = self.mail
        alerts = self.accounts.offline_alerts
        gone, back = await alerts.due()
        sent = 0
        for outage in gone:
            mail = writer.home_offline(
                outage.owner_email,
                home=outage.name,
                since=outage.since,
                manage_url=self.manage_url(outage.instance_id),
            )
            if outbox.post(mail):
                await alerts.mailed(outage.instance_id, offline=True)
                sent += 1
        for outage in back:
            assert outage.back_at is not None
            mail = writer.home_back(
                outage.owner_email,
                home=outage.name,
                since=outage.since,
                back=outage.back_at,
                manage_url=self.manage_url(outage.instance_id),
            )
            if outbox.post(mail):
                await alerts.mailed(outage.instance_id, offline=False)
                sent += 1
        if sent:
            log.info("relay.offline_alerts_mailed", extra={"mails": sent})
        return sent

    async def _every(
        self,
        seconds: float | Callable[[], float],
        chore: Callable[[], Awaitable[int]],
        name: str,
        *,
        wake: asyncio.Event | None = None,
    ) -> None:
        interval = seconds if callable(seconds) else lambda: seconds
        while True:
            if wake is None:
                await asyncio.sleep(interval())
            else:  # or earlier, when woken (sweep_soon)
                await wait_for_event(wake, interval())
                wake.clear()
            try:
                await chore()
            except asyncio.CancelledError:
                raise
            except DATABASE_ERRORS as exc:
                # Down or restarting: nothing is cut for it; the next round tries again.
                log.warning(
                    "relay.housekeeping_deferred",
                    extra={"chore": name, "error": type(exc).__name__},
                )
            except Exception:
                log.exception("relay.housekeeping_failed", extra={"chore": name})
