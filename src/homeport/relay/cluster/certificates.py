"""Certificate notices between relay nodes: "a newer certificate is in the store".

The node that renewed a certificate stores it in the database
(:mod:`homeport.tls.store`) and publishes a notice on ``homeport:certificates``;
every other node's keeper then looks at the store at once instead of at its next
poll (:meth:`CertificateKeeper.wake <homeport.tls.keeper.CertificateKeeper.wake>`).
The notice carries no certificate and no key, only the kind and version; the
store, checked by its sealed key, stays the only source of what is served.

Fail-safe: a lost notice (Redis down, a node reconnecting) costs at most one
poll interval, because the keeper also polls the store; a node that
(re)subscribes looks at the store at once, as it may have missed one.

Threat this stops: anyone who can publish on Redis making every node hit the
database over and over. Notices are sealed envelopes
(:mod:`~homeport.relay.cluster.sealed`, kind :data:`NOTICE`: HMAC-SHA256 with
the cluster key over the kind, the channel name and the exact payload) and
refused when forged, malformed or sealed more than :data:`MAX_AGE` seconds
ago or ahead (``cluster.certificate_notice_refused``, with the reason only).
A replayed fresh notice costs one indexed read per node, nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from homeport.relay.cluster.messages import MAX_AGE
from homeport.relay.cluster.sealed import RefusedMessage, Seal, SealedKind
from homeport.waits import cancel_and_wait

__all__ = ["CHANNEL", "NOTICE", "CertificateNotices", "NoticeSealer"]

log = logging.getLogger(__name__)

CHANNEL: Final = "homeport:certificates"
_KINDS: Final = ("account", "tenant")
CONNECT_TIMEOUT: Final = 1.0
BACKOFF: Final = (0.1, 5.0)
MAX_NOTICE: Final = 512
#: A certificate notice: which certificate (``kind``) has a newer ``version`` in the store.
NOTICE: Final = SealedKind(
    prefix=b"hc1:",
    domain=b"homeport cluster certificate notice v1\n",
    fields=frozenset({"kind", "version"}),
    max_size=MAX_NOTICE,
    max_age=MAX_AGE,
)


class NoticeSealer:
    """Seals and opens certificate notices with the cluster key."""

    def __init__(self, key: bytes, channel: str = CHANNEL) -> None:
        self._seal = Seal(key)
        self._channel = channel

    def seal(self, kind: str, version: int, *, node: str, now: float) -> bytes:
        fields = {"kind": kind, "version": version}
        return self._seal.seal(NOTICE, self._channel, fields, node=node, now=now)

    def open(self, data: bytes, now: float) -> tuple[str, str, int]:
        """``(node, kind, version)`` of a genuine, fresh notice; else :class:`RefusedMessage`."""
        opened = self._seal.open(NOTICE, self._channel, data, now=now)
        kind, version = opened.body["kind"], opened.body["version"]
        if kind not in _KINDS:
            raise RefusedMessage("bad kind")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise RefusedMessage("bad version")
        return opened.node, kind, version


class CertificateNotices:
    """This node's end of ``homeport:certificates`` (module docstring)."""

    def __init__(
        self,
        url: str,
        key: bytes,
        *,
        node: str,
        on_notice: Callable[[], None],
        channel: str = CHANNEL,
    ) -> None:
        self._url = url
        self._sealer = NoticeSealer(key, channel)
        self.node = node
        self._on_notice = on_notice
        self.channel = channel
        #: notices refused since start (forged, stale, malformed)
        self.refused = 0
        self.subscribed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None

    def _client(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self._url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=CONNECT_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )

    def start(self) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="certificate-notices")

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._listener] if self._listener else [])]
        for task in tasks:  # until each has ended (see homeport/waits.py)
            await cancel_and_wait(task)
        self._listener = None
        self._tasks.clear()

    def publish(self, kind: str, version: int) -> None:
        """Tell the other nodes (in the background; a lost notice costs one poll interval)."""
        data = self._sealer.seal(kind, version, node=self.node, now=time.time())
        task = asyncio.create_task(self._send(data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, data: bytes) -> None:
        client = self._client()
        try:
            await client.publish(self.channel, data)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("cluster.certificate_notice_failed", extra={"error": type(exc).__name__})
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _listen(self) -> None:
        delay = BACKOFF[0]
        while True:
            client = self._client()
            pubsub = client.pubsub()
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await pubsub.subscribe(self.channel)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        delay = BACKOFF[0]
                        self.subscribed.set()
                        self._on_notice()  # a notice may have been missed while away
                    elif message["type"] == "message":
                        self._receive(message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                log.info("cluster.certificate_notices_down", extra={"error": type(exc).__name__})
            finally:
                self.subscribed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(delay)
            delay = min(BACKOFF[1], delay * 2)

    def _receive(self, data: Any) -> None:
        if not isinstance(data, bytes):
            return
        try:
            node, kind, version = self._sealer.open(data, time.time())
        except RefusedMessage as refused:
            self.refused += 1
            log.warning("cluster.certificate_notice_refused", extra={"reason": refused.reason})
            return
        if node == self.node:
            return
        log.info("cluster.certificate_notice", extra={"kind": kind, "version": version})
        self._on_notice()
