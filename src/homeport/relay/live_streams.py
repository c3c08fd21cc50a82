"""The requests and WebSockets open right now on tenant and app-link hosts, by who opened them.

Threat this stops: access that outlives its withdrawal. Checking a session
on every request is not enough when one request lasts for hours (a
dashboard's WebSocket, a camera stream): when an owner removes a member,
revokes an app link or unlinks a home, :meth:`LiveStreams.close` ends what
that access has open *at once*, instead of when the person next reconnects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who opened a stream: an account's tenant session, or an app link."""

    user_id: int | None = None
    session_id: int | None = None
    app_link_id: int | None = None


@dataclass(eq=False, slots=True)
class Live:
    instance_id: str
    principal: Principal
    stop: Callable[[], None]
    stopped: bool = field(default=False)


class LiveStreams:
    def __init__(self) -> None:
        self._by_instance: dict[str, set[Live]] = {}

    def add(self, instance_id: str, principal: Principal, stop: Callable[[], None]) -> Live:
        """Register an open stream; ``stop`` ends it (called at most once)."""
        live = Live(instance_id, principal, stop)
        self._by_instance.setdefault(instance_id, set()).add(live)
        return live

    def discard(self, live: Live) -> None:
        entries = self._by_instance.get(live.instance_id)
        if entries is not None:
            entries.discard(live)
            if not entries:
                del self._by_instance[live.instance_id]

    def count(self, instance_id: str) -> int:
        return len(self._by_instance.get(instance_id, ()))

    def close(
        self,
        instance_id: str,
        *,
        user_id: int | None = None,
        session_ids: Iterable[int] = (),
        app_link_id: int | None = None,
        everything: bool = False,
    ) -> int:
        """Stop the instance's streams opened by any of the given principals; how many."""
        sessions = set(session_ids)
        stopped = 0
        for live in list(self._by_instance.get(instance_id, ())):
            p = live.principal
            if live.stopped or not (
                everything
                or (user_id is not None and p.user_id == user_id)
                or (p.session_id is not None and p.session_id in sessions)
                or (app_link_id is not None and p.app_link_id == app_link_id)
            ):
                continue
            live.stopped = True
            self.discard(live)
            try:
                live.stop()
            except Exception:
                log.exception("live_streams.stop_failed", extra={"instance": instance_id})
            stopped += 1
        if stopped:
            log.info("live_streams.closed", extra={"instance": instance_id, "count": stopped})
        return stopped
