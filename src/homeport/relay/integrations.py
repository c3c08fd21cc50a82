"""Integrations past the gate: a home's switches, cached, and the limits of such calls.

When a home's owner turns on webhooks or voice assistants
(:mod:`homeport.accounts.integrations`), a request on the home's address that
carries no Homeport session but *exactly* matches one of those paths
(:mod:`homeport.relay.integration_paths`) goes to Home Assistant, which
authenticates it itself.  Like an app link (:mod:`homeport.relay.app_links`),
it is admitted without a session, so it gets its own rules.

Threats this stops:

* **A flood through an open door.** Anyone who learns a home's address can
  call these paths.  Each home has its own token bucket of calls
  (``integration_rate`` per second, ``integration_burst`` at once: more get
  ``429``) and its own cap on calls open at once
  (``integration_max_requests``), separate from the slots its people use, so
  a flood of webhook calls neither reaches Home Assistant unbounded nor
  crowds out the owner's own browser, and other homes never notice it.  The
  per-address cap of every tenant request still applies.
* **Oversized bodies.** A call's body is capped at ``integration_max_body``
  (1 MiB by default; webhook payloads and smart-home directives are a few
  KiB) instead of the 16 GiB a signed-in backup upload may need.
* **Access that outlives the owner's "off".** The switches are cached for a
  few seconds (:data:`CACHE_TTL`); turning one off here drops the cache and
  cuts the calls of that kind still open at once
  (:meth:`homeport.relay.live.LiveTraffic.end_integrations`); unlinking a home
  cuts everything on it.  On a relay that is one node of several, the other
  nodes hear of it over Redis (:mod:`homeport.relay.cluster`); while a node
  cannot hear (:attr:`IntegrationGate.trust_cache` is False) it neither reads
  nor fills the cache.
* **An audit log flooded, or leaking.** Calls are audited as metadata (the
  kind of path, the time, the caller's address), one event per kind and
  address per :data:`AUDIT_COALESCE` seconds, written in the
  background with a bounded backlog, so the database sees a bounded number of
  writes however hard the door is knocked on.  Never the webhook id or a body.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from homeport.accounts.integrations import IntegrationSettings, Switches
from homeport.relay.config import RelayConfig
from homeport.relay.integration_paths import IntegrationPath, Switch
from homeport.relay.limits import Slots, TokenBucket

log = logging.getLogger(__name__)

CACHE_TTL: Final = 5.0
CACHE_SIZE: Final = 20_000
#: Calls of one kind from one address within this many seconds make one audit event.
AUDIT_COALESCE: Final = 60.0
#: Audit writes waiting at most; beyond it calls are still logged, not audited.
AUDIT_BACKLOG: Final = 64


class IntegrationGate:
    """The switches of each home (cached), and the limits of calls (see module docstring)."""

    def __init__(
        self, config: RelayConfig, settings: IntegrationSettings, *, ttl: float = CACHE_TTL
    ) -> None:
        self._config = config
        self._settings = settings
        self._ttl = ttl
        self._cache: OrderedDict[str, tuple[Switches, float]] = OrderedDict()
        #: Bumped by every forget: a lookup that started before one is not cached.
        self._generation = 0
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        #: Calls open at once per home (its own, not the home's people's slots).
        self.slots = Slots(config.integration_max_requests)
        #: (home, kind, address) -> when its last audit event was written.
        self._audited: dict[tuple[str, str, str], float] = {}
        self._audit_tasks: set[asyncio.Task[None]] = set()
        #: Whether an owner's "off" made on another node reaches this one; while
        #: False the switches are read from the database every time.
        self.trust_cache: Callable[[], bool] = _always

    @property
    def max_body(self) -> int:
        return self._config.integration_max_body

    # --------------------------------------------------------------- switches

    def cached(self, instance_id: str) -> Switches | None:
        """The home's switches from the cache alone; None: ask :meth:`switches`."""
        if not self.trust_cache():
            return None
        hit = self._cache.get(instance_id)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        return None

    async def switches(self, instance_id: str) -> Switches:
        """The home's switches, from the cache or the database."""
        hit = self.cached(instance_id)
        if hit is not None:
            return hit
        generation = self._generation
        found = await self._settings.get(instance_id)
        if generation == self._generation and self.trust_cache():
            self._cache[instance_id] = (found, time.monotonic() + self._ttl)
            self._cache.move_to_end(instance_id)
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return found

    def forget(self, instance_id: str) -> None:
        """The home's switches changed (or it was unlinked): ask the database next time."""
        self._generation += 1
        self._cache.pop(instance_id, None)
        self._buckets.pop(instance_id, None)

    def clear(self) -> None:
        """Forget every home's switches (news of changes may have been missed)."""
        self._generation += 1
        self._cache.clear()

    @staticmethod
    def allows(switches: Switches, path: IntegrationPath) -> bool:
        if path.switch is Switch.WEBHOOKS:
            return switches.webhooks
        return switches.voice

    # ----------------------------------------------------------------- limits

    def take_call(self, instance_id: str) -> bool:
        """Book one call on the home's bucket; False: over its rate (answer 429)."""
        bucket = self._buckets.get(instance_id)
        if bucket is None:
            rate, burst = self._config.integration_rate, self._config.integration_burst
            bucket = self._buckets[instance_id] = TokenBucket(rate, max(1, burst))
            if len(self._buckets) > CACHE_SIZE:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(instance_id)
        return bucket.try_take(1)

    # ------------------------------------------------------------------ audit

    def audit(self, instance_id: str, path: IntegrationPath, remote: str) -> None:
        """Record a call (metadata only) in the background: one event per home, kind and
        address per :data:`AUDIT_COALESCE` seconds (the calls in between are the same story)."""
        now = time.monotonic()
        key = (instance_id, path.value, remote)
        since = self._audited.get(key)
        if since is not None and now - since < AUDIT_COALESCE:
            return
        if len(self._audited) > CACHE_SIZE:
            self._audited.clear()
        self._audited[key] = now
        if len(self._audit_tasks) >= AUDIT_BACKLOG:
            log.warning("integration.audit_dropped", extra={"instance": instance_id})
            return
        task = asyncio.ensure_future(self._record(instance_id, path, remote))
        self._audit_tasks.add(task)
        task.add_done_callback(self._audit_tasks.discard)

    async def _record(self, instance_id: str, path: IntegrationPath, remote: str) -> None:
        try:
            await self._settings.record_call(instance_id, path.value, remote)
        except Exception:
            log.exception("integration.audit_failed", extra={"instance": instance_id})

    async def drain(self) -> None:
        """Wait for the audit writes under way (the relay is stopping, or a test checks)."""
        while self._audit_tasks:
            await asyncio.gather(*list(self._audit_tasks), return_exceptions=True)


def _always() -> bool:
    return True
