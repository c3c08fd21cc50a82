"""Routing for app-link hosts ``<label>.<tenant-domain>``, with a small cache.

An app link opens one instance for a companion app without the browser
session gate (Home Assistant's own login still guards it). The label is
looked up by its SHA-256 (:meth:`Sharing.resolve_app_link`); answers are
cached for a few seconds so a busy app does not hit the database on every
request, and revoking a link in this process drops the cache entry at once.
Unknown labels are not cached (nothing to grow by probing), and get the
same answer as an unknown host from the router.

Fail closed: like the session gate's (:mod:`homeport.relay.gate`), the cache
is neither read nor filled while :attr:`AppLinkGate.trust_cache` says this
node may be missing revocations made on another (its Redis channel is down).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from homeport.accounts.sharing import AppLinkAccess, Sharing
from homeport.relay.config import RelayConfig

log = logging.getLogger(__name__)

CACHE_TTL = 5.0
CACHE_SIZE = 20_000
#: How often one link's "last used" is written at most (the database rule is the same).
TOUCH_INTERVAL = 60.0


def app_link_url(config: RelayConfig, label: str) -> str:
    """The address a companion app is given for an app link's host label."""
    return f"https://{label}.{config.tenant_domain}{config.port_suffix}"


class AppLinkGate:
    def __init__(self, sharing: Sharing, *, ttl: float = CACHE_TTL) -> None:
        self._sharing = sharing
        self._ttl = ttl
        self._cache: OrderedDict[bytes, tuple[AppLinkAccess, float]] = OrderedDict()
        self._touched: dict[int, float] = {}
        #: Whether revocations made elsewhere reach this process; while False the
        #: cache is neither read nor filled (see the module docstring).
        self.trust_cache: Callable[[], bool] = _always

    def cached(self, label: str) -> AppLinkAccess | None:
        """The live link from the cache alone, when no "last used" write is due; else None."""
        if not self.trust_cache():
            return None
        hit = self._cache.get(hashlib.sha256(label.encode()).digest())
        now = time.monotonic()
        if hit is None or hit[1] <= now:
            return None
        access = hit[0]
        if now - self._touched.get(access.link_id, -TOUCH_INTERVAL) >= TOUCH_INTERVAL:
            return None  # resolve() records the use
        return access

    async def resolve(self, label: str) -> AppLinkAccess | None:
        """The live link for a host label, or ``None``; records its use (rarely written)."""
        key = hashlib.sha256(label.encode()).digest()
        now = time.monotonic()
        hit = self._cache.get(key) if self.trust_cache() else None
        if hit is not None and hit[1] > now:
            self._cache.move_to_end(key)
            access = hit[0]
        else:
            found = await self._sharing.resolve_app_link(label)
            if found is None:
                self._cache.pop(key, None)
                return None
            access = found
            if self.trust_cache():
                self._cache[key] = (access, now + self._ttl)
                if len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        if now - self._touched.get(access.link_id, -TOUCH_INTERVAL) >= TOUCH_INTERVAL:
            self._touched[access.link_id] = now
            if len(self._touched) > CACHE_SIZE:
                self._touched.clear()
            await self._sharing.touch_app_link(access.link_id)
        return access

    def forget_link(self, link_id: int) -> None:
        for key in [k for k, v in self._cache.items() if v[0].link_id == link_id]:
            del self._cache[key]
        self._touched.pop(link_id, None)

    def forget_instance(self, instance_id: str) -> None:
        for key in [k for k, v in self._cache.items() if v[0].instance_id == instance_id]:
            del self._cache[key]

    def clear(self) -> None:
        """Forget every cached link (news of revocations may have been missed)."""
        self._cache.clear()


def _always() -> bool:
    return True
