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
* **Trickling uploads** (slow POST, CAPEC-469; R-MT-14): a body that moves
  less than ``upload_min_bytes`` per ``upload_window`` seconds of waiting for
  the client is cut (:class:`UploadPace`), so a client sending one byte now
  and then cannot hold a request, its slot and a file descriptor for hours.
  Time the relay itself is held up (the home reading slowly, the bandwidth
  cap) is not the client's fault and does not count.

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

__all__ = [
    "BodyCut",
    "BodyTooLarge",
    "BodyTooSlow",
    "MinimumRate",
    "Slots",
    "TenantLimits",
    "TokenBucket",
    "UploadPace",
]

#: How long a refused client is asked to wait before trying again.
RETRY_AFTER_SECONDS = 5


class BodyTooLarge(Exception):
    """A request body went past ``max_body_bytes``."""


class BodyCut(TimeoutError):
    """The relay stopped reading a request body: it answered without the rest.

    Set it on aiohttp's request stream (``request.content.set_exception``) before
    answering.  It is a :class:`TimeoutError` on purpose: aiohttp reads what is
    left of an unfinished body for up to 10 s after the answer ("lingering
    close") and treats a timeout there as "stop and close", so the connection
    (and its file descriptor) goes at once instead of after a trickler's 10 s.
    """


class BodyTooSlow(BodyCut):
    """A request body fell below the minimum transfer rate, or missed its deadline."""


class MinimumRate:
    """The bookkeeping of a minimum transfer rate: ``min_bytes`` per ``window`` seconds.

    Counted on *waiting time* only (the clock runs between :meth:`wait` and
    :meth:`hold`): the client starts with one window of allowance, every
    ``min_bytes`` it delivers buy another window, and at most one window can be
    banked, so a burst early on does not pay for a long stall later.  A body
    moving below the rate therefore runs out within one window of falling
    behind; one moving at or above it never does.  ``min_bytes <= 0`` or
    ``window <= 0``: no minimum.
    """

    def __init__(
        self, min_bytes: int, window: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.min_bytes = min_bytes
        self.window = window
        self._clock = clock
        self._allowance = window
        self._since: float | None = None  # when the current wait began; None: not waiting

    @property
    def enabled(self) -> bool:
        return self.min_bytes > 0 and self.window > 0

    def wait(self) -> None:
        """The relay waits for the client from now on: the clock runs."""
        if self._since is None:
            self._since = self._clock()

    def hold(self) -> None:
        """The relay is busy (not the client's fault): the clock stops."""
        self._settle()
        self._since = None

    def received(self, amount: int) -> None:
        """``amount`` bytes arrived: the time waited is spent, the bytes buy more."""
        self._settle()
        if self.enabled:
            credit = self.window * amount / self.min_bytes
            self._allowance = min(self.window, self._allowance + credit)

    def remaining(self) -> float:
        """Seconds of waiting left before the body counts as stalled."""
        waited = 0.0 if self._since is None else self._clock() - self._since
        return self._allowance - waited

    def stalled(self) -> bool:
        return self.enabled and self.remaining() <= 0

    def _settle(self) -> None:
        if self._since is not None:
            now = self._clock()
            self._allowance -= now - self._since
            self._since = now


class UploadPace:
    """Enforces a :class:`MinimumRate` on one request body, with a timer.

    The upload loop calls :meth:`received` for every chunk and wraps what is
    not the client's doing (writing into the tunnel, the bandwidth bucket) in
    :meth:`paused`; a timer runs while the loop waits for the client and calls
    ``on_stall`` once when the allowance is spent, so a body that stops
    altogether is cut as surely as one that trickles.  ``on_stall`` must make
    the pending read fail (e.g. ``StreamReader.set_exception(BodyTooSlow())``)
    so the loop ends and resets its stream.  Use as a context manager around
    the loop; a disabled rate does nothing.
    """

    def __init__(self, rate: MinimumRate, on_stall: Callable[[], None]) -> None:
        self.rate = rate
        self._on_stall = on_stall
        self._timer: asyncio.TimerHandle | None = None
        self.stalled = False

    def __enter__(self) -> UploadPace:
        self.rate.wait()
        self._arm()
        return self

    def __exit__(self, *exc: object) -> None:
        self._disarm()
        self.rate.hold()

    def received(self, amount: int) -> None:
        self.rate.received(amount)
        self._arm()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The relay, not the client, holds the body up meanwhile: no time is charged."""
        self.hold()
        try:
            yield
        finally:
            self.resume()

    def hold(self) -> None:
        """From now on the relay holds the body up: the clock stops (see :meth:`paused`)."""
        self._disarm()
        self.rate.hold()

    def resume(self) -> None:
        """The relay waits for the client again: the clock runs."""
        self.rate.wait()
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        if self.rate.enabled and not self.stalled:
            delay = max(0.0, self.rate.remaining())
            self._timer = asyncio.get_running_loop().call_later(delay, self._check)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if not self.rate.stalled():
            self._arm()  # the loop's clock and the rate's differ by a hair: look again
            return
        self.stalled = True
        self._on_stall()


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

    def try_take(self, amount: int) -> bool:
        """Book ``amount`` now if the balance covers it; False (nothing booked) if not.

        For things that are refused rather than delayed (e.g. calls per second).
        """
        if self.rate <= 0:
            return True
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < amount:
            return False
        self._tokens -= amount
        return True

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

    def acquire(self, key: str) -> bool:
        """Take a slot if one is free; the holder must :meth:`release` it."""
        count = self._held.get(key, 0)
        if self.limit > 0 and count >= self.limit:
            return False
        self._held[key] = count + 1
        return True

    def release(self, key: str) -> None:
        left = self._held[key] - 1
        if left:
            self._held[key] = left
        else:
            del self._held[key]

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

    def bandwidth_for(self, instance_id: str) -> Bandwidth | None:
        """The home's buckets, or None when no bandwidth cap is set (nothing to charge)."""
        if self.config.tenant_bandwidth <= 0:
            return None
        return self.bandwidth(instance_id)

    def body_too_large(self, length: int | None) -> bool:
        limit = self.config.max_body_bytes
        return limit > 0 and length is not None and length > limit

    def upload_pace(self, on_stall: Callable[[], None]) -> UploadPace:
        """The minimum-rate guard of one body: ``upload_min_bytes`` per ``upload_window``."""
        rate = MinimumRate(self.config.upload_min_bytes, self.config.upload_window)
        return UploadPace(rate, on_stall)

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


def parse_seconds(value: object, *, option: str) -> float:
    """``"10"``, ``"2.5"`` or a number -> seconds (0 = off); anything else stops the relay."""
    try:
        seconds = float(str(value).strip().lower().removesuffix("s"))
    except ValueError:
        raise ValueError(
            f"{option}: not a number of seconds: {value!r} (use e.g. 10, 2.5, 0)"
        ) from None
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"{option}: must be a finite number of seconds >= 0: {value!r}")
    return seconds
