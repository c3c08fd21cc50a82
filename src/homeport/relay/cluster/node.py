"""One relay node of several: withdrawals fanned out to the others, and fail-closed caches.

A relay started with ``--redis-url`` is a node of a cluster that shares one
PostgreSQL database. Everything that ends access on one node must end it on
all of them within a second (a person signed out on node A may hold a live
WebSocket through node B). So:

* every withdrawal made here (:class:`~homeport.relay.live.Withdrawal`, from
  an ``end_*`` method of :class:`~homeport.relay.live.LiveTraffic`) is
  published on the Redis channel (:mod:`homeport.relay.cluster.channel`),
  sealed with the cluster key (:mod:`homeport.relay.cluster.messages`);
* a home linked here is announced (a :class:`LinkedNotice`, the add-on key's
  fingerprint only), so an add-on waiting for its link on another node is
  told at once rather than at that node's next database poll;
* every withdrawal heard from another node is applied here by
  :meth:`ClusterNode.apply`: the session gate's, app-link and integration
  caches drop what it ends, the open traffic it ends is cut, and an unlinked
  home's tunnel held here is closed.

**Fail closed.** The 5 s caches of the session gate, the app links and the
integration switches are safe only while this node hears every revocation.
While the channel is down (Redis stopped, unreachable, or not answering
pings: :attr:`RevocationChannel.up` is False), this node:

* neither reads nor fills those caches: every tenant request asks the
  database, so a session revoked anywhere is refused from its next request;
* sweeps its open traffic against the database every second
  (:data:`homeport.relay.housekeeping.DEGRADED_SWEEP_SECONDS`), so a live
  WebSocket of a revoked session is cut within about a second;
* keeps serving: people with valid sessions notice nothing but a little
  latency (one indexed lookup per request). Refusing everything instead would
  turn a Redis outage into a full outage for no gain in safety.

When the channel comes back, every cache is emptied (news sent meanwhile was
lost) and one sweep runs at once. A node starts with the channel down and so
serves from the database until its first subscription stands.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from homeport.relay.app_links import AppLinkGate
from homeport.relay.cluster.channel import RevocationChannel
from homeport.relay.cluster.messages import LinkedNotice, Sealer
from homeport.relay.cluster.presence import PresenceDirectory
from homeport.relay.cluster.sealed import KEY_MIN_BYTES
from homeport.relay.gate import SessionGate
from homeport.relay.integrations import IntegrationGate
from homeport.relay.live import Kind, Withdrawal

#: GOAWAY reason when another node asked for this home's tunnel: the add-on redials at once.
GOAWAY_MOVE = "move"

__all__ = ["ClusterNode", "load_cluster_key", "new_node_id"]

log = logging.getLogger(__name__)


class Tunnels(Protocol):
    async def close_instance(self, instance_id: str, reason: str = "unlinked") -> bool: ...
    async def retire(self, instance_id: str, reason: str = ...) -> bool: ...

    def wake_linked(self, fingerprint: str) -> None: ...


class Links(Protocol):
    def on_linked(self, listener: Callable[[str], None]) -> None: ...


class Sweeper(Protocol):
    degraded: bool

    def sweep_soon(self) -> None: ...


def load_cluster_key(path: Path) -> bytes:
    """The cluster key: the file's bytes without surrounding whitespace, at least 32.

    Any text will do (``openssl rand -base64 48`` makes a good one); every node
    of a cluster must have the same file. ``ValueError`` says what is wrong.
    """
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"--cluster-key-file {path}: {exc.strerror}") from None
    if len(key) < KEY_MIN_BYTES:
        raise ValueError(
            f"--cluster-key-file {path}: a cluster key needs at least {KEY_MIN_BYTES} bytes "
            "(make one with: openssl rand -base64 48)"
        )
    return key


def new_node_id(name: str = "node") -> str:
    """A name for this process in the cluster's messages and logs (random, not secret)."""
    return f"{name}-{secrets.token_hex(6)}"


class ClusterNode:
    """Wires the channel to this node's gate, caches, live traffic, tunnels and sweep."""

    def __init__(
        self,
        redis_url: str,
        key: bytes,
        *,
        gate: SessionGate,
        app_links: AppLinkGate,
        integrations: IntegrationGate,
        hub: Tunnels,
        sweeper: Sweeper,
        links: Links | None = None,
        node_id: str | None = None,
        connected_before: Callable[[datetime], Awaitable[Sequence[str]]] | None = None,
        mark_disconnected: Callable[[Sequence[str]], Awaitable[None]] | None = None,
    ) -> None:
        self.gate = gate
        self.app_links = app_links
        self.integrations = integrations
        self.hub = hub
        self.sweeper = sweeper
        self.node_id = node_id or new_node_id()
        self.channel = RevocationChannel(
            redis_url,
            Sealer(key, channel="homeport:withdrawals"),
            node=self.node_id,
            on_withdrawal=self.apply,
            on_change=self._changed,
            on_linked=self._heard_linked,
        )
        self._closing: set[asyncio.Task[bool]] = set()
        #: Which node holds which home's tunnel (relay/cluster/presence.py).
        self.presence = PresenceDirectory(
            redis_url,
            key,
            node=self.node_id,
            retire=self._retire,
            move=self._move,
            connected_before=connected_before,
            mark_disconnected=mark_disconnected,
        )
        trusted: Callable[[], bool] = lambda: self.channel.up  # noqa: E731
        gate.trust_cache = trusted
        app_links.trust_cache = trusted
        integrations.trust_cache = trusted
        gate.live.on_withdrawn = self.channel.publish
        if links is not None:
            # A home linked here: an add-on waiting on another node hears it at once.
            links.on_linked(lambda key: self.channel.publish(LinkedNotice.of_key(key)))

    def start(self) -> None:
        # Until the channel is up the caches are off, so sweep as if degraded.
        self.sweeper.degraded = True
        self.channel.start()
        self.presence.start()
        log.info("cluster.node_started", extra={"node": self.node_id})

    async def stop(self) -> None:
        await self.presence.stop()
        await self.channel.stop()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def apply(self, withdrawal: Withdrawal) -> None:
        """A withdrawal made on another node: drop what it ends here and cut its traffic."""
        w = withdrawal
        self.gate.forget(w)
        if w.kind is Kind.APP_LINK and w.app_link_id is not None:
            self.app_links.forget_link(w.app_link_id)
        elif w.kind is Kind.INSTANCE and w.instance_id is not None:
            self.app_links.forget_instance(w.instance_id)
            self.integrations.forget(w.instance_id)
        elif w.kind is Kind.INTEGRATIONS and w.instance_id is not None:
            self.integrations.forget(w.instance_id)
        cut = self.gate.live.cut(w)
        if w.kind is Kind.INSTANCE and w.instance_id is not None:
            self._background(self.hub.close_instance(w.instance_id))
        log.info("cluster.withdrawal_applied", extra={"kind": w.kind.value, "exchanges": cut})

    def _heard_linked(self, notice: LinkedNotice) -> None:
        self.hub.wake_linked(notice.key_fingerprint)

    async def _retire(self, instance_id: str) -> None:
        await self.hub.retire(instance_id)

    async def _move(self, instance_id: str) -> None:
        await self.hub.retire(instance_id, reason=GOAWAY_MOVE)

    def _background(self, work: Coroutine[Any, Any, bool]) -> None:
        task = asyncio.ensure_future(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _changed(self, up: bool) -> None:
        """The channel went up or down: whatever was cached may have missed news."""
        self.gate.clear()
        self.app_links.clear()
        self.integrations.clear()
        self.sweeper.degraded = not up
        self.sweeper.sweep_soon()
