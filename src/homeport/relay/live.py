"""Live tenant traffic, by who opened it: what to cut when access ends.

Threat this stops: access that outlives its withdrawal. The gate checks a session
only when a request *starts*, but one request can last for hours (a dashboard's
WebSocket, a camera stream). So the tenant proxy registers every proxied HTTP
exchange and WebSocket here with what opened it — an account's tenant session or
an app link — and every withdrawal cuts what that access has open at once:

* a revoked session (signed out, "sign out other sessions", password changed,
  account disabled, member removed): :meth:`LiveTraffic.end_sessions`,
  :meth:`LiveTraffic.end_user`; the browser's WebSocket closes with 4001
  "session ended";
* a revoked app link or an unlinked home: :meth:`LiveTraffic.end_app_link`,
  :meth:`LiveTraffic.end_instance`; WebSockets close with 1008 "access withdrawn";
* integrations switched off by the home's owner: :meth:`LiveTraffic.end_integrations`.

Each cut resets the tunnel stream (so the home stops sending too) and closes
the browser's connection.

One process keeps this registry in memory. Every withdrawal passes through one
of the ``end_*`` methods here, each described by a :class:`Withdrawal` (what
ended, ids only): they cut this process's traffic (:meth:`LiveTraffic.cut`)
and hand the withdrawal to :attr:`LiveTraffic.on_withdrawn`, which on a relay
that is one node of several (``--redis-url``) publishes it to the others
(:mod:`homeport.relay.cluster`); they apply it with :meth:`LiveTraffic.cut`,
which does not publish again. The periodic sweep in
:mod:`homeport.relay.housekeeping` re-checks every registered session against
the database, which bounds how long a revocation made elsewhere (the admin CLI,
a node cut off from Redis) can lag.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: WebSocket close code and reason a browser sees when its session is revoked
#: (4000-4999: private use, RFC 6455 §7.4.2).
SESSION_ENDED_CODE = 4001
SESSION_ENDED_REASON = "session ended"


class Ending(enum.Enum):
    """Why an exchange is cut, as the browser's WebSocket close (code, reason) says it."""

    SESSION_ENDED = (SESSION_ENDED_CODE, SESSION_ENDED_REASON)
    ACCESS_WITHDRAWN = (1008, "access withdrawn")  # policy violation

    @property
    def code(self) -> int:
        code: int = self.value[0]
        return code

    @property
    def reason(self) -> str:
        reason: str = self.value[1]
        return reason


class Kind(enum.StrEnum):
    """What a :class:`Withdrawal` ended."""

    SESSIONS = "sessions"  # these tenant sessions
    USER = "user"  # an account's sessions (on one home, or all but one)
    APP_LINK = "app_link"  # one app link
    INSTANCE = "instance"  # a home was unlinked
    INTEGRATIONS = "integrations"  # an owner switched integrations off


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """One withdrawal of access, as every relay node applies it; ids only."""

    kind: Kind
    session_ids: tuple[int, ...] = ()
    user_id: int | None = None
    instance_id: str | None = None
    except_session_id: int | None = None
    app_link_id: int | None = None
    integrations: tuple[str, ...] = ()
    why: Ending = Ending.SESSION_ENDED

    @classmethod
    def sessions(cls, session_ids: Iterable[int]) -> Withdrawal:
        return cls(Kind.SESSIONS, session_ids=tuple(sorted(set(session_ids))))

    @classmethod
    def user(
        cls,
        user_id: int,
        *,
        instance_id: str | None = None,
        except_session_id: int | None = None,
        why: Ending = Ending.SESSION_ENDED,
    ) -> Withdrawal:
        return cls(
            Kind.USER,
            user_id=user_id,
            instance_id=instance_id,
            except_session_id=except_session_id,
            why=why,
        )

    @classmethod
    def app_link(cls, app_link_id: int) -> Withdrawal:
        return cls(Kind.APP_LINK, app_link_id=app_link_id)

    @classmethod
    def instance(cls, instance_id: str) -> Withdrawal:
        return cls(Kind.INSTANCE, instance_id=instance_id)

    @classmethod
    def integrations_off(cls, instance_id: str, kinds: Iterable[str]) -> Withdrawal:
        return cls(
            Kind.INTEGRATIONS, instance_id=instance_id, integrations=tuple(sorted(set(kinds)))
        )


@dataclass(frozen=True, slots=True)
class Principal:
    """Who opened an exchange: an account's tenant session, an app link, or an
    integration the home's owner let through (its path kind, e.g. ``"webhook"``)."""

    user_id: int | None = None
    session_id: int | None = None
    app_link_id: int | None = None
    integration: str | None = None


@dataclass(slots=True)  # not frozen: one is made per request, and frozen init is slow
class Live:
    """One open proxied request or WebSocket, and who opened it (never changed)."""

    instance_id: str
    kind: str  # "http" or "websocket"
    end: Callable[[Ending], None]
    who: Principal

    @property
    def session_id(self) -> int | None:
        return self.who.session_id

    @property
    def user_id(self) -> int | None:
        return self.who.user_id

    @property
    def app_link_id(self) -> int | None:
        return self.who.app_link_id


class LiveTraffic:
    """Registry of open tenant and app-link exchanges."""

    def __init__(self) -> None:
        self._entries: dict[int, Live] = {}
        self._ids = itertools.count()
        #: Told of every withdrawal made through an ``end_*`` method (after the
        #: local cut): the cluster's publisher on a relay with ``--redis-url``.
        self.on_withdrawn: Callable[[Withdrawal], None] | None = None

    def register(
        self, instance_id: str, kind: str, end: Callable[[Ending], None], who: Principal
    ) -> int:
        """Register an open exchange; the key to :meth:`unregister` it with when it ends."""
        key = next(self._ids)
        self._entries[key] = Live(instance_id, kind, end, who)
        return key

    def unregister(self, key: int) -> None:
        self._entries.pop(key, None)

    @contextlib.contextmanager
    def track(
        self,
        instance_id: str,
        kind: str,
        end: Callable[[Ending], None],
        who: Principal,
    ) -> Iterator[None]:
        """Register an exchange for as long as the ``with`` block runs."""
        key = next(self._ids)
        self._entries[key] = Live(instance_id, kind, end, who)
        try:
            yield
        finally:
            self._entries.pop(key, None)

    def session_ids(self) -> set[int]:
        """Sessions that have something open right now."""
        return {e.session_id for e in self._entries.values() if e.session_id is not None}

    def app_link_ids(self) -> set[int]:
        """App links that have something open right now."""
        return {e.app_link_id for e in self._entries.values() if e.app_link_id is not None}

    def count(self, session_id: int | None = None, *, instance_id: str | None = None) -> int:
        return sum(
            1
            for e in self._entries.values()
            if (session_id is None or e.session_id == session_id)
            and (instance_id is None or e.instance_id == instance_id)
        )

    def end_sessions(self, session_ids: Iterable[int]) -> int:
        """Cut everything these sessions have open; how many exchanges were cut."""
        ids = set(session_ids)
        return self._withdraw(Withdrawal.sessions(ids)) if ids else 0

    def end_user(
        self,
        user_id: int,
        *,
        instance_id: str | None = None,
        except_session_id: int | None = None,
        why: Ending = Ending.SESSION_ENDED,
    ) -> int:
        """Cut an account's open exchanges (on one instance, or all but one session).

        ``why``: ``ACCESS_WITHDRAWN`` when a member loses a home (removed, or left).
        """
        return self._withdraw(
            Withdrawal.user(
                user_id, instance_id=instance_id, except_session_id=except_session_id, why=why
            )
        )

    def end_app_link(self, app_link_id: int) -> int:
        """An app link was revoked: cut what it has open."""
        return self._withdraw(Withdrawal.app_link(app_link_id))

    def end_integrations(self, instance_id: str, kinds: Iterable[str]) -> int:
        """The owner switched integrations off: cut the calls of these kinds still open."""
        wanted = set(kinds)
        return self._withdraw(Withdrawal.integrations_off(instance_id, wanted)) if wanted else 0

    def end_instance(self, instance_id: str) -> int:
        """A home was unlinked: cut everything open on it."""
        return self._withdraw(Withdrawal.instance(instance_id))

    def _withdraw(self, withdrawal: Withdrawal) -> int:
        cut = self.cut(withdrawal)
        if self.on_withdrawn is not None:
            self.on_withdrawn(withdrawal)
        return cut

    def cut(self, withdrawal: Withdrawal) -> int:
        """Cut what ``withdrawal`` ended in this process only; how many exchanges."""
        w = withdrawal
        match w.kind:
            case Kind.SESSIONS:
                ids = set(w.session_ids)
                return self._end(lambda e: e.session_id in ids, Ending.SESSION_ENDED)
            case Kind.USER:
                return self._end(
                    lambda e: (
                        e.user_id == w.user_id
                        and e.session_id is not None
                        and (w.instance_id is None or e.instance_id == w.instance_id)
                        and e.session_id != w.except_session_id
                    ),
                    w.why,
                )
            case Kind.APP_LINK:
                return self._end(lambda e: e.app_link_id == w.app_link_id, Ending.ACCESS_WITHDRAWN)
            case Kind.INSTANCE:
                return self._end(lambda e: e.instance_id == w.instance_id, Ending.ACCESS_WITHDRAWN)
            case Kind.INTEGRATIONS:
                kinds = set(w.integrations)
                return self._end(
                    lambda e: e.instance_id == w.instance_id and e.who.integration in kinds,
                    Ending.ACCESS_WITHDRAWN,
                )

    def _end(self, doomed: Callable[[Live], bool], why: Ending) -> int:
        keys = [key for key, entry in self._entries.items() if doomed(entry)]
        for key in keys:
            entry = self._entries.pop(key)  # each exchange is cut once
            try:
                entry.end(why)
            except Exception:  # one broken connection must not stop the others being cut
                log.exception("relay.live_traffic_end_failed", extra={"kind": entry.kind})
        if keys:
            log.info("relay.live_traffic_ended", extra={"exchanges": len(keys), "why": why.name})
        return len(keys)
