"""One request from the tunnel to Home Assistant and its answer back: callbacks only.

:class:`HttpExchange` is both a :class:`~homeport.tunnel.stream.StreamConsumer`
(the tunnel session calls it with the request body as it arrives) and an
:class:`~homeport.addon.upstream.UpstreamUser` (its pooled connection calls
it with Home Assistant's answer as llhttp parses it).  No task and no
request object: bytes go from one side to the other as they come.

It owns its stream (released however the exchange ends, R-MT-15) and keeps
what the path promises:

* backpressure both ways: request body credit goes back to the relay only
  once the bytes are written to Home Assistant, and is held while Home
  Assistant does not read; reading Home Assistant's answer stops while the
  tunnel stream is full, until the session says it is ``writable`` again;
* exact request framing (smuggling): a body longer or shorter than the
  ``content-length`` the request was sent with resets the stream and drops
  the connection, so no byte can run into the next request on it;
* a clean 502 at the relay (reset ``UPSTREAM_UNAVAILABLE``) when Home
  Assistant cannot be reached, cuts its answer short, or answers with a head
  the tunnel must not carry (an interim or unexpected status, a field with
  control characters: llhttp and the head encoder both refuse those);
* priorities: a camera stream or a backup is moved to a less urgent class
  from its response head (``tunnel/priorities.py``);
* the remote-access switch: :meth:`cut` answers 503 if nothing went out yet,
  else resets the stream (``addon/gate.py``);
* privacy: only metadata is logged (``addon.request`` at DEBUG), never a
  header, a target or a body byte.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from homeport.addon.gate import SWITCHED_OFF_TEXT, refuse
from homeport.addon.messages import response_fields
from homeport.addon.upstream import RawHeaders, UpstreamConnection
from homeport.protocol import ErrorCode, HeadError, ResponseHead
from homeport.tunnel.priorities import response_priority
from homeport.tunnel.stream import Stream, StreamClosed

if TYPE_CHECKING:
    from homeport.addon.forward import HomeAssistantForwarder

log = logging.getLogger(__name__)

#: Methods that may be sent again when a kept-alive connection turns out to be
#: dead before any answer (RFC 9110 §9.2.2; aiohttp's client retries these too).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_LAST_CHUNK = b"0\r\n\r\n"
_CRLF = b"\r\n"
_NO_ERROR = ErrorCode.NO_ERROR


class HttpExchange:
    """One HTTP request to Home Assistant (see the module docstring)."""

    __slots__ = (
        "_acked_later",
        "_body_done",
        "_chunked",
        "_forwarder",
        "_head",
        "_head_only",
        "_head_written",
        "_pending",
        "_remaining",
        "_retried",
        "_reused",
        "_sent",
        "_started",
        "_status",
        "connection",
        "done",
        "request_sent",
        "stream",
    )

    def __init__(
        self,
        forwarder: HomeAssistantForwarder,
        stream: Stream,
        head: bytes,
        length: int | None,
    ) -> None:
        self._forwarder = forwarder
        self.stream = stream
        self._head = head
        has_body = stream.request_has_body
        self._chunked = has_body and length is None
        #: Body bytes the content-length still promises (exact framing).
        self._remaining = length or 0
        #: The tunnel delivered the whole request body (or there is none).
        self._body_done = not has_body
        #: The request went out in full: the connection may be reused after the answer.
        self.request_sent = False
        self._head_written = False
        self._pending: list[bytes] = []  # body that came before the connection
        self._acked_later = 0  # credit held while Home Assistant does not read
        assert stream.request is not None
        self._head_only = stream.request.method == "HEAD"
        self.connection: UpstreamConnection | None = None
        self._reused = False
        self._retried = False
        self._status: int | None = None  # the status sent back, once it was
        self._sent = 0
        self._started = time.monotonic() if log.isEnabledFor(logging.DEBUG) else 0.0
        self.done = False

    def start(self) -> None:
        self._forwarder.pool.acquire(self)

    # ------------------------------------------------------------- upstream

    def upstream_ready(self, connection: UpstreamConnection) -> None:
        if self.done:
            connection.give_back()
            return
        self.connection = connection
        self._reused = connection.reused
        connection.user = self
        pending = self._pending
        if not pending and self._body_done and not self._chunked:
            # The common case (a GET): the head is the whole request, one write.
            self._head_written = self.request_sent = True
            connection.write(self._head)
            return
        self._pending = []
        if pending or self._body_done:
            self._write(connection, pending, self._body_done)
        # Else the head waits for the body's first bytes (as aiohttp's client did): a
        # request whose body the relay refuses at once never reaches Home Assistant.

    def upstream_unavailable(self, error: BaseException) -> None:
        if not self.done:
            self._upstream_failed(error)

    def upstream_head(self, status: int, headers: RawHeaders, body: bytes, complete: bool) -> None:
        if self.done:
            return
        if self._head_only:
            # No body follows a HEAD answer, whatever its length says (llhttp cannot
            # be told; the connection is not reused, see _complete).
            body, complete = b"", True
        stream = self.stream
        try:
            names, values = response_fields(headers, self._forwarder.origin)
            # A camera stream or a backup must not crowd out the home's API answers.
            current = stream.priority
            priority = response_priority(current, names, values)
            if priority != current:
                stream.set_priority(priority)
            stream.respond(
                ResponseHead.from_fields(status, names, values), end=complete and not body
            )
        except (HeadError, RuntimeError):
            # A head we must not relay (an interim or 101 status, a field with
            # control characters, too large): the person gets a clean 502.
            log.warning("addon.bad_upstream_head", extra={"stream": stream.id})
            self._fail(ErrorCode.UPSTREAM_UNAVAILABLE, "unusable response head")
            return
        except StreamClosed:
            # Gone meanwhile (then this is a no-op), or refused by the tunnel (too large).
            self._fail(ErrorCode.UPSTREAM_UNAVAILABLE, "response head not carried")
            return
        self._status = status
        if body:
            self._send(body, complete)
        elif complete:
            self._complete()

    def upstream_body(self, body: bytes, complete: bool) -> None:
        if not self.done:
            self._send(body, complete)

    def upstream_upgraded(self, status: int, headers: RawHeaders, rest: bytes) -> None:
        """A 101 to a plain request: nothing the tunnel could carry."""
        if not self.done:
            log.warning("addon.bad_upstream_head", extra={"stream": self.stream.id})
            self._fail(ErrorCode.UPSTREAM_UNAVAILABLE, "unusable response head")

    def upstream_lost(self, error: BaseException | None) -> None:
        if self.done:
            return
        self.connection = None
        request = self.stream.request
        assert request is not None
        unsent = not self._head_written  # Home Assistant never saw a byte of it
        safe = (
            self._reused
            and self._status is None
            and not self.stream.request_has_body
            and request.method in IDEMPOTENT
        )
        if not self._retried and (unsent or safe):
            # A kept-alive connection Home Assistant had closed (its keep-alive
            # timer, a restart): the request can go again, once, on a fresh one.
            self._retried = True
            self.request_sent = self._head_written = False
            self._forwarder.pool.acquire(self, fresh=True)
            return
        self._upstream_failed(error)

    def upstream_writable(self) -> None:
        if self._acked_later and not self.done:
            size, self._acked_later = self._acked_later, 0
            self.stream.consumed(size)

    # --------------------------------------------------------------- stream

    def data_received(self, data: bytes, end: bool) -> None:
        """Request body from the tunnel: on to Home Assistant as it comes."""
        if self.done:
            return
        if not self._chunked:
            self._remaining -= len(data)
            if self._remaining < 0 or (end and self._remaining):
                # More or less than the content-length Home Assistant was promised:
                # the surplus would be read as the next request (smuggling).
                self._fail(ErrorCode.BAD_REQUEST, "request body does not match its length")
                return
        if end:
            self._body_done = True
        connection = self.connection
        if connection is None:
            if data:
                self._pending.append(data)  # holds its credit: bounded by the stream window
            return
        self._write(connection, [data] if data else [], end)

    def ws_message_received(self, data: bytes, text: bool) -> None:  # pragma: no cover
        self.stream.consumed(len(data))  # never on a plain request's stream

    def ws_closed(self, code: int, reason: str) -> None:  # pragma: no cover
        pass

    def head_received(self, head: ResponseHead, end: bool) -> None:  # pragma: no cover
        pass  # relay side only

    def writable(self) -> None:
        """The tunnel has room again: read on from Home Assistant."""
        if self.connection is not None:
            self.connection.resume_reading()

    def stream_ended(self, error: StreamClosed | None) -> None:
        """The relay reset the stream (the person went away) or the tunnel closed."""
        if self.done:
            return
        self._drop_connection()
        self._end(self._status)

    def cut(self) -> None:
        """Remote access switched off: a 503 if nothing went out yet, else reset."""
        if self.done:
            return
        self._drop_connection()
        stream = self.stream
        if self._status is None:
            self._end(503)
            refuse(stream)
        else:
            self._end(self._status)
            stream.reset(ErrorCode.CANCEL, SWITCHED_OFF_TEXT)

    # -------------------------------------------------------------- helpers

    def _write(self, connection: UpstreamConnection, body: list[bytes], end: bool) -> None:
        """The head (the first time), body bytes framed as announced, and the end."""
        parts = []
        if not self._head_written:
            self._head_written = True
            parts.append(self._head)
        size = 0
        for data in body:
            size += len(data)
            if self._chunked:
                parts += (b"%x\r\n" % len(data), data, _CRLF)
            else:
                parts.append(data)
        if end:
            if self._chunked:
                parts.append(_LAST_CHUNK)
            self.request_sent = True
        if len(parts) == 1:
            connection.write(parts[0])
        elif parts:
            connection.writelines(parts)
        if size:
            self._ack(size)

    def _ack(self, size: int) -> None:
        """Give the relay its credit back, unless Home Assistant stopped reading."""
        connection = self.connection
        if connection is not None and connection.write_paused:
            self._acked_later += size
        else:
            self.stream.consumed(size)

    def _send(self, body: bytes, complete: bool) -> None:
        try:
            room = self.stream.send_data(body, end=complete)
        except StreamClosed:
            self._fail(ErrorCode.CANCEL, "response not carried")
            return
        self._sent += len(body)
        if complete:
            self._complete()
        elif not room and self.connection is not None:
            self.connection.pause_reading()  # until writable()

    def _complete(self) -> None:
        """The whole answer is on its way: the connection goes back, the stream is released."""
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.finish(reusable=self.request_sent and not self._head_only)
        self._end(self._status)
        # A request body Home Assistant did not read is refused now (RESET NO_ERROR
        # after the response, as HTTP/2 does); the connection was not reused for it.
        self.stream.release(_NO_ERROR, "response complete")

    def _upstream_failed(self, error: BaseException | None) -> None:
        """The relay shows the person a page saying Home Assistant is not answering."""
        log.warning(
            "addon.upstream_failed",
            extra={"stream": self.stream.id, "error": type(error).__name__},
        )
        self._fail(ErrorCode.UPSTREAM_UNAVAILABLE, "Home Assistant is not answering")

    def _fail(self, code: ErrorCode, reason: str) -> None:
        """End here: the connection dropped, the stream reset (a no-op if it is gone)."""
        if self.done:
            return
        self._drop_connection()
        self._end(self._status)
        self.stream.reset(code, reason)

    def _drop_connection(self) -> None:
        """Mid-exchange: the connection is out of step (or waited for), never reused."""
        connection, self.connection = self.connection, None
        if connection is None:
            if not self.done:
                self._forwarder.pool.cancel(self)
        elif self._head_written:
            connection.abort()
        else:
            connection.give_back()  # nothing was written on it: still in step

    def _end(self, status: int | None) -> None:
        self.done = True
        gate = self._forwarder.gate
        if gate is not None:
            gate.closed(self, status)
        if self._started:
            request = self.stream.request
            assert request is not None
            log.debug(
                "addon.request",
                extra={
                    "stream": self.stream.id,
                    "method": request.method,
                    "status": status,
                    "bytes_out": self._sent,
                    "ms": round((time.monotonic() - self._started) * 1000, 1),
                },
            )
