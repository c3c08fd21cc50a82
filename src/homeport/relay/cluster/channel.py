"""The Redis pub/sub channel that carries withdrawals between relay nodes.

One subscriber connection hears every node's withdrawals (and "linked"
notices, :class:`~homeport.relay.cluster.messages.LinkedNotice`, which only
wake an add-on waiting for its link code); one publisher connection sends
this node's. :attr:`RevocationChannel.up` says whether this
node is *sure* it hears them: it is True only while the subscription stands
and Redis answers a ping every :data:`HEARTBEAT` seconds. The caches that a
missed revocation would leave stale follow it (fail closed,
:mod:`homeport.relay.cluster.node`).

Threat this stops: a node that silently stops hearing revocations and keeps
serving sessions from its cache. Three ways that could happen, and what
notices each:

* Redis stops or restarts: the subscriber's read fails at once (the
  connection is closed); the channel goes down and reconnects with a backoff.
* Redis or the network hangs without closing anything: no pong within
  :data:`DEAD_AFTER` seconds; the channel goes down.
* The client library reconnects by itself inside one read (redis-py
  re-subscribes quietly on a new connection): a second ``subscribe``
  confirmation on one connection means news may have been lost in between,
  so it counts as down-and-up, like the others.

Every transition is told to ``on_change``. Messages are opened and checked by
:class:`~homeport.relay.cluster.messages.Sealer` and
:class:`~homeport.relay.cluster.sealed.ReplayGuard`; a refused one is logged
(``cluster.message_refused`` with the reason, never its bytes) and counted.

Publishing never blocks the caller: a withdrawal is sealed at once and queued
(at most :data:`QUEUE` of them); the sender retries while Redis is away and
drops what would arrive too old to be accepted. A node that cannot publish
can at worst leave the others on their 5 s caches and 5 s sweep
(:mod:`homeport.relay.housekeeping`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from homeport.relay.cluster.messages import MAX_AGE, LinkedNotice, RefusedMessage, Sealer
from homeport.relay.cluster.sealed import ReplayGuard
from homeport.relay.live import Withdrawal
from homeport.waits import cancel_and_wait

log = logging.getLogger(__name__)

#: The pub/sub channel name (the HMAC covers it too).
CHANNEL: Final = "homeport:withdrawals"
#: Seconds between pings on the subscriber connection.
HEARTBEAT: Final = 0.25
#: No pong (or no subscription) for this long: the channel is down.
DEAD_AFTER: Final = 1.0
#: Connect and publish timeout, seconds.
CONNECT_TIMEOUT: Final = 1.0
#: Reconnect backoff: from the first value, doubling up to the second.
BACKOFF: Final = (0.1, 2.0)
#: Withdrawals waiting to be published at most (the oldest go first).
QUEUE: Final = 10_000
#: A withdrawal not published within this many seconds is dropped: it would
#: arrive too old to be accepted (ReplayGuard), and the sweep covers it.
PUBLISH_WITHIN: Final = MAX_AGE / 2


class ChannelDown(ConnectionError):
    """The subscription cannot be trusted any more (no pong, or a silent reconnect)."""


class RevocationChannel:
    """This node's end of the withdrawal channel (see the module docstring)."""

    def __init__(
        self,
        url: str,
        sealer: Sealer,
        *,
        node: str,
        on_withdrawal: Callable[[Withdrawal], None],
        on_change: Callable[[bool], None],
        on_linked: Callable[[LinkedNotice], None] | None = None,
        channel: str = CHANNEL,
        heartbeat: float = HEARTBEAT,
        dead_after: float = DEAD_AFTER,
    ) -> None:
        self._url = url
        self._sealer = sealer
        self.node = node
        self._on_withdrawal = on_withdrawal
        self._on_change = on_change
        self._on_linked = on_linked
        self.channel = channel
        self._heartbeat = heartbeat
        self._dead_after = dead_after
        self._guard = ReplayGuard(max_age=MAX_AGE)
        #: Whether this node hears every withdrawal right now.
        self.up = False
        #: Messages refused (forged, replayed, malformed) since start.
        self.refused = 0
        self._pending: collections.deque[tuple[float, bytes]] = collections.deque()
        self._wake_sender = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._was_up = False
        self._up_event = asyncio.Event()

    # --------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._listen(), name="cluster-listen"),
            asyncio.create_task(self._send(), name="cluster-send"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        # Not one cancel() each: the Redis client's timeouts can turn a cancellation
        # into a TimeoutError these loops retry on (homeport/waits.py).
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
        self.up = False
        self._up_event.clear()

    async def wait_up(self, timeout: float) -> None:
        """Until the channel is up (tests, start-up); TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout):
            await self._up_event.wait()

    # ------------------------------------------------------------- publishing

    def publish(self, news: Withdrawal | LinkedNotice) -> None:
        """Seal ``news`` now and queue it for every other node."""
        data = self._sealer.seal(news, node=self.node, now=time.time())
        if len(self._pending) >= QUEUE:
            self._pending.popleft()
            log.warning("cluster.publish_dropped", extra={"why": "queue full"})
        self._pending.append((time.monotonic(), data))
        self._wake_sender.set()

    async def _send(self) -> None:
        client = self._client(socket_timeout=CONNECT_TIMEOUT)
        backoff = BACKOFF[0]
        try:
            while True:
                await self._wake_sender.wait()
                self._wake_sender.clear()
                while self._pending:
                    queued_at, data = self._pending[0]
                    if time.monotonic() - queued_at > PUBLISH_WITHIN:
                        self._pending.popleft()
                        log.warning("cluster.publish_dropped", extra={"why": "too old"})
                        continue
                    try:
                        await client.publish(self.channel, data)
                    except (RedisError, OSError, TimeoutError) as exc:
                        log.warning("cluster.publish_failed", extra={"error": type(exc).__name__})
                        await asyncio.sleep(backoff)
                        backoff = min(BACKOFF[1], backoff * 2)
                        continue
                    self._pending.popleft()
                    backoff = BACKOFF[0]
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    # -------------------------------------------------------------- listening

    def _client(self, **options: Any) -> aioredis.Redis:
        # No retries inside the library: every failure must reach us, so that a
        # gap in the subscription is never papered over (see the module docstring).
        return aioredis.Redis.from_url(
            self._url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            **options,
        )

    async def _listen(self) -> None:
        delay = BACKOFF[0]
        while True:
            client = self._client()
            pubsub = client.pubsub()
            self._was_up = False
            try:
                await self._subscription(pubsub)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError, ChannelDown) as exc:
                log.warning("cluster.channel_down", extra={"error": type(exc).__name__})
            except Exception:
                log.exception("cluster.channel_failed")
            finally:
                self._set_up(False)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()
            # Quickly back after a subscription that worked; slower while Redis stays away.
            delay = BACKOFF[0] if self._was_up else min(BACKOFF[1], delay * 2)
            await asyncio.sleep(delay)

    async def _subscription(self, pubsub: Any) -> None:
        """Serve one subscription until it fails (raises); marks the channel up while sure."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await pubsub.subscribe(self.channel)
        confirmations = 0
        last_pong = last_ping = loop.time()
        while True:
            message = await pubsub.get_message(timeout=self._heartbeat / 2)
            now = loop.time()
            if message is not None:
                kind = message["type"]
                if kind == "subscribe":
                    confirmations += 1
                    if confirmations > 1:
                        raise ChannelDown("re-subscribed on a new connection")
                    last_pong = now
                    self._was_up = True
                    self._set_up(True)
                elif kind == "message":
                    self._receive(message["data"])
                elif kind == "pong":
                    last_pong = now
            if now - last_ping >= self._heartbeat:
                await pubsub.ping()
                last_ping = now
            if now - last_pong > self._dead_after:
                raise ChannelDown("no answer from Redis")

    def _set_up(self, up: bool) -> None:
        if up == self.up or self._stopping:
            return
        self.up = up
        if up:
            self._up_event.set()
        else:
            self._up_event.clear()
        log.log(
            logging.INFO if up else logging.WARNING,
            "cluster.channel_up" if up else "cluster.channel_lost",
            extra={"node": self.node},
        )
        try:
            self._on_change(up)
        except Exception:
            log.exception("cluster.on_change_failed")

    def _receive(self, data: object) -> None:
        if not isinstance(data, bytes):
            return
        try:
            envelope = self._sealer.open(data)
            self._guard.check(envelope, time.time())
        except RefusedMessage as refused:
            self.refused += 1
            log.warning("cluster.message_refused", extra={"reason": refused.reason})
            return
        if envelope.node == self.node:
            return  # our own: applied when it was made
        news = envelope.news
        try:
            if isinstance(news, LinkedNotice):
                if self._on_linked is not None:
                    self._on_linked(news)
            else:
                self._on_withdrawal(news)
        except Exception:
            log.exception("cluster.news_failed", extra={"kind": type(news).__name__})
