"""The tenant gate's session check, with a small in-memory cache.

Every request and WebSocket upgrade on a tenant host is checked against a
server-side session bound to *that* instance (deny by default).  Checking the
database on every request would dominate the relay's added latency, so valid
answers are cached for a few seconds; revocations made in this process drop
the cache at once, and the short TTL bounds how long a revocation made
elsewhere can lag.  Concurrent misses for one key share one lookup (a page
load opens dozens of requests at once, and every one of them would otherwise
query the database when the entry expires), and a lookup that raced a
revocation answers its callers but is not cached.

:meth:`SessionGate.end_sessions` and :meth:`SessionGate.end_user` are the one
entry point for every revocation: they drop the cache entries *and* cut the
session's open requests and WebSockets (:mod:`homeport.relay.live`).  On a
relay that is one node of several, the other nodes hear of it over Redis and
apply the same :class:`~homeport.relay.live.Withdrawal` (:meth:`forget`, then
:meth:`~homeport.relay.live.LiveTraffic.cut`; :mod:`homeport.relay.cluster`).

Fail closed: a cache is only as good as the news of revocations it hears.
:attr:`SessionGate.trust_cache` says whether this node hears them (always, for
a single relay; on a cluster node, while its Redis channel is up).  While it
does not, no answer is taken from the cache or put in it: every request asks
the database.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from homeport.accounts.service import Accounts
from homeport.relay.live import Ending, Kind, LiveTraffic, Withdrawal

CACHE_TTL = 5.0
CACHE_SIZE = 20_000


class SessionGate:
    def __init__(self, accounts: Accounts, *, ttl: float = CACHE_TTL) -> None:
        self._accounts = accounts
        self._ttl = ttl
        #: Open tenant exchanges by session, cut when their session ends.
        self.live = LiveTraffic()
        # sha256(token) + instance -> (user id, session id, valid until)
        self._cache: OrderedDict[tuple[bytes, str], tuple[int, int, float]] = OrderedDict()
        #: Lookups under way, by cache key: concurrent misses wait for the same one.
        self._lookups: dict[tuple[bytes, str], asyncio.Task[tuple[int, int] | None]] = {}
        #: Bumped by every revocation (see _revoked): a lookup that started before
        #: one is not cached.
        self._generation = 0
        #: Whether revocations made elsewhere reach this process (see the module
        #: docstring); while False the cache is neither read nor filled.
        self.trust_cache: Callable[[], bool] = _always

    def cached(self, token: str | None, instance_id: str) -> tuple[int, int] | None:
        """(user id, session id) from the cache alone; None: ask :meth:`tenant_user`.

        The proxy's fast path: most requests of a page load find their session
        here and are decided without waiting.
        """
        return self.cached_digest(token_digest(token), instance_id)

    def cached_digest(self, digest: bytes | None, instance_id: str) -> tuple[int, int] | None:
        """:meth:`cached` with the token's :func:`token_digest` (a browser connection
        keeps it while its Cookie header stays the same: no hash per request)."""
        if digest is None or not self.trust_cache():
            return None
        hit = self._cache.get((digest, instance_id))
        if hit is not None and hit[2] > time.monotonic():
            return hit[0], hit[1]
        return None

    async def tenant_user(self, token: str | None, instance_id: str) -> tuple[int, int] | None:
        """(user id, session id) if ``token`` opens ``instance_id`` now, else None."""
        if not token or len(token) > 256:
            return None
        key = (hashlib.sha256(token.encode()).digest(), instance_id)
        hit = self._cache.get(key) if self.trust_cache() else None
        if hit is not None and hit[2] > time.monotonic():
            self._cache.move_to_end(key)
            return hit[0], hit[1]
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = asyncio.ensure_future(self._lookup(key, token, instance_id))
            self._lookups[key] = lookup
            lookup.add_done_callback(lambda done: self._lookup_done(key, done))
        # Shielded: one caller going away (a closed tab) does not cancel the others' answer.
        return await asyncio.shield(lookup)

    async def _lookup(
        self, key: tuple[bytes, str], token: str, instance_id: str
    ) -> tuple[int, int] | None:
        generation = self._generation
        info = await self._accounts.resolve_session(token, kind="tenant", instance_id=instance_id)
        if info is None:
            self._cache.pop(key, None)
            return None
        if generation == self._generation and self.trust_cache():
            self._cache[key] = (info.user_id, info.session_id, time.monotonic() + self._ttl)
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return info.user_id, info.session_id

    def _lookup_done(
        self, key: tuple[bytes, str], done: asyncio.Future[tuple[int, int] | None]
    ) -> None:
        if self._lookups.get(key) is done:
            del self._lookups[key]
        if not done.cancelled():
            done.exception()  # retrieved: a failure every caller abandoned is not logged twice

    def _revoked(self) -> None:
        """A revocation: lookups under way may have read the session before it.

        They still answer the requests that were waiting (those were in before
        the revocation), but their answer is not cached and no later request
        joins them.
        """
        self._generation += 1
        self._lookups.clear()

    def forget_session(self, session_id: int) -> None:
        self.forget(Withdrawal.sessions([session_id]))

    def forget_user(self, user_id: int) -> None:
        self.forget(Withdrawal.user(user_id))

    def forget_instance(self, instance_id: str) -> None:
        self.forget(Withdrawal.instance(instance_id))

    def forget(self, withdrawal: Withdrawal) -> None:
        """Drop the cached answers ``withdrawal`` ends (this process only; nothing is cut)."""
        w = withdrawal
        match w.kind:
            case Kind.SESSIONS:
                ids = set(w.session_ids)
                doomed = [k for k, v in self._cache.items() if v[1] in ids]
            case Kind.USER:
                doomed = [
                    k
                    for k, v in self._cache.items()
                    if v[0] == w.user_id
                    and (w.instance_id is None or k[1] == w.instance_id)
                    and v[1] != w.except_session_id
                ]
            case Kind.INSTANCE:
                doomed = [k for k in self._cache if k[1] == w.instance_id]
            case Kind.APP_LINK | Kind.INTEGRATIONS:
                return  # no tenant session ends with these
        self._revoked()
        for key in doomed:
            del self._cache[key]

    def clear(self) -> None:
        """Forget every cached answer (news of revocations may have been missed)."""
        self._revoked()
        self._cache.clear()

    def end_sessions(self, session_ids: Iterable[int]) -> None:
        """These sessions were revoked: forget them and cut what they have open."""
        ids = set(session_ids)
        if ids:
            self.forget(Withdrawal.sessions(ids))
        self.live.end_sessions(ids)

    def end_user(
        self,
        user_id: int,
        *,
        instance_id: str | None = None,
        except_session_id: int | None = None,
        why: Ending = Ending.SESSION_ENDED,
    ) -> None:
        """An account's sessions (on one instance, or all but one) were revoked."""
        self.forget(
            Withdrawal.user(
                user_id, instance_id=instance_id, except_session_id=except_session_id, why=why
            )
        )
        self.live.end_user(
            user_id, instance_id=instance_id, except_session_id=except_session_id, why=why
        )

    def end_instance(self, instance_id: str) -> None:
        """A home was unlinked: no cached answer for it, and all its open traffic cut."""
        self.forget_instance(instance_id)
        self.live.end_instance(instance_id)


def token_digest(token: str | None) -> bytes | None:
    """The cache's key for a session token; None for no token or one too long to be ours."""
    if not token or len(token) > 256:
        return None
    return hashlib.sha256(token.encode()).digest()


def _always() -> bool:
    return True
