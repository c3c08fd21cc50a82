"""Live tenant traffic by session: what to cut when a session ends.

Threat this stops: a revoked session (signed out, "sign out other sessions",
password changed, account disabled, member removed) that keeps watching a
camera stream or keeps a Home Assistant WebSocket open for hours, because the
gate only checks sessions when a request *starts*.

The tenant proxy registers every proxied HTTP exchange and WebSocket here
with the session that opened it; a revocation calls :meth:`end_sessions` (or
:meth:`end_user`), which runs each one's ``end`` callback at once: the
tunnel stream is reset (so the home stops sending too) and the browser's
connection is closed (a WebSocket with close code 4001, "session ended").

One process keeps this registry in memory. Several relay nodes will fan a
revocation out over Redis (publish the session ids; every node calls
:meth:`SessionGate.end_sessions` with them), and the periodic sweep in
:mod:`homeport.relay.housekeeping` re-checks every registered session against
the database, which already bounds how long a revocation made elsewhere (the
admin CLI, another node) can lag.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: WebSocket close code and reason a browser sees when its session is revoked
#: (4000-4999: private use, RFC 6455 §7.4.2).
SESSION_ENDED_CODE = 4001
SESSION_ENDED_REASON = "session ended"


@dataclass(frozen=True, slots=True)
class Live:
    """One open proxied request or WebSocket."""

    session_id: int
    user_id: int
    instance_id: str
    kind: str  # "http" or "websocket"
    end: Callable[[], None]


class LiveTraffic:
    """Registry of open tenant exchanges, indexed by session id."""

    def __init__(self) -> None:
        self._by_session: dict[int, dict[int, Live]] = {}
        self._ids = itertools.count()

    @contextlib.contextmanager
    def track(
        self, session_id: int, user_id: int, instance_id: str, kind: str, end: Callable[[], None]
    ) -> Iterator[None]:
        """Register an exchange for as long as the ``with`` block runs."""
        key = next(self._ids)
        entry = Live(session_id, user_id, instance_id, kind, end)
        self._by_session.setdefault(session_id, {})[key] = entry
        try:
            yield
        finally:
            entries = self._by_session.get(session_id)
            if entries is not None:
                entries.pop(key, None)
                if not entries:
                    del self._by_session[session_id]

    def session_ids(self) -> set[int]:
        """Sessions that have something open right now."""
        return set(self._by_session)

    def count(self, session_id: int | None = None) -> int:
        if session_id is not None:
            return len(self._by_session.get(session_id, {}))
        return sum(len(entries) for entries in self._by_session.values())

    def end_sessions(self, session_ids: Iterable[int]) -> int:
        """Cut everything these sessions have open; how many exchanges were cut."""
        ended = 0
        for session_id in set(session_ids):
            entries = self._by_session.pop(session_id, {})
            for entry in entries.values():
                _run(entry)
                ended += 1
        if ended:
            log.info("relay.live_traffic_ended", extra={"exchanges": ended})
        return ended

    def end_user(
        self,
        user_id: int,
        *,
        instance_id: str | None = None,
        except_session_id: int | None = None,
    ) -> int:
        """Cut an account's open exchanges (on one instance, or all but one session)."""
        doomed = {
            entry.session_id
            for entries in self._by_session.values()
            for entry in entries.values()
            if entry.user_id == user_id
            and (instance_id is None or entry.instance_id == instance_id)
            and entry.session_id != except_session_id
        }
        return self.end_sessions(doomed)


def _run(entry: Live) -> None:
    try:
        entry.end()
    except Exception:  # one broken connection must not stop the others being cut
        log.exception("relay.live_traffic_end_failed", extra={"kind": entry.kind})
