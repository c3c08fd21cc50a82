"""The tunnel straight on TLS: ALPN ``homeport-tunnel/1`` on the relay's own port.

The add-on dials the relay's account host with ALPN ``homeport-tunnel/1``
(and nothing else).  The relay's listener sees the negotiated protocol right
after the handshake and gives the connection a :class:`RawPipe` instead of
HTTP: one port and one certificate for browsers and add-ons, and no
WebSocket layer on the tunnel (no client masking, no message objects, no
HTTP upgrade), measured in docs/protocol.md.

On the wire, first the tunnel handshake (``protocol/handshake.py``), whose
JSON text messages travel as *records*: a 4-byte big-endian length and the
UTF-8 text, at most :data:`MAX_RECORD` bytes (a longer one closes the
connection: it is not a handshake).  Either side may end this phase with a
*close record*, ``{"type": "close", "code": N, "reason": "..."}``, which
carries what a WebSocket close code said before (4001 "linked, dial again",
4429 "rate limited" ...).  After the relay's ``welcome`` both sides switch to
tunnel frames (``protocol/frames.py``) on the same byte stream, with nothing
in between.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import cast

from homeport.tls.context import TUNNEL_ALPN
from homeport.tls.reads import ThreadBufferReads, thread_buffer
from homeport.tunnel.pipes import PipeOwner

__all__ = ["MAX_RECORD", "TUNNEL_ALPN", "ChannelClosed", "RawPipe", "close_record", "record"]
#: Largest handshake record: the handshake's own messages stay under 8 KiB.
MAX_RECORD = 16 * 1024
_LENGTH = struct.Struct(">I")


class ChannelClosed(ConnectionError):
    """The peer closed during the handshake; ``code`` and ``reason`` say why (0: no record)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed ({code}): {reason}")
        self.code = code
        self.reason = reason


def close_record(code: int, reason: str) -> bytes:
    return record(json.dumps({"type": "close", "code": code, "reason": reason[:123]}))


def record(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > MAX_RECORD:
        raise ValueError("handshake record too large")
    return _LENGTH.pack(len(data)) + data


class RawPipe(ThreadBufferReads):
    """One raw tunnel connection: handshake records, then a :class:`~.pipes.Pipe`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._arrived = asyncio.Event()
        self._owner: PipeOwner | None = None
        self._write_paused = False
        self._lost: str | None = None
        self._closed_by_peer: ChannelClosed | None = None
        self.connected = asyncio.get_running_loop().create_future()

    # ------------------------------------------------------- the protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is a Transport in all but name (not a subclass).
        self.transport = cast(asyncio.Transport, transport)
        if not self.connected.done():
            self.connected.set_result(None)

    def buffer_updated(self, nbytes: int) -> None:
        """Hand the session a view of what arrived, not a copy (the tunnel's hot path).

        The view is of this thread's read buffer, which the next read of any
        connection overwrites: the session's frame decoder copies every payload
        and the start of a frame cut short (``FrameDecoder.feed_raw``), and
        nothing else keeps it.  The view is released when the call returns, so
        anything that did keep it would fail loudly, never read another
        connection's bytes.  Saves a copy of every byte a tunnel receives.
        """
        owner = self._owner
        view = self._view if self._view is not None else thread_buffer()
        if owner is None:  # the handshake's records: kept, so copied
            self.data_received(view[:nbytes].tobytes())
            return
        with view[:nbytes] as read:
            owner.data_received(read)

    def data_received(self, data: bytes) -> None:
        # Only before start(): after it, buffer_updated hands reads to the owner.
        self._buffer += data
        if len(self._buffer) > 4 * MAX_RECORD:  # a peer racing ahead of the handshake
            self.abort()
            return
        self._arrived.set()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = f"transport error: {type(exc).__name__}" if exc else "peer closed the tunnel"
        if not self.connected.done():
            self.connected.set_exception(ConnectionError(self._lost))
        self._arrived.set()
        # The session (our owner) holds this pipe, and the TLS protocol keeps our
        # bound methods after the end: letting go of both frees the tunnel, its
        # session and its TLS state by reference counting, not at the next full
        # collection (see TenantConnection.connection_lost).
        owner, self._owner = self._owner, None
        self.transport = None
        if owner is not None:
            owner.pipe_closed(self._lost)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._owner is not None:
            self._owner.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._owner is not None:
            self._owner.resume_writing()

    # ------------------------------------------------------- handshake phase

    def _next_record(self) -> str | None:
        """One whole record from the buffer, if one is there.

        Records are taken one at a time, when the handshake asks for the next:
        the bytes after the last one are already tunnel frames and stay in the
        buffer for :meth:`start`.
        """
        buffer = self._buffer
        if len(buffer) < _LENGTH.size:
            return None
        (size,) = _LENGTH.unpack_from(buffer)
        if size > MAX_RECORD:
            self.abort()
            raise ChannelClosed(0, "handshake record too large")
        if len(buffer) < _LENGTH.size + size:
            return None
        text = bytes(buffer[_LENGTH.size : _LENGTH.size + size]).decode("utf-8", "replace")
        del buffer[: _LENGTH.size + size]
        return text

    async def receive_text(self) -> str:
        """The next handshake record; :class:`ChannelClosed` if the peer closed instead."""
        while (text := self._next_record()) is None:
            if self._lost is not None:
                raise self._closed_by_peer or ChannelClosed(0, self._lost)
            self._arrived.clear()
            await self._arrived.wait()
        if text.startswith('{"type": "close"'):
            try:
                body = json.loads(text)
                closed = ChannelClosed(int(body["code"]), str(body["reason"]))
            except (ValueError, KeyError, TypeError):
                closed = ChannelClosed(0, "malformed close")
            self._closed_by_peer = closed
            raise closed
        return text

    def send_text(self, text: str) -> None:
        self.write(record(text))

    def close_with(self, code: int, reason: str) -> None:
        """End the handshake phase with a reason the peer can act on, then close."""
        self.write(close_record(code, reason))
        self.close()

    async def wait_closed(self, timeout: float) -> bool:
        """True if the peer closed (or sent anything, which it must not) within ``timeout``."""
        if self._lost is None and not self._buffer:
            self._arrived.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._arrived.wait()
            except TimeoutError:
                return False
        return True

    @property
    def closed(self) -> bool:
        return self._lost is not None

    def get_extra_info(self, name: str) -> object:
        return self.transport.get_extra_info(name) if self.transport is not None else None

    # ------------------------------------------------------------ the pipe

    def start(self, owner: PipeOwner) -> None:
        """Tunnel frames from now on; bytes that came with the last record go first."""
        self._owner = owner
        if self._write_paused:
            owner.pause_writing()
        if self._buffer:
            leftover = bytes(self._buffer)
            self._buffer.clear()
            owner.data_received(leftover)
        if self._lost is not None:
            owner.pipe_closed(self._lost)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
