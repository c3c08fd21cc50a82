"""The presence directory: which node holds which home's tunnel, in Redis, with expiry.

One key per home, ``homeport:presence:<instance-id>``, whose value names the
node holding its tunnel. The holder writes it when the tunnel registers
(:meth:`PresenceDirectory.claim`, unconditionally: the newest tunnel wins, as
on one node), rewrites it every :data:`REFRESH` seconds with a fresh time and
an expiry of :data:`TTL` seconds, and deletes it when the tunnel ends, but only
if it is still its own (compare-and-delete). So a record outlives its node by
at most :data:`TTL` seconds after a ``kill -9``.

The refresh is a compare-and-set on the value this node last wrote: when it
fails, another node has claimed the home since (the add-on moved: drained,
redialled after a GOAWAY, or moved to its tenant name after linking). This
node then retires its older tunnel (GOAWAY "replaced": open streams finish,
no new ones start), within :data:`REFRESH` seconds of the claim.

**Moves.** While membership changes (a node died, or came back and the
consistent-hash ring shifted back), a browser can reach node B while the
home's tunnel is on node A. B then asks A to move it
(:meth:`PresenceDirectory.request_move`): a sealed message on the Redis
channel ``homeport:moves`` naming A and the home. A retires its tunnel with
GOAWAY "move"; the add-on redials its tenant name at once and lands where
HAProxy now sends that name, B, while its old tunnel finishes its streams
(make-before-break). B holds the browser's request meanwhile
(:meth:`homeport.relay.hub.TunnelHub.await_tunnel`). Hysteresis: one move per
home per :data:`MOVE_EVERY` seconds, cluster-wide (a ``SET NX`` with expiry),
so two nodes with different views of the ring cannot bounce a home between
them faster than that.

What reads it: :meth:`PresenceDirectory.holder` (which node holds a home), and
the stale sweep (:meth:`PresenceDirectory.sweep_stale`), which marks
disconnected in the database the homes recorded as connected that no node
holds any more (a node killed with its tunnels), instead of every home at
start-up as a single relay does.

Threats this stops (anyone who can write to Redis, not only the nodes):

* **Forged records.** A record is a sealed envelope
  (:mod:`~homeport.relay.cluster.sealed`, kind :data:`RECORD`, ``hp1p:<HMAC>:<JSON>``);
  the HMAC-SHA256 is keyed by the cluster key and covers the kind, the *key
  name* and the payload, so a record made up, altered, or copied to another
  home's key is refused (:class:`~homeport.relay.cluster.sealed.RefusedMessage`)
  and treated as absent.
* **Forged or replayed move requests.** Sealed the same way (kind
  :data:`MOVE`, over the channel name), with a random id remembered for
  :data:`MAX_RECORD_AGE` seconds (a
  :class:`~homeport.relay.cluster.sealed.ReplayGuard`) and the same freshness
  bound: refused.
* **Replayed records.** Each carries the time it was written; one older than
  :data:`MAX_RECORD_AGE` (or from the future beyond the same bound) is refused,
  so a captured record cannot bring back a node's claim after it has gone.
* What a record can still do if a key holder forges one: nothing beyond
  advisory routing (it never grants access; tunnels are proven by the
  handshake and requests by the session gate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from homeport.relay.cluster.sealed import RefusedMessage, ReplayGuard, Seal, SealedKind
from homeport.waits import cancel_and_wait, wait_for_event

__all__ = [
    "MAX_RECORD_AGE",
    "MOVE",
    "RECORD",
    "REFRESH",
    "TTL",
    "MoveRequest",
    "PresenceDirectory",
    "PresenceRecord",
    "RecordSealer",
]

log = logging.getLogger(__name__)

KEY_PREFIX: Final = "homeport:presence:"
#: Seconds between the holder's rewrites of its records.
REFRESH: Final = 2.0
#: A record expires this many seconds after its last rewrite (its node is gone).
TTL: Final = 8.0
#: A record written longer ago than this (or further ahead) is refused.
MAX_RECORD_AGE: Final = TTL + 2.0
#: Homes recorded connected are checked against the directory this often.
SWEEP: Final = 30.0
#: Records read or written per Redis round trip.
BATCH: Final = 500
_INSTANCE_ID: Final = re.compile(r"[a-z2-7]{26}")
#: The channel carrying move requests between nodes.
MOVES: Final = "homeport:moves"
#: At most one move request per home in this many seconds, cluster-wide.
MOVE_EVERY: Final = 10.0
#: A presence record, sealed over the Redis key it is stored under.
RECORD: Final = SealedKind(
    prefix=b"hp1p:",
    domain=b"homeport cluster presence v1\n",
    fields=frozenset({"instance"}),
    max_size=1024,
    max_age=MAX_RECORD_AGE,
)
#: A move request on :data:`MOVES`: ``node`` (the holder) is asked to move ``instance``.
#: Framed like a record, but its own domain under the HMAC, and an id against replays.
MOVE: Final = replace(RECORD, domain=b"homeport cluster move v1\n", nonce=True)

#: Set KEYS[1] to ARGV[2] (expiry ARGV[3] ms) only if it still holds ARGV[1] or nothing.
_CAS_SET: Final = """
local now = redis.call('GET', KEYS[1])
if now == false or now == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
#: Delete KEYS[1] only if it still holds ARGV[1].
_CAS_DELETE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class PresenceRecord:
    instance_id: str
    node: str
    written_at: float


def key_for(instance_id: str) -> str:
    return KEY_PREFIX + instance_id


@dataclass(frozen=True, slots=True)
class MoveRequest:
    instance_id: str
    node: str
    sent_at: float
    nonce: str


class RecordSealer:
    """Seals and opens presence records and move requests (see the module docstring)."""

    def __init__(self, key: bytes) -> None:
        self._seal = Seal(key)

    def seal(self, instance_id: str, *, node: str, now: float) -> bytes:
        fields = {"instance": instance_id}
        return self._seal.seal(RECORD, key_for(instance_id), fields, node=node, now=now)

    def open(self, instance_id: str, data: bytes, *, now: float) -> PresenceRecord:
        """The record stored under ``instance_id``'s key, if genuine and fresh."""
        opened = self._seal.open(RECORD, key_for(instance_id), data, now=now)
        if opened.body["instance"] != instance_id:
            raise RefusedMessage("another home's record")
        return PresenceRecord(instance_id, opened.node, opened.sent_at)

    def seal_move(self, instance_id: str, *, node: str, now: float, nonce: str) -> bytes:
        """A request that ``node`` move ``instance_id``'s tunnel (see the module docstring)."""
        fields = {"instance": instance_id}
        return self._seal.seal(MOVE, MOVES, fields, node=node, now=now, nonce=nonce)

    def open_move(self, data: bytes, *, now: float) -> MoveRequest:
        """A genuine, fresh move request (replays are the reader's :class:`ReplayGuard`'s)."""
        opened = self._seal.open(MOVE, MOVES, data, now=now)
        instance = opened.body["instance"]
        if not isinstance(instance, str) or not _INSTANCE_ID.fullmatch(instance):
            raise RefusedMessage("bad instance")
        return MoveRequest(instance, opened.node, opened.sent_at, opened.nonce)


Retire = Callable[[str], Awaitable[None]]


class PresenceDirectory:
    """This node's records in the directory, and its reads of the others' records."""

    def __init__(
        self,
        url: str,
        key: bytes,
        *,
        node: str,
        retire: Retire,
        move: Retire | None = None,
        connected_before: Callable[[datetime], Awaitable[Sequence[str]]] | None = None,
        mark_disconnected: Callable[[Sequence[str]], Awaitable[None]] | None = None,
        refresh: float = REFRESH,
        ttl: float = TTL,
        sweep: float = SWEEP,
    ) -> None:
        self.node = node
        self._sealer = RecordSealer(key)
        self._redis = aioredis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
        self._retire = retire
        self._move = move
        #: Move requests already heard (replays).
        self._moves_heard = ReplayGuard(max_age=MAX_RECORD_AGE)
        self._listener: asyncio.Task[None] | None = None
        self._connected_before = connected_before
        self._mark_disconnected = mark_disconnected
        self._refresh = refresh
        self._ttl_ms = int(ttl * 1000)
        self._sweep_every = sweep
        #: Homes whose tunnel this node holds -> the record last written for it.
        self._held: dict[str, bytes] = {}
        #: Claims and releases not yet written, in order.
        self._pending: list[tuple[str, str, bytes]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        #: Since when every write has succeeded (None: the last one failed).
        self._healthy_since: float | None = None
        #: Records refused on read since start (forged, altered, replayed, malformed).
        self.refused = 0

    # --------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="cluster-presence")
        if self._listener is None and self._move is not None:
            self._listener = asyncio.create_task(self._listen(), name="cluster-moves")

    async def stop(self) -> None:
        """Stop refreshing; delete this node's records (a clean stop leaves none behind)."""
        for task in (self._task, self._listener):
            if task is not None:
                # Not one cancel(): a cancellation lost in the Redis client's own
                # timeouts left the writer going round and this stop waiting for ever.
                await cancel_and_wait(task)
        self._task = self._listener = None
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await self._write([("release", i, v) for i, v in self._held.items()])
        self._held.clear()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._redis.aclose()

    # ----------------------------------------------------------------- writes

    def claim(self, instance_id: str) -> None:
        """This node now holds ``instance_id``'s tunnel (written at once, in the background)."""
        value = self._sealer.seal(instance_id, node=self.node, now=time.time())
        self._held[instance_id] = value
        self._pending.append(("claim", instance_id, value))
        self._wake.set()

    def release(self, instance_id: str) -> None:
        """The tunnel ended here: delete the record if it is still ours."""
        value = self._held.pop(instance_id, None)
        if value is not None:
            self._pending.append(("release", instance_id, value))
            self._wake.set()

    @property
    def held(self) -> int:
        return len(self._held)

    # ------------------------------------------------------------------ reads

    async def holder(self, instance_id: str) -> str | None:
        """The node holding ``instance_id``'s tunnel by the directory; None if none (or forged)."""
        if instance_id in self._held:
            return self.node
        data = await self._redis.get(key_for(instance_id))
        return self._open(instance_id, data)

    def _open(self, instance_id: str, data: object) -> str | None:
        if not isinstance(data, bytes):
            return None
        try:
            return self._sealer.open(instance_id, data, now=time.time()).node
        except RefusedMessage as refused:
            self.refused += 1
            log.warning(
                "cluster.presence_refused",
                extra={"instance": instance_id, "reason": refused.reason},
            )
            return None

    async def request_move(self, instance_id: str) -> bool:
        """A browser reached this node for a home whose tunnel is on another: ask it to move.

        Nothing is asked when no live node holds it (the add-on is redialling
        anyway) or when a move of this home was asked in the last
        :data:`MOVE_EVERY` seconds (hysteresis). Whether a request was sent.
        """
        if self._move is None:
            return False
        holder = await self.holder(instance_id)
        if holder is None or holder == self.node:
            return False
        first = await self._redis.set(
            f"homeport:move:{instance_id}", self.node, nx=True, px=int(MOVE_EVERY * 1000)
        )
        if not first:
            return False
        nonce = secrets.token_hex(16)
        data = self._sealer.seal_move(instance_id, node=holder, now=time.time(), nonce=nonce)
        await self._redis.publish(MOVES, data)
        log.info("cluster.move_requested", extra={"instance": instance_id, "holder": holder})
        return True

    async def _listen(self) -> None:
        """Hear move requests naming this node; reconnect with a backoff while Redis is away."""
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(MOVES)
                delay = 0.1
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message["type"] == "message":
                        self._heard_move(message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("cluster.moves_down", extra={"error": type(exc).__name__})
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)

    def _heard_move(self, data: object) -> None:
        if not isinstance(data, bytes):
            return
        now = time.time()
        try:
            request = self._sealer.open_move(data, now=now)
            self._moves_heard.check(request, now)
        except RefusedMessage as refused:
            self.refused += 1
            log.warning("cluster.move_refused", extra={"reason": refused.reason})
            return
        instance_id = request.instance_id
        if request.node != self.node or instance_id not in self._held or self._move is None:
            return
        value = self._held.pop(instance_id)
        self._pending.append(("release", instance_id, value))
        self._wake.set()
        log.info("cluster.moving", extra={"instance": instance_id})
        task = asyncio.ensure_future(self._move(instance_id))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def sweep_stale(self) -> int:
        """Mark disconnected the homes recorded connected that no node holds; how many.

        Only homes connected longer ago than the expiry are judged (a tunnel that
        has just come up may not be written yet), and only while this node's own
        writes have worked for a whole expiry (after Redis lost its data, the
        holders write their records back within one refresh).
        """
        if self._connected_before is None or self._mark_disconnected is None:
            return 0
        healthy = self._healthy_since
        if healthy is None or time.monotonic() - healthy < self._ttl_ms / 1000:
            return 0
        cutoff = datetime.now(UTC) - timedelta(milliseconds=self._ttl_ms)
        candidates = [i for i in await self._connected_before(cutoff) if i not in self._held]
        stale: list[str] = []
        for start in range(0, len(candidates), BATCH):
            chunk = candidates[start : start + BATCH]
            values = await self._redis.mget([key_for(i) for i in chunk])
            stale.extend(i for i, v in zip(chunk, values, strict=True) if self._open(i, v) is None)
        if stale:
            await self._mark_disconnected(stale)
            log.info("cluster.presence_stale", extra={"homes": len(stale)})
        return len(stale)

    # --------------------------------------------------------------- the loop

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + self._refresh
        next_sweep = loop.time() + self._ttl_ms / 1000 + self._refresh
        while True:
            await wait_for_event(self._wake, max(0.0, next_refresh - loop.time()))
            self._wake.clear()
            try:
                pending, self._pending = self._pending, []
                try:
                    await self._write(pending)
                except BaseException:
                    self._pending[:0] = pending  # tried again next round
                    raise
                if loop.time() >= next_refresh:
                    next_refresh = loop.time() + self._refresh
                    await self._refresh_held()
                if self._healthy_since is None:
                    self._healthy_since = time.monotonic()
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + self._sweep_every
                    await self.sweep_stale()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                self._healthy_since = None
                log.warning("cluster.presence_write_failed", extra={"error": type(exc).__name__})
                await asyncio.sleep(self._refresh / 2)
            except Exception:
                self._healthy_since = None
                log.exception("cluster.presence_failed")
                await asyncio.sleep(self._refresh / 2)

    async def _write(self, ops: Sequence[tuple[str, str, bytes]]) -> None:
        for start in range(0, len(ops), BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for op, instance_id, value in ops[start : start + BATCH]:
                if op == "claim":
                    pipe.set(key_for(instance_id), value, px=self._ttl_ms)
                else:
                    pipe.eval(_CAS_DELETE, 1, key_for(instance_id), value)
            await pipe.execute()

    async def _refresh_held(self) -> None:
        """Rewrite every record still ours; retire the tunnels another node has claimed."""
        items = list(self._held.items())
        now = time.time()
        lost: list[str] = []
        for start in range(0, len(items), BATCH):
            chunk = items[start : start + BATCH]
            fresh = [self._sealer.seal(i, node=self.node, now=now) for i, _ in chunk]
            pipe = self._redis.pipeline(transaction=False)
            for (instance_id, old), new in zip(chunk, fresh, strict=True):
                pipe.eval(_CAS_SET, 1, key_for(instance_id), old, new, self._ttl_ms)
            results: list[Any] = await pipe.execute()
            for (instance_id, old), new, done in zip(chunk, fresh, results, strict=True):
                if self._held.get(instance_id) is not old:
                    continue  # claimed again or released meanwhile
                if done:
                    self._held[instance_id] = new
                else:
                    lost.append(instance_id)
        for instance_id in lost:
            await self._lost(instance_id)

    async def _lost(self, instance_id: str) -> None:
        """Our record was replaced: retire our tunnel if a genuine claim names another node."""
        data = await self._redis.get(key_for(instance_id))
        owner = self._open(instance_id, data)
        if owner is None or owner == self.node:
            # Forged or gone: ours stands; write it back unconditionally.
            value = self._sealer.seal(instance_id, node=self.node, now=time.time())
            if instance_id in self._held:
                self._held[instance_id] = value
                await self._redis.set(key_for(instance_id), value, px=self._ttl_ms)
            return
        self._held.pop(instance_id, None)
        log.info("cluster.tunnel_claimed_elsewhere", extra={"instance": instance_id})
        task = asyncio.ensure_future(self._retire(instance_id))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
