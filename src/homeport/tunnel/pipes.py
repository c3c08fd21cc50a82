"""The byte streams a tunnel runs over: what a :class:`TunnelSession` writes to and is fed from.

A *pipe* carries the tunnel's frames to the peer and back.  Two exist:

* :class:`RawPipe` (``raw.py``): the frames straight on the TLS connection,
  negotiated by ALPN on the relay's own port.  Callbacks end to end: no task
  and no message object per read or write.
* :class:`WebSocketPipe`: the frames inside binary WebSocket messages, on an
  aiohttp WebSocket (the tunnel's first transport, which older add-ons and
  proxies that only pass HTTP still use).  A reader and a writer task adapt
  aiohttp's awaitable API to the same callbacks.

Either way the session sees the same thing: ``data_received`` with bytes,
``pause_writing`` / ``resume_writing`` when the peer stops and starts
reading, and ``pipe_closed`` once, with a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Protocol

from aiohttp import WSMessage, WSMsgType

log = logging.getLogger(__name__)

#: Largest tunnel message (one WebSocket message, or one read on a raw pipe is not bounded
#: by this): a batch of frames plus a maximal frame.
MAX_MESSAGE = 1024 * 1024
#: A WebSocket pipe tells its session to stop writing above this many queued bytes,
#: and to go on below the low mark (the raw pipe has the transport's own marks).
PIPE_HIGH = 1024 * 1024
PIPE_LOW = 256 * 1024


class PipeOwner(Protocol):
    """What a pipe tells its session."""

    def data_received(self, data: bytes | memoryview) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...
    def pipe_closed(self, reason: str) -> None: ...


class Pipe(Protocol):
    """What a session does with its pipe."""

    def start(self, owner: PipeOwner) -> None: ...
    def write(self, data: bytes) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class WebSocketLike(Protocol):
    """What both aiohttp's client and server WebSockets offer."""

    @property
    def closed(self) -> bool: ...
    async def send_bytes(self, data: bytes) -> None: ...
    async def receive(self, timeout: float | None = None) -> WSMessage: ...
    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool: ...


class WebSocketPipe:
    """Tunnel frames in binary messages on an aiohttp WebSocket (see the module docstring)."""

    def __init__(self, ws: WebSocketLike) -> None:
        self.ws = ws
        self._owner: PipeOwner | None = None
        self._out: deque[bytes] = deque()
        self._queued = 0
        self._paused_writing = False
        self._reading = asyncio.Event()
        self._reading.set()
        self._wake = asyncio.Event()
        self._closing = False
        self._reported = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, owner: PipeOwner) -> None:
        self._owner = owner
        self._tasks = [
            asyncio.create_task(self._read(), name="tunnel-pipe-reader"),
            asyncio.create_task(self._write(), name="tunnel-pipe-writer"),
        ]

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        self._out.append(data)
        self._queued += len(data)
        self._wake.set()
        if not self._paused_writing and self._queued > PIPE_HIGH and self._owner is not None:
            self._paused_writing = True
            self._owner.pause_writing()

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def close(self) -> None:
        """Close once what was written is out (the writer sends it first)."""
        self._closing = True
        self._wake.set()

    def abort(self) -> None:
        self._closing = True
        self._out.clear()
        for task in self._tasks:
            task.cancel()
        self._report("closed")
        self._tasks.append(asyncio.ensure_future(self._close_ws()))

    async def _read(self) -> None:
        reason = "peer closed the tunnel"
        try:
            while True:
                await self._reading.wait()
                msg = await self.ws.receive()
                if msg.type is WSMsgType.BINARY:
                    assert self._owner is not None
                    self._owner.data_received(msg.data)
                    # ws.receive() does not suspend while messages are queued: let
                    # every other task run between two, so one peer sending without
                    # pause cannot keep the loop (and every other home) waiting.
                    await asyncio.sleep(0)
                    continue
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                    reason = "peer closed the tunnel"
                elif msg.type is WSMsgType.ERROR:
                    reason = f"transport error: {msg.data}"
                else:
                    reason = "unexpected text message on the tunnel"
                    log.warning("tunnel.protocol_error")
                break
        except ConnectionError as exc:
            reason = f"transport error: {type(exc).__name__}"
        self._closing = True
        self._wake.set()
        self._report(reason)

    async def _write(self) -> None:
        try:
            while True:
                while self._out:
                    data = self._out.popleft()
                    self._queued -= len(data)
                    await self.ws.send_bytes(data)
                    if self._paused_writing and self._queued < PIPE_LOW:
                        self._paused_writing = False
                        if self._owner is not None:
                            self._owner.resume_writing()
                if self._closing:
                    break
                self._wake.clear()
                await self._wake.wait()
        except ConnectionError as exc:
            self._report(f"transport error: {type(exc).__name__}")
        finally:
            await self._close_ws()

    async def _close_ws(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self._report("closed")

    def _report(self, reason: str) -> None:
        if not self._reported and self._owner is not None:
            self._reported = True
            self._owner.pipe_closed(reason)
