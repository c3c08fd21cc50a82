"""CONTROL requests over a live tunnel: the add-on asks and waits, the relay answers.

The tunnel is already mutually authenticated by the handshake, so a request
needs no signature of its own: the relay knows which instance the tunnel
belongs to and acts for that instance only.  This module is the I/O half of
the protocol's CONTROL frames (see ``protocol/connection.py``): waiting for a
reply with a timeout on the add-on side, running a handler per request on the
relay side, and failing every waiter when the tunnel closes (no hang).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from homeport.protocol.connection import MAX_PENDING_CONTROL, TunnelConnection
from homeport.protocol.events import ControlAnswered, ControlRequested

log = logging.getLogger(__name__)

#: Seconds a relay-side handler may run on after its tunnel closed.
HANDLER_GRACE = 5.0
#: Relay side: answers one request body for this tunnel's instance.
ControlHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlFailed(Exception):
    """A control request got no answer: the reason is fit to show the owner."""


class ControlChannel:
    def __init__(
        self,
        connection: TunnelConnection,
        kick: Callable[[], None],
        handler: ControlHandler | None = None,
        *,
        name: str = "tunnel",
        grace: float = HANDLER_GRACE,
    ) -> None:
        self._connection = connection
        self._grace = grace
        self._kick = kick
        self._handler = handler
        self._name = name
        self._waiters: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed: str | None = None

    @property
    def supported(self) -> bool:
        """The relay said it answers control requests (known once its SETTINGS arrived)."""
        return self._closed is None and self._connection.peer_accepts_control

    async def request(self, body: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        """Send ``body`` and wait for the reply; :class:`ControlFailed` if none comes."""
        if self._closed is not None:
            raise ControlFailed(f"the tunnel is closed ({self._closed})")
        if len(self._waiters) >= MAX_PENDING_CONTROL:
            raise ControlFailed("too many requests at once; try again in a moment")
        try:
            request_id = self._connection.send_control_request(body)
        except RuntimeError as exc:
            raise ControlFailed(str(exc)) from None
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = future
        self._kick()
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise ControlFailed("the relay did not answer in time") from None
        finally:
            self._waiters.pop(request_id, None)

    def answered(self, event: ControlAnswered) -> None:
        future = self._waiters.get(event.request_id)
        if future is not None and not future.done():
            future.set_result(event.body)

    def requested(self, event: ControlRequested) -> None:
        task = asyncio.create_task(self._answer(event), name=f"{self._name}-control")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, event: ControlRequested) -> None:
        try:
            if self._handler is None:  # not advertised, so the protocol refused it already
                reply: dict[str, Any] = {"error": "unsupported", "message": "not supported"}
            else:
                reply = await self._handler(event.body)
        except Exception:
            log.exception("tunnel.control_failed", extra={"tunnel": self._name})
            reply = {"error": "internal", "message": "the relay could not do this"}
        if self._closed is None:
            try:
                self._connection.send_control_reply(event.request_id, reply)
            except ValueError:
                log.exception("tunnel.control_reply_too_large", extra={"tunnel": self._name})
                fallback = {"error": "internal", "message": "the relay could not do this"}
                self._connection.send_control_reply(event.request_id, fallback)
            self._kick()

    async def close(self, reason: str) -> None:
        """The tunnel ended: fail every waiter at once; let handlers finish, briefly.

        A handler that already created something (an app link) must still write
        its audit event and notice, so it is not cancelled at once; it only
        has no one left to answer.
        """
        self._closed = reason or "closed"
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(ControlFailed(f"the tunnel closed ({self._closed})"))
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self._grace)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
