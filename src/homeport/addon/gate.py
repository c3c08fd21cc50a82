"""The remote-access switch and the record of recent remote accesses.

Threats this stops:

* An owner who wants remote access *off now* (a lost phone, a shared account
  they regret) must not have to find the relay's account site or stop the
  add-on: the switch in the ingress panel refuses every tunnel stream with a
  503 page and, at the moment it is flipped, cuts the streams and WebSockets
  already open.  The tunnel itself stays up, so switching back on is instant.
  The choice is persisted in the state dir: a restart never silently turns
  remote access back on.
* The panel's list of recent accesses must not become a log of what people
  did: it keeps metadata only, in memory, in a bounded ring buffer — time,
  method, a coarse *route family* (never a query string, never path segments
  that may be secrets such as webhook ids or entity names), status, and the
  remote address the relay reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homeport.protocol.errors import ErrorCode
from homeport.protocol.heads import ResponseHead
from homeport.tunnel.stream import Stream, StreamClosed, WsClose

log = logging.getLogger(__name__)

StreamHandler = Callable[[Stream], Coroutine[Any, Any, None]]

#: How many recent accesses the panel shows.
ACCESS_LOG_SIZE = 50
STATE_FILE = "remote-access.json"
#: WebSocket close sent to people whose open WebSocket is cut by the switch.
SWITCHED_OFF_CLOSE = 1008
SWITCHED_OFF_TEXT = "Remote access is switched off in the add-on"
#: How long a cut WebSocket may take to answer our close before it is reset.
CLOSE_WAIT = 5.0

#: Route families shown as they are; everything else is cut to its first segment.
_KNOWN = ("/api/websocket", "/auth/token", "/auth/authorize", "/auth/login_flow", "/api/webhook")

_OFF_PAGE = (
    b"<!doctype html>\n"
    b'<html lang="en"><head><meta charset="utf-8">'
    b'<meta name="viewport" content="width=device-width, initial-scale=1">'
    b"<title>Remote access is switched off</title></head>"
    b"<body><h1>Remote access is switched off in the add-on</h1>"
    b"<p>The owner of this Home Assistant has switched remote access off in the "
    b"Homeport add-on. It can be switched on again from the add-on's panel in "
    b"Home Assistant.</p></body></html>\n"
)


def route_family(target: str) -> str:
    """A coarse, secret-free label for a request target.

    ``/api/webhook/<id>`` carries a credential in its path and
    ``/api/states/<entity>`` says what someone looked at; neither belongs in
    an access list.  So only a few well-known routes are named, and anything
    else is reduced to its first path segment.
    """
    path = target.split("?", 1)[0].split("#", 1)[0]
    for known in _KNOWN:
        if path == known or path.startswith(known + "/"):
            return known if path == known else known + "/…"
    segments = [s for s in path.split("/") if s]
    if not segments:
        return "/"
    first = segments[0][:40]
    return f"/{first}" if len(segments) == 1 else f"/{first}/…"


@dataclass(frozen=True)
class Access:
    """One remote access, metadata only."""

    at: float
    method: str
    route: str
    status: int | None  # None: no answer head (cut, failed or refused)
    remote: str
    websocket: bool


class AccessLog:
    """A bounded in-memory ring buffer of :class:`Access` entries (never on disk)."""

    def __init__(self, size: int = ACCESS_LOG_SIZE) -> None:
        self._entries: deque[Access] = deque(maxlen=size)
        self.total = 0

    def add(self, entry: Access) -> None:
        self._entries.append(entry)
        self.total += 1

    def recent(self) -> list[Access]:
        """Newest first."""
        return list(reversed(self._entries))


class RemoteAccessGate:
    """Wraps the add-on's stream handler with the switch and the access list."""

    def __init__(self, state_dir: Path, access_log: AccessLog | None = None) -> None:
        self._path = state_dir / STATE_FILE
        self.access_log = access_log or AccessLog()
        self._enabled = self._load()
        #: The task serving each open stream, so the switch can cancel it at once.
        self._open: dict[Stream, asyncio.Task[Any]] = {}
        #: Streams the switch is cutting (their task's cancellation is ours).
        self._cutting: set[Stream] = set()

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def open_streams(self) -> int:
        return len(self._open)

    def _load(self) -> bool:
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return True
        except (OSError, ValueError):
            # Unreadable state: fail closed, the owner sees "off" and can switch it on.
            log.warning("addon.remote_access_state_unreadable")
            return False
        return not (isinstance(data, dict) and data.get("enabled") is False)

    def set_enabled(self, enabled: bool) -> None:
        """Persist first, then act: a crash right after never loses the owner's choice."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"enabled": enabled}), encoding="utf-8")
        os.replace(tmp, self._path)
        changed = enabled != self._enabled
        self._enabled = enabled
        if changed:
            log.info("addon.remote_access", extra={"enabled": enabled, "cut": len(self._open)})
        if not enabled:
            for stream, task in list(self._open.items()):
                if stream in self._cutting:
                    continue  # cut already: one cancellation each, or _run mistakes it
                self._cutting.add(stream)
                # The person's WebSocket closes now, before the forwarder unwinds
                # (its upstream clean-up may take a few seconds).
                _close_websocket(stream)
                task.cancel()

    def wrap(self, handler: StreamHandler) -> StreamHandler:
        async def gated(stream: Stream) -> None:
            await self._handle(handler, stream)

        return gated

    async def _handle(self, handler: StreamHandler, stream: Stream) -> None:
        head = stream.request
        assert head is not None
        status: int | None = None
        try:
            if not self._enabled:
                await _refuse(stream)
                status = 503
                return
            status = await self._run(handler, stream)
        finally:
            self.access_log.add(
                Access(
                    at=time.time(),
                    method=head.method,
                    route=route_family(head.target),
                    status=status,
                    remote=_client_address(stream),
                    websocket=stream.websocket,
                )
            )

    async def _run(self, handler: StreamHandler, stream: Stream) -> int | None:
        """Serve ``stream`` in this task; the switch cancels it (no watcher task per stream)."""
        task = asyncio.current_task()
        assert task is not None
        self._open[stream] = task
        try:
            await handler(stream)
        except asyncio.CancelledError:
            if stream not in self._cutting or task.uncancel() > 0:
                self._cutting.discard(stream)
                raise  # not (only) the switch: the session is ending this stream
        finally:
            del self._open[stream]
        if stream in self._cutting:
            self._cutting.discard(stream)
            return await _cut_off(stream)
        return stream.sent_status


def _close_websocket(stream: Stream) -> None:
    if stream.websocket and stream.sent_status == 101 and stream.error is None:
        with contextlib.suppress(StreamClosed, RuntimeError):  # already closing
            stream.close_ws(SWITCHED_OFF_CLOSE, SWITCHED_OFF_TEXT)


async def _refuse(stream: Stream) -> None:
    """The 503 page, written by us: Home Assistant is never asked."""
    stream.respond(
        ResponseHead(
            503,
            [
                ("content-type", "text/html; charset=utf-8"),
                ("content-length", str(len(_OFF_PAGE))),
                ("cache-control", "no-store"),
                ("retry-after", "60"),
            ],
        )
    )
    await stream.write(_OFF_PAGE, end=True)


async def _cut_off(stream: Stream) -> int | None:
    """Answer a stream the switch interrupted: a 503 if nothing went out yet, else cut it."""
    if stream.error is not None:
        return stream.sent_status
    if stream.sent_status is None:
        await _refuse(stream)
        return 503
    if stream.websocket and stream.sent_status == 101:
        # Our close went out already; wait (bounded) for the peer's, which ends
        # the stream cleanly.  A reset now would drop the close still queued.
        with contextlib.suppress(StreamClosed, TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT):
                while not isinstance(await stream.receive_ws(), WsClose):
                    pass
                return 101
        stream.reset(ErrorCode.CANCEL, SWITCHED_OFF_TEXT)
        return 101
    stream.reset(ErrorCode.CANCEL, SWITCHED_OFF_TEXT)
    return stream.sent_status


def _client_address(stream: Stream) -> str:
    """The address the relay saw (it strips any the browser sent and writes its own)."""
    assert stream.request is not None
    for name, value in stream.request.headers:
        if name == "x-forwarded-for":
            return value.split(",")[-1].strip()[:64]
    return "unknown"
