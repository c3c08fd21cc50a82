"""Per-tenant and per-client limits on tenant hosts (R-MT-11): one home cannot starve others.

Threats this stops:

* **One client hogging the relay**: a single address holding hundreds of
  requests or WebSockets open on tenant hosts (signed in or not) gets ``429``
  once it holds ``client_max_requests``; other addresses are unaffected.
* **One home hogging the relay**: a signed-in home's requests and WebSockets
  beyond ``tenant_max_requests`` get ``503``.  Only requests that passed the
  tenant gate count, so strangers cannot use up a home's share.
* **One home saturating the relay's bandwidth**: every byte proxied for a home
  (both directions, HTTP bodies and WebSocket messages) passes a token bucket
  of that home (``tenant_bandwidth`` bytes/s per direction), so a home
  streaming flat out gets its share and leaves the rest to everyone else.
* **Oversized uploads**: a request body over ``max_body_bytes`` is refused
  with ``413`` (announced length) or cut off when it gets there (chunked).

All limits are in-memory and per relay process; the counters hold nothing but
counts keyed by instance id or client address.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from homeport.relay.config import RelayConfig

__all__ = ["BodyTooLarge", "Slots", "TenantLimits", "TokenBucket"]

#: How long a refused client is asked to wait before trying again.
RETRY_AFTER_SECONDS = 5


class BodyTooLarge(Exception):
    """A request body went past ``max_body_bytes``."""


class TokenBucket:
    """Bytes per second with a burst allowance; ``rate <= 0`` means unlimited.

    Takers may drive the balance below zero and then sleep off the debt, so
    several streams of one home share its rate in the order they asked, and a
    chunk larger than the burst still passes (after its wait).
    """

    def __init__(
        self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def charge(self, amount: int) -> float:
        """Book ``amount`` bytes now; the seconds the caller must wait before sending them."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def take(self, amount: int) -> None:
        delay = self.charge(amount)
        if delay > 0:
            await asyncio.sleep(delay)


class Slots:
    """Concurrent holders per key, at most ``limit`` each (``limit <= 0``: no limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[bool]:
        """Yields whether a slot was free; a granted slot is released on exit."""
        count = self._held.get(key, 0)
        if self.limit > 0 and count >= self.limit:
            yield False
            return
        self._held[key] = count + 1
        try:
            yield True
        finally:
            left = self._held[key] - 1
            if left:
                self._held[key] = left
            else:
                del self._held[key]


@dataclass
class Bandwidth:
    """One home's buckets: towards the browser and towards the home."""

    down: TokenBucket
    up: TokenBucket


class TenantLimits:
    """The limits of one relay process, from its configuration."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.clients = Slots(config.client_max_requests)
        self.tenants = Slots(config.tenant_max_requests)
        self._bandwidth: dict[str, Bandwidth] = {}

    def bandwidth(self, instance_id: str) -> Bandwidth:
        found = self._bandwidth.get(instance_id)
        if found is None:
            rate, burst = self.config.tenant_bandwidth, self.config.tenant_burst
            found = Bandwidth(TokenBucket(rate, burst), TokenBucket(rate, burst))
            self._bandwidth[instance_id] = found
        return found

    def body_too_large(self, length: int | None) -> bool:
        limit = self.config.max_body_bytes
        return limit > 0 and length is not None and length > limit

    def count_body(self, so_far: int) -> None:
        """Raise :class:`BodyTooLarge` once a streamed body passes the limit."""
        limit = self.config.max_body_bytes
        if limit > 0 and so_far > limit:
            raise BodyTooLarge(f"request body over {limit} bytes")


_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: object, *, option: str) -> int:
    """``"16G"``, ``"512m"``, ``"4096"`` or an int -> bytes (binary units); 0 = no limit.

    Raises ``ValueError`` naming ``option`` for anything else, so a typo in a
    limit stops the relay at start-up instead of silently meaning "unlimited".
    """
    if isinstance(value, int) and not isinstance(value, bool):
        number, unit = value, ""
    else:
        text = str(value).strip().lower().removesuffix("ib").removesuffix("b")
        unit = text[-1] if text and text[-1] in "kmgt" else ""
        digits = text[: -len(unit)] if unit else text
        if not digits.isdigit():
            raise ValueError(f"{option}: not a size: {value!r} (use e.g. 4096, 512M, 16G, 0)")
        number = int(digits)
    if number < 0:
        raise ValueError(f"{option}: must not be negative: {value!r}")
    return number * _UNITS[unit]
