"""One request from a browser, carried through its home's tunnel: callbacks only.

:class:`HttpExchange` is a :class:`~homeport.tunnel.stream.StreamConsumer`:
the tunnel session calls it as the home's answer arrives, and it writes
straight to the browser's transport.  It owns its stream (released however
the exchange ends, R-MT-15) and its slots, registers itself with the live
traffic registry (so withdrawn access cuts it at once), and keeps every
limit the relay promises:

* request bodies: the size cap (413; an admission may bring a tighter one,
  e.g. an integration's call) and the minimum rate (408), with the stream
  reset so Home Assistant never acts on a cut-off body;
* backpressure both ways: a full tunnel stream pauses reading from the
  browser; a browser that does not read holds back the tunnel's credit;
* the per-home bandwidth bucket, by pausing reads (up) and credit (down);
* a response head within the connection's ``head_timeout`` (``RESPONSE_HEAD_TIMEOUT``,
  300 s; 504 otherwise).

:class:`WebSocketExchange` adds the upgrade: the ``Origin`` check (cross-site
WebSocket hijacking, R-MT-08), the handshake with the browser once Home
Assistant accepted, and RFC 6455 framing through the ``websockets``
library's sans-I/O protocol (the common case, one whole unfragmented masked
data frame at a frame boundary, is read here exactly as the library reads it;
see ``WebSocketExchange._whole_message``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from aiohttp import web
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State
from websockets.utils import accept_key

from homeport.protocol import ErrorCode, RequestHead, ResponseHead
from homeport.protocol.heads import encode_request_fields
from homeport.relay import headers as hdr
from homeport.relay.limits import Bandwidth, UploadPace
from homeport.relay.live import Ending
from homeport.relay.proxy.connection import TenantConnection
from homeport.relay.proxy.http1 import Request, bodiless
from homeport.relay.proxy.responses import (
    CHUNKED,
    CLOSE,
    LENGTH,
    NONE,
    head_is_clean,
    http_date,
    relay_answer,
    response_lines,
    status_line,
)
from homeport.relay.security_headers import tenant_response_headers
from homeport.relay.tenant import MAX_WS_MESSAGE, Answer, Forward
from homeport.tunnel.priorities import request_priority
from homeport.tunnel.stream import Stream, StreamClosed
from homeport.websocket_frames import FrameBoundary, data_frame, whole_data_frame

log = logging.getLogger(__name__)
#: The websockets library logs frame contents at DEBUG: relayed bytes must never reach a
#: log (privacy), so its protocol objects get a logger that never goes below WARNING.
_WS_LOG = logging.getLogger("homeport.relay.proxy.websocket")
_WS_LOG.setLevel(logging.WARNING)

#: Body bytes held for a request whose admission is still being decided.
ADMISSION_BUFFER = 256 * 1024
#: How long the relay waits for a browser to answer its WebSocket close.
CLOSE_TIMEOUT = 5.0
_CRLF = b"\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


def exchange_for(connection: TenantConnection, request: Request) -> HttpExchange:
    if request.upgrade and (request.header(b"upgrade") or "").lower() == "websocket":
        return WebSocketExchange(connection, request)
    return HttpExchange(connection, request)


class HttpExchange:
    """A proxied HTTP request and its response (see the module docstring)."""

    # One is made per request: slots make it smaller and its attributes faster.
    __slots__ = (
        "_admitting",
        "_awaiting_head",
        "_bandwidth",
        "_body_read",
        "_body_sent",
        "_buffered",
        "_buffered_size",
        "_delayed",
        "_delayed_timer",
        "_ended",
        "_kind",
        "_length",
        "_lengths",
        "_lines",
        "_live",
        "_pace",
        "_pending",
        "_received",
        "_refused",
        "_started",
        "_status",
        "_unacked",
        "_up_queue",
        "_up_timer",
        "_ws",
        "conn",
        "done",
        "forward",
        "proxy",
        "request",
        "response_started",
        "stream",
    )

    def __init__(self, connection: TenantConnection, request: Request) -> None:
        self.conn = connection
        self.request = request
        self.proxy = connection.proxy
        self.forward: Forward | None = None
        self.stream: Stream | None = None
        self.response_started = False
        self.done = False
        # Only the debug log reads the clock for this.
        self._started = time.monotonic() if log.isEnabledFor(logging.DEBUG) else 0.0
        self._buffered: list[bytes] = []
        self._buffered_size = 0
        self._body_read = not request.has_body  # the browser sent the whole body
        self._body_sent = False  # ... and it went into the tunnel
        self._received = 0
        self._refused: Answer | None = None
        self._pace: UploadPace | None = None
        self._live: int | None = None
        self._awaiting_head = False  # the connection's head deadline runs for this exchange
        self._admitting: asyncio.Task[None] | None = None
        #: The home's buckets, or None without a bandwidth cap (then nothing is charged).
        self._bandwidth: Bandwidth | None = None
        # Response side.
        self._kind = NONE
        self._pending: list[bytes] | None = None
        self._ended = False
        self._unacked = 0
        self._status = 0
        self._lines: list[bytes] = []  # the response head's header lines (response_lines)
        self._lengths: list[int] = []
        self._length: bytes | None = None
        # Bytes held back by the home's bandwidth cap (see _to_browser, _charge_up).
        self._delayed: deque[tuple[float, list[bytes], int]] = deque()
        self._delayed_timer: asyncio.TimerHandle | None = None
        self._up_queue: deque[tuple[float, bytes | None, bool | None]] = deque()
        self._up_timer: asyncio.TimerHandle | None = None
        self._ws: Protocol | None = None  # set once a WebSocket is accepted

    # ---------------------------------------------------------------- start

    def start(self) -> None:
        """This exchange's turn to be answered: admit it, then forward or answer."""
        limits = self.proxy.limits
        if self.request.has_body and limits.body_too_large(self.request.content_length):
            self._answer(self.proxy.too_large())
            return
        if not self._body_read:
            # The minimum rate of the body counts from now (while it was queued
            # behind another request, the relay held it up, not the browser).
            self._pace = limits.upload_pace(self._too_slow)
            self._pace.__enter__()
        decision = self.proxy.admit_now(self.request, self.conn)
        if decision is not None:
            self._decided(decision)
            return
        # The database must be asked (a cache miss, the hand-off): the one case with a task.
        self._hold("admitting")
        self._admitting = asyncio.ensure_future(self._admit())

    async def _admit(self) -> None:
        try:
            decision = await self.proxy.admit(self.request, self.conn.sni, self.conn.remote)
        except Exception:
            log.exception("tenant.admission_failed")
            decision = Answer(
                self.proxy.pages.message(
                    "Something went wrong",
                    "The relay could not handle this request.",
                    status=500,
                    tenant=True,
                )
            )
        self._admitting = None
        if self.conn.lost or self.done:
            if isinstance(decision, Forward):
                decision.release()
            return
        self._release_hold("admitting")
        self._decided(decision)

    def _decided(self, decision: Answer | Forward) -> None:
        if isinstance(decision, Answer):
            self._answer(decision)
            return
        cap = decision.max_body
        if cap is not None and (self._received > cap or (self.request.content_length or 0) > cap):
            # A tighter cap than the relay's (an integration's call): refused before a
            # byte reaches the home, and the connection closes (the rest is not read).
            decision.release()
            self._refused = self.proxy.too_large()
            self._answer(self._refused)
            return
        self.forward = decision
        self._bandwidth = self.proxy.limits.bandwidth_for(decision.instance_id)
        self._open(decision)

    def _open(self, forward: Forward) -> None:
        request = self.request
        websocket = isinstance(self, WebSocketExchange)
        try:
            names, values = hdr.request_fields(
                request.headers,
                client_ip=self.conn.remote,
                public_host=forward.public_host,
                websocket=websocket,
            )
            priority = request_priority(
                request.path, websocket=websocket, content_length=request.content_length
            )
            # Encoded from the bytes as parsed (and cleaned): the stream's own head
            # keeps method, target and priority only, which is all the relay reads.
            encoded = encode_request_fields(
                priority,
                request.method.encode("ascii"),
                request.target.encode("latin-1"),
                forward.tunnel.connection.header_format.encode_fields(names, values),
            )
            self.stream = forward.tunnel.open_stream(
                RequestHead(request.method, request.target, [], priority),
                websocket=websocket,
                end_stream=not websocket and self._body_read and not self._buffered_size,
                consumer=self,
                encoded=encoded,
            )
        except StreamClosed as exc:
            self._answer(self.proxy.tunnel_error(exc))
            return
        except ValueError:  # a head the tunnel must not carry (HeadError)
            self._answer(self.proxy.bad_request())
            return
        if not websocket and self._body_read and not self._buffered_size:
            self._body_sent = True
        # Registered with who opened it, so withdrawn access cuts it at once.
        self._live = self.proxy.gate.live.register(
            forward.instance_id,
            "websocket" if websocket else "http",
            self._cut,
            forward.principal,
        )
        self._awaiting_head = True
        self.conn.await_head()
        if not self._body_read and (request.header(b"expect") or "").lower() == "100-continue":
            # The client waits for this before sending its body (RFC 9110 §10.1.1): the
            # relay answers it itself once the request is admitted (the expectation
            # is not passed on; the home gets the body as it comes).
            self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        buffered, self._buffered = self._buffered, []
        self._buffered_size = 0
        self.conn.resume("buffered")
        for chunk in buffered:
            self._send(chunk)
        if self._body_read and not self._body_sent and not websocket:
            self._end_body()

    # ------------------------------------------------------- the request body

    def body(self, data: bytes) -> None:
        """A piece of the request body from the browser."""
        if self.done or self._refused is not None:
            return
        self._received += len(data)
        limit = self.proxy.limits.config.max_body_bytes
        if self.forward is not None and self.forward.max_body is not None:
            limit = self.forward.max_body
        if limit > 0 and self._received > limit:
            # Home Assistant must not act on a cut-off body: the stream is reset.
            self._refuse_body(self.proxy.too_large(), "request body too large")
            return
        if self._pace is not None:
            self._pace.received(len(data))
        stream = self.stream
        if stream is None:
            # Not forwarded yet (queued behind another request, or being admitted):
            # held here, and reading stops while the relay takes its time.
            self._buffered.append(data)
            self._buffered_size += len(data)
            if self._buffered_size > ADMISSION_BUFFER:
                self.conn.pause("buffered")
            return
        if self._bandwidth is not None or not data:
            self._send(data)
            return
        # No bandwidth cap: straight into the tunnel (what _up_now does).
        try:
            room = stream.send_data(data)
        except StreamClosed:
            return  # the answer (or its failure) is on its way through stream_ended
        if not room:
            self._hold("tunnel")

    def body_end(self) -> None:
        self._body_read = True
        if self._pace is not None:
            self._pace.__exit__()
            self._pace = None
        if self.stream is not None and not self._body_sent:
            self._end_body()

    def _send(self, data: bytes) -> None:
        if data:
            self._up(data, None)

    def _end_body(self) -> None:
        self._body_sent = True
        if self.stream is not None:
            self._up(None, None)

    def _up(self, data: bytes | None, text: bool | None) -> None:
        """Into the tunnel (body bytes, a WebSocket message when ``text`` is set, or the
        body's end when ``data`` is None), within the home's bandwidth cap: what the
        bucket has not paid for waits here, and reading from the browser stops meanwhile.
        """
        if data and self._bandwidth is not None:
            delay = self._bandwidth.up.charge(len(data))
            if delay > 0 or self._up_queue:
                self._up_queue.append((self.conn.loop.time() + max(delay, 0.0), data, text))
                if self._up_timer is None:
                    self._hold("bandwidth")
                    self._up_timer = self.conn.loop.call_at(self._up_queue[0][0], self._up_paid)
                return
        elif data is None and self._up_queue:
            self._up_queue.append((self._up_queue[-1][0], None, None))
            return
        self._up_now(data, text)

    def _up_now(self, data: bytes | None, text: bool | None) -> None:
        stream = self.stream
        if stream is None:
            return
        try:
            if data is None:
                stream.send_data(b"", end=True)
                return
            room = stream.send_data(data) if text is None else stream.send_ws_now(data, text=text)
        except StreamClosed:
            return  # the answer (or its failure) is on its way through stream_ended
        if not room:
            self._hold("tunnel")

    def _up_paid(self) -> None:
        self._up_timer = None
        now = self.conn.loop.time()
        queue = self._up_queue
        while queue and queue[0][0] <= now:
            _, data, text = queue.popleft()
            self._up_now(data, text)
        if queue:
            self._up_timer = self.conn.loop.call_at(queue[0][0], self._up_paid)
        else:
            self._release_hold("bandwidth")

    def _hold(self, why: str) -> None:
        """The relay, not the browser, holds the body up: stop reading, stop the clock."""
        self.conn.pause(why)
        if self._pace is not None:
            self._pace.hold()

    def _release_hold(self, why: str) -> None:
        self.conn.resume(why)
        if self._pace is not None and not self.done:
            self._pace.resume()

    def _too_slow(self) -> None:
        self._refuse_body(self.proxy.too_slow(), "request body below the minimum rate")

    def _refuse_body(self, answer: Answer, why: str) -> None:
        self._refused = answer
        if self._pace is not None:
            self._pace.__exit__()
            self._pace = None
        if self.stream is not None:
            self.stream.reset(ErrorCode.CANCEL, why)  # -> stream_ended answers
        elif self.conn._current is self:
            self._answer(answer)
        else:
            self.conn.close()

    # ------------------------------------------------ the answer (callbacks)

    def head_received(self, head: ResponseHead, end: bool) -> None:
        self._cancel_head_timer()
        self._lines, self._lengths, self._length = response_lines(*head.fields)
        self._status = head.status
        self._ended = end
        if end:
            self._commit()
        else:
            # Small answers arrive whole in one tunnel message: wait until the
            # session has handed over all of it, then write head and body at once.
            self._pending = []
            self.conn.loop.call_soon(self._commit)

    def data_received(self, data: bytes, end: bool) -> None:
        if self._pending is not None:
            if data:
                self._pending.append(data)
            if end:
                self._ended = True
                self._commit()
            return
        if data:
            self._write_body(data)
        if end:
            self._ended = True
            self._end_response()

    def _commit(self) -> None:
        """Write the head (and whatever body is here already) in one go."""
        if self.done or self.response_started:
            return
        pending, self._pending = self._pending or [], None
        status, lines = self._status, self._lines
        # How to delimit the body: the home's content-length when it is a plain
        # number; otherwise chunked for an HTTP/1.1 browser, closing for HTTP/1.0.
        if bodiless(self.request.method, status):
            kind = NONE
        elif self._length is not None and self._length.isdigit():
            kind = LENGTH
        else:
            kind = CHUNKED if self.request.version == "1.1" else CLOSE
        if self._ended and kind in (CHUNKED, CLOSE):
            # The whole body is here: announce its length instead.
            kind = LENGTH
            lines = _without(lines, self._lengths)
            lines.append(b"content-length: %d\r\n" % sum(map(len, pending)))
        elif kind == CHUNKED:
            lines = _without(lines, self._lengths)
            lines.append(b"transfer-encoding: chunked\r\n")
        close = kind == CLOSE or not self._reusable()
        head = b"".join(
            [
                status_line(status),
                b"date: ",
                http_date(),
                b"\r\n",
                *lines,
                b"connection: close\r\n\r\n" if close else b"\r\n",
            ]
        )
        if not head_is_clean(head, len(lines) + (4 if close else 3)):
            # Never: the tunnel's head decoder refuses every field that could do this.
            log.error("tenant.unclean_response_head", extra={"instance": self._instance})
            failed = StreamClosed(ErrorCode.PROTOCOL, "unclean response head")
            self._answer(self.proxy.tunnel_error(failed))
            return
        self._kind = kind
        self.response_started = True
        parts: list[bytes] = []
        size = 0
        for data in pending:
            size += len(data)
            if kind != NONE:
                parts += self._framed(data)
        # Head and body in one write: one TLS record and one send, not two.
        self._to_browser(parts, size, head=head)
        if self._ended:
            self._end_response()

    def _framed(self, data: bytes) -> list[bytes]:
        if self._kind == CHUNKED:
            return [b"%x\r\n" % len(data), data, _CRLF]
        return [data]

    def _write_body(self, data: bytes) -> None:
        self._to_browser(self._framed(data) if self._kind != NONE else [], len(data))

    def _to_browser(self, parts: list[bytes], size: int, head: bytes = b"") -> None:
        """Write body bytes (``size`` of them, framed as ``parts``) to the browser,
        after the response ``head`` if given (which is never held back).

        Under the home's bandwidth cap, bytes the bucket has not paid for yet
        wait here (each until its own time) and their credit with them, so the
        home sends no faster than the cap; at most a stream window waits.
        """
        if size and self._bandwidth is not None:
            delay = self._bandwidth.down.charge(size)
            if delay > 0 or self._delayed:
                if head:
                    self.conn.write(head)
                at = self.conn.loop.time() + max(delay, 0.0)
                self._delayed.append((at, parts, size))
                self._schedule_delayed()
                return
        if head:
            parts.insert(0, head)
        if parts:
            self.conn.writelines(parts)
        self._acknowledge(size)

    def _schedule_delayed(self) -> None:
        if self._delayed_timer is None and self._delayed:
            self._delayed_timer = self.conn.loop.call_at(self._delayed[0][0], self._send_delayed)

    def _send_delayed(self) -> None:
        self._delayed_timer = None
        now = self.conn.loop.time()
        while self._delayed and self._delayed[0][0] <= now:
            _, parts, size = self._delayed.popleft()
            if parts:
                self.conn.writelines(parts)
            self._acknowledge(size)
        if self._delayed:
            self._schedule_delayed()
        elif self._ended and not self.done and self._ws is None:
            self._end_response()

    def _acknowledge(self, size: int) -> None:
        """Give the home its credit back, unless the browser is not reading."""
        if not size:
            return
        if self.conn.write_paused or self._unacked:
            self._unacked += size
            return
        if self.stream is not None:
            self.stream.consumed(size)

    def resume_writing(self) -> None:
        """The browser reads again: pass the held credit on."""
        if self.conn.write_paused or not self._unacked or self.stream is None:
            return
        size, self._unacked = self._unacked, 0
        self.stream.consumed(size)

    def _end_response(self) -> None:
        if self._delayed:
            return  # _send_delayed ends it once the last bytes went out
        if self._kind == CHUNKED:
            self.conn.write(_LAST_CHUNK)
        self._finish(keep_alive=self._reusable() and self._kind != CLOSE)

    def _reusable(self) -> bool:
        """Can the connection carry another request after this one?"""
        return self.request.keep_alive and self._body_read and self._refused is None

    def ws_message_received(self, data: bytes, text: bool) -> None:  # pragma: no cover
        self._acknowledge(len(data))  # only a WebSocket exchange receives these

    def ws_closed(self, code: int, reason: str) -> None:  # pragma: no cover
        pass

    def writable(self) -> None:
        """The tunnel has room for the request body again."""
        self._release_hold("tunnel")

    def stream_ended(self, error: StreamClosed | None) -> None:
        if self.done:
            return
        if error is None:
            if not self.response_started:
                self._answer(self.proxy.tunnel_error(StreamClosed(ErrorCode.PROTOCOL, "no head")))
            elif not self._ended:
                self.conn.abort()
                self._finish(keep_alive=False)
            return
        if self._refused is not None and not self.response_started:
            self._answer(self._refused)
        elif not self.response_started:
            self._answer(self.proxy.tunnel_error(error))
        else:
            # Mid-body failure: the status line is out; cut the connection so the
            # browser sees a truncated response, not a complete wrong one.
            self.conn.abort()
            self._finish(keep_alive=False)

    # ------------------------------------------------------------- endings

    def _answer(self, answer: Answer) -> None:
        """The relay answers itself (no tunnel, or the tunnel failed before a head)."""
        if self.done or self.response_started:
            return
        self.response_started = True
        close = answer.close or not self._reusable()
        self.conn.write(relay_answer(answer.response, method=self.request.method, close=close))
        self._finish(keep_alive=not close)

    def head_late(self) -> None:
        """The home did not start its answer within the connection's ``head_timeout``."""
        self._awaiting_head = False
        stream = self.stream
        # The 504 first: resetting the stream first ends it (stream_ended), which
        # would answer 502 "connection lost" instead.  _answer releases the stream.
        self._answer(self.proxy.tunnel_error(StreamClosed(ErrorCode.UPSTREAM_TIMEOUT, "timeout")))
        if stream is not None:
            stream.reset(ErrorCode.CANCEL, "no response head in time")

    def _cancel_head_timer(self) -> None:
        if self._awaiting_head:
            self._awaiting_head = False
            self.conn.head_arrived()

    def _cut(self, why: Ending) -> None:
        """Access ended mid-exchange: stop the home's side and drop the browser's."""
        if self.stream is not None:
            self.stream.reset(ErrorCode.CANCEL, why.reason)
        self.conn.abort()
        self._finish(keep_alive=False)

    def connection_lost(self) -> None:
        """The browser went away: let go of everything (the stream is reset)."""
        if self._admitting is not None:
            self._admitting.cancel()
        self._finish(keep_alive=False)

    def _finish(self, *, keep_alive: bool, close: bool = True) -> None:
        """The exchange is over: release the stream, the slots and the registry entry.

        ``close=False`` keeps the browser's connection for a WebSocket's closing
        handshake (it closes when the browser answers, or after CLOSE_TIMEOUT).
        """
        if self.done:
            return
        self.done = True
        self._cancel_head_timer()
        for timer in (self._delayed_timer, self._up_timer):
            if timer is not None:
                timer.cancel()
        self._delayed.clear()
        self._up_queue.clear()
        if self._pace is not None:
            self._pace.__exit__()
            self._pace = None
        if self.stream is not None:
            self.stream.release(ErrorCode.CANCEL, "abandoned")
        if self._live is not None:
            self.proxy.gate.live.unregister(self._live)
        if self.forward is not None:
            self.forward.release()
        if self._started:  # the debug log was on when the exchange began
            log.debug(
                "tenant.request",
                extra={
                    "instance": self._instance,
                    "method": self.request.method,
                    "ms": round((time.monotonic() - self._started) * 1000, 1),
                },
            )
        if not close:
            return
        if not keep_alive or not self._body_read:
            self.conn.close()
        self.conn.finished(self, keep_alive=keep_alive and self._body_read)

    @property
    def _instance(self) -> str:
        return self.forward.instance_id if self.forward is not None else ""

    # --------------------------------------------- WebSocket-only entry points

    def upgrade_requested(self, rest: bytes) -> None:
        """Only a WebSocket exchange is ever upgraded (see ``exchange_for``)."""
        self.conn.refuse(400, "unexpected upgrade")

    def browser_data(self, data: bytes) -> None:  # pragma: no cover - never switched to
        pass

    def browser_eof(self) -> None:  # pragma: no cover - never switched to
        pass


class WebSocketExchange(HttpExchange):
    """A WebSocket through the tunnel (see the module docstring)."""

    __slots__ = ("_boundary", "_cut_by", "_message", "_message_text", "_rest")

    def __init__(self, connection: TenantConnection, request: Request) -> None:
        super().__init__(connection, request)
        self._body_read = self._body_sent = True  # an upgrade request has no body
        self._rest = b""
        self._message: list[bytes] = []
        self._message_text = False
        self._cut_by: Ending | None = None
        # Where the library's parser is in the browser's byte stream.
        self._boundary = FrameBoundary()

    def upgrade_requested(self, rest: bytes) -> None:
        self._rest = rest

    def _reusable(self) -> bool:
        return False  # after an upgrade request, nothing on the connection is HTTP any more

    def _open(self, forward: Forward) -> None:
        origin = self.request.header(b"origin")
        if origin is not None and origin != f"https://{forward.public_host}":
            log.warning("tenant.ws_bad_origin", extra={"instance": forward.instance_id})
            forward.release()
            self.forward = None
            refusal = web.Response(status=403, text="Cross-origin WebSocket refused.\n")
            self._answer(Answer(refusal, close=True))
            return
        super()._open(forward)

    def head_received(self, head: ResponseHead, end: bool) -> None:
        if head.status != 101:
            super().head_received(head, end)  # refused: an ordinary answer
            return
        self._cancel_head_timer()
        offered = {
            p.strip()
            for p in (self.request.header(b"sec-websocket-protocol") or "").split(",")
            if p.strip()
        }
        chosen = next((v for n, v in head.headers if n == "sec-websocket-protocol"), None)
        headers = [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", accept_key(self.request.header(b"sec-websocket-key") or "")),
        ]
        if chosen and chosen in offered:
            headers.append(("sec-websocket-protocol", chosen))
        self.response_started = True
        self._kind = NONE
        self.conn.write(
            b"".join([status_line(101), *_lines(tenant_response_headers(headers)), _CRLF])
        )
        self._ws = Protocol(Side.SERVER, state=State.OPEN, max_size=MAX_WS_MESSAGE, logger=_WS_LOG)
        self.conn.switch_to(self)
        if self._rest:
            rest, self._rest = self._rest, b""
            self.browser_data(rest)

    # -------------------------------------------------------- browser side

    def browser_data(self, data: bytes) -> None:
        ws = self._ws
        if ws is None:
            return
        if (
            self._boundary.at_start
            and ws.state is State.OPEN
            and ws.current_size is None
            and self._whole_message(ws, data)
        ):
            return
        ws.receive_data(data)
        self._boundary.track(data)
        for frame in ws.events_received():
            assert isinstance(frame, Frame)  # an open protocol only yields frames
            self._frame(frame)
        self._flush_ws()

    def _whole_message(self, ws: Protocol, data: bytes) -> bool:
        """The common case without the library's parser: ``data`` is exactly one whole,
        unfragmented, masked text or binary frame, read at a frame boundary
        (:func:`~homeport.websocket_frames.whole_data_frame`, the library's checks).
        False (nothing consumed) for anything else, which then goes through the library.
        """
        stream = self.stream
        if stream is None or self.done:
            return False
        found = whole_data_frame(data, masked=True, limit=ws.max_message_size)
        if found is None:
            return False
        text, payload = found
        if self._bandwidth is not None:
            self._up(payload, text)
            return True
        # No bandwidth cap: straight into the tunnel (what _up_now does).
        try:
            room = stream.send_ws_now(payload, text=text)
        except StreamClosed:
            return True  # the close is on its way through stream_ended
        if not room:
            self._hold("tunnel")
        return True

    def browser_eof(self) -> None:
        if self._ws is not None:
            self._ws.receive_eof()
            self._flush_ws()

    def _frame(self, frame: Frame) -> None:
        stream = self.stream
        if stream is None or self.done:
            return  # closing: only the browser's close matters now (the protocol reads it)
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self._message_text = opcode is Opcode.TEXT
            self._message = [bytes(frame.data)]
        elif opcode is Opcode.CONT:
            self._message.append(bytes(frame.data))
        elif opcode is Opcode.CLOSE:
            assert self._ws is not None
            received = self._ws.close_rcvd
            code = received.code if received is not None else 1000
            with contextlib.suppress(StreamClosed):
                stream.close_ws(code if code not in (1005, 1006) else 1000, "")
            return
        else:
            return  # PING is answered by the protocol itself; PONG needs nothing
        if not frame.fin:
            return
        data = b"".join(self._message) if len(self._message) > 1 else self._message[0]
        self._message = []
        if self._message_text:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                assert self._ws is not None
                self._ws.fail(1007, "invalid UTF-8")
                return
        self._up(data, self._message_text)

    def _flush_ws(self) -> None:
        ws = self._ws
        if ws is None:
            return
        out = ws.data_to_send()
        if out:
            eof = out[-1] == b""
            self.conn.writelines([part for part in out if part])
            if eof:
                self._closed_by_browser()
                return
        if ws.state is State.CLOSED:
            self._closed_by_browser()

    def _closed_by_browser(self) -> None:
        """The closing handshake is over (or failed): close the connection, release the stream."""
        self.conn.close()
        self._finish(keep_alive=False)

    # ---------------------------------------------------------- home side

    def ws_message_received(self, data: bytes, text: bool) -> None:
        ws = self._ws
        if ws is None or ws.state is not State.OPEN:
            if self.stream is not None:
                self.stream.consumed(len(data))
            return
        if ws.expect_continuation_frame:  # never: the relay sends whole messages
            if text:
                ws.send_text(data)
            else:
                ws.send_binary(data)
            self._to_browser(ws.data_to_send(), len(data))
            return
        # A server's frame: not masked, and the payload not copied into it.
        parts = ws.data_to_send()  # nothing, unless the library queued a pong
        parts += data_frame(data, text=text, mask=False)
        self._to_browser(parts, len(data))

    def ws_closed(self, code: int, reason: str) -> None:
        ws = self._ws
        if ws is None:
            return
        if ws.state is State.OPEN:
            ws.send_close(_sendable(code), reason[:123])
        self._flush_ws()

    def stream_ended(self, error: StreamClosed | None) -> None:
        if self._ws is None:
            super().stream_ended(error)
            return
        if self.done:
            return
        ws = self._ws
        if ws.state is State.OPEN:
            why = self._cut_by
            if why is not None:
                ws.send_close(why.code, why.reason)
            elif error is not None:
                ws.send_close(1011, "home connection lost")
            else:
                ws.send_close(1000, "")
        self._finish(keep_alive=False, close=False)
        self._flush_ws()
        if not self.conn.lost and ws.state is not State.CLOSED:
            # Wait for the browser's close (RFC 6455 §7.1.1), not for ever.
            self.conn.loop.call_later(CLOSE_TIMEOUT, self.conn.abort)

    def _cut(self, why: Ending) -> None:
        """Access ended: close the browser's WebSocket (4001 or 1008) and reset the stream."""
        if self._ws is None:
            super()._cut(why)
            return
        self._cut_by = why
        if self.stream is not None:
            self.stream.reset(ErrorCode.CANCEL, why.reason)  # -> stream_ended closes
        else:
            self.stream_ended(None)


def _without(lines: list[bytes], drop: list[int]) -> list[bytes]:
    """``lines`` without the ones at the indices ``drop`` (a new list)."""
    if not drop:
        return list(lines)
    return [line for i, line in enumerate(lines) if i not in drop]


def _lines(headers: list[tuple[str, str]]) -> list[bytes]:
    return [f"{name}: {value}\r\n".encode("latin-1") for name, value in headers]


def _sendable(code: int) -> int:
    """RFC 6455 §7.4: 1005, 1006 and 1015 must never be sent in a close frame."""
    if code in (1005, 1006, 1015) or not (1000 <= code <= 4999):
        return 1000
    return code


__all__ = ["HttpExchange", "WebSocketExchange", "bodiless", "exchange_for"]
