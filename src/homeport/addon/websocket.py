"""A WebSocket from the tunnel to Home Assistant: the upgrade, then messages both ways.

:class:`WebSocketExchange` dials a connection of its own (never pooled: it
will carry WebSocket frames, not requests), sends the upgrade request with
its own ``Sec-WebSocket-Key`` and the subprotocols the browser offered, and
checks Home Assistant's 101.  From then on RFC 6455 framing is the
``websockets`` library's sans-I/O :class:`~websockets.protocol.Protocol`
(client side: it masks what we send, answers pings, checks what arrives).

Threats and failures this stops:

* A forged or confused upgrade: a 101 without ``Upgrade: websocket``, the
  ``Connection: upgrade`` token, the ``Sec-WebSocket-Accept`` our key
  demands, with a subprotocol the browser did not offer or an extension we
  did not ask for, is refused: the relay shows its 502 page.
* A refused upgrade is answered with Home Assistant's status (as before).
* Oversized or malformed frames: at most ``MAX_WS_MESSAGE`` per message and
  text that is valid UTF-8; the library closes with 1009 / 1002 otherwise.
* Privacy: the library logs frame contents at DEBUG, so its protocol objects
  get a logger that never goes below WARNING (``_WS_LOG``): no relayed byte
  reaches a log whatever the process's log level.
* Closing: close codes go on as before (``valid_close_code``); each side's
  close is waited for at most ``CLOSE_WAIT`` seconds, then the connection or
  the stream is cut, so nothing lingers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State
from websockets.utils import accept_key, generate_key

from homeport.addon.gate import SWITCHED_OFF_CLOSE, SWITCHED_OFF_TEXT, refuse
from homeport.addon.messages import request_head, websocket_fields
from homeport.addon.upstream import RawHeaders, UpstreamConnection
from homeport.protocol import ErrorCode, HeadError, ResponseHead
from homeport.protocol.heads import connection_tokens
from homeport.tunnel.stream import Stream, StreamClosed
from homeport.websocket_frames import FrameBoundary, data_frame, whole_data_frame

if TYPE_CHECKING:
    from homeport.addon.forward import HomeAssistantForwarder

log = logging.getLogger(__name__)
#: The websockets library logs frame contents at DEBUG: relayed bytes must never reach a
#: log (privacy), so its protocol objects get a logger that never goes below WARNING.
_WS_LOG = logging.getLogger("homeport.addon.websocket.frames")
_WS_LOG.setLevel(logging.WARNING)

MAX_WS_MESSAGE = 16 * 1024 * 1024
#: How long a close is waited for (either side) before the connection or stream is cut.
CLOSE_WAIT = 5.0
_MAX_REASON = 123  # RFC 6455 §5.5: a close frame's payload is at most 125 bytes
# An enum member costs an attribute look-up through its class on every use; these
# are read for every message.
_TEXT, _BINARY, _CONT, _CLOSE = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.CLOSE
_OPEN = State.OPEN


def websocket_exchange(
    forwarder: HomeAssistantForwarder, stream: Stream, *, send_forwarded: bool
) -> WebSocketExchange:
    """The exchange for an upgrade request; :class:`RequestRefused` for a bad target."""
    request = stream.request
    assert request is not None
    offered = [
        p.strip()
        for name, value in request.headers
        if name == "sec-websocket-protocol"
        for p in value.split(",")
        if p.strip()
    ]
    key = generate_key()
    head, _ = request_head(
        request.method,
        request.target,
        request.headers,
        forwarder.origin,
        send_forwarded=send_forwarded,
        has_body=False,
        websocket=websocket_fields(key, offered),
    )
    return WebSocketExchange(forwarder, stream, head, key, offered)


class WebSocketExchange:
    """One WebSocket between the tunnel and Home Assistant (see the module docstring)."""

    __slots__ = (
        "_acked_later",
        "_boundary",
        "_closed_to_tunnel",
        "_cutting",
        "_forwarder",
        "_ha_timer",
        "_head",
        "_key",
        "_message",
        "_message_text",
        "_offered",
        "_tunnel_closed",
        "_tunnel_timer",
        "connection",
        "done",
        "stream",
        "ws",
    )

    def __init__(
        self,
        forwarder: HomeAssistantForwarder,
        stream: Stream,
        head: bytes,
        key: str,
        offered: list[str],
    ) -> None:
        self._forwarder = forwarder
        self.stream = stream
        self._head = head
        self._key = key
        self._offered = offered
        self.connection: UpstreamConnection | None = None
        self.ws: Protocol | None = None  # once Home Assistant accepted
        self.done = False
        self._message: list[bytes] = []
        self._message_text = False
        #: Where the library's parser is in Home Assistant's byte stream.
        self._boundary = FrameBoundary()
        self._acked_later = 0
        #: Our close went to the relay / the relay's close arrived.
        self._closed_to_tunnel = False
        self._tunnel_closed = False
        self._cutting = False
        #: Waiting for the relay's close / for Home Assistant's.
        self._tunnel_timer: asyncio.TimerHandle | None = None
        self._ha_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._forwarder.pool.dial_unpooled(self)

    # ------------------------------------------------------ the handshake

    def upstream_ready(self, connection: UpstreamConnection) -> None:
        if self.done:
            connection.give_back()
            return
        self.connection = connection
        connection.user = self
        connection.write(self._head)

    def upstream_unavailable(self, error: BaseException) -> None:
        if not self.done:
            self._upstream_failed(error)

    def upstream_head(self, status: int, headers: RawHeaders, body: bytes, complete: bool) -> None:
        """Home Assistant refused the upgrade: the browser gets its status (as before)."""
        if self.done:
            return
        self._drop_connection()
        self._end(status)
        try:
            self.stream.respond(ResponseHead(status, []), end=True)
        except (HeadError, RuntimeError):
            log.warning("addon.bad_upstream_head", extra={"stream": self.stream.id})
            self.stream.reset(ErrorCode.UPSTREAM_UNAVAILABLE, "unusable response head")
            return
        except StreamClosed:
            self.stream.reset(ErrorCode.UPSTREAM_UNAVAILABLE, "response head not carried")
            return
        self.stream.release(ErrorCode.NO_ERROR, "upgrade refused")

    def upstream_body(self, body: bytes, complete: bool) -> None:
        pass  # a refused upgrade's page: the connection is closed already

    def upstream_upgraded(self, status: int, headers: RawHeaders, rest: bytes) -> None:
        if self.done:
            return
        connection = self.connection
        assert connection is not None
        chosen = self._accepted(status, headers)
        if chosen is None:
            log.warning("addon.bad_upgrade", extra={"stream": self.stream.id})
            self._fail(ErrorCode.UPSTREAM_UNAVAILABLE, "Home Assistant's upgrade was not valid")
            return
        connection.switch_to(self)
        answer = [("sec-websocket-protocol", chosen)] if chosen else []
        try:
            self.stream.respond(ResponseHead(101, answer))
        except StreamClosed:
            self._fail(ErrorCode.UPSTREAM_UNAVAILABLE, "response head not carried")
            return
        self.ws = Protocol(Side.CLIENT, state=State.OPEN, max_size=MAX_WS_MESSAGE, logger=_WS_LOG)
        if rest:
            self.raw_received(rest)

    def _accepted(self, status: int, headers: RawHeaders) -> str | None:
        """The subprotocol chosen ("" for none) if the 101 is a valid answer to our upgrade."""
        if status != 101:
            return None
        upgrade = accept = None
        tokens: frozenset[str] = frozenset()
        chosen: list[str] = []
        for name, value in headers:
            lname = name.lower()
            if lname == b"upgrade":
                upgrade = value
            elif lname == b"connection":
                tokens |= connection_tokens([value.decode("latin-1")])
            elif lname == b"sec-websocket-accept":
                accept = value
            elif lname == b"sec-websocket-protocol":
                chosen.append(value.decode("latin-1").strip())
            elif lname == b"sec-websocket-extensions":
                return None  # we offered none (no compression on this hop)
        if (upgrade or b"").lower() != b"websocket" or "upgrade" not in tokens:
            return None
        if accept is None or accept.decode("latin-1") != accept_key(self._key):
            return None
        if len(chosen) > 1 or (chosen and chosen[0] not in self._offered):
            return None
        return chosen[0] if chosen else ""

    def upstream_lost(self, error: BaseException | None) -> None:
        if not self.done:
            self.connection = None
            self._upstream_failed(error)

    def upstream_writable(self) -> None:
        pass  # the upgrade request is all we write before the 101

    # ------------------------------------------- Home Assistant's side, open

    def raw_received(self, data: bytes) -> None:
        ws = self.ws
        if ws is None:
            return
        if self._boundary.at_start and ws.state is _OPEN and ws.current_size is None:
            # The common case without the library's parser: exactly one whole,
            # unmasked text or binary frame (websocket_frames.whole_data_frame).
            found = whole_data_frame(data, masked=False, limit=ws.max_message_size)
            if found is not None:
                self._message_text, payload = found
                self._deliver(payload)
                return
        ws.receive_data(data)
        self._boundary.track(data)
        for event in ws.events_received():
            assert isinstance(event, Frame)  # an open protocol only yields frames
            self._frame(ws, event)
        if ws.parser_exc is not None and ws.close_sent is not None:
            # Home Assistant sent something RFC 6455 forbids (or too large): the
            # protocol closed with 1002 / 1007 / 1009; the person's side hears the same.
            self._close_tunnel(ws.close_sent.code)
        self._flush()

    def _frame(self, ws: Protocol, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is _TEXT or opcode is _BINARY:
            self._message_text = opcode is _TEXT
            if frame.fin:
                self._deliver(bytes(frame.data))
            else:
                self._message = [bytes(frame.data)]
        elif opcode is _CONT:
            self._message.append(bytes(frame.data))
            if frame.fin:
                data, self._message = b"".join(self._message), []
                self._deliver(data)
        elif opcode is _CLOSE:
            received = ws.close_rcvd
            self._close_tunnel(received.code if received is not None else 1005)
        # PING is answered by the protocol itself; PONG needs nothing.

    def _deliver(self, data: bytes) -> None:
        """A whole message from Home Assistant, into the tunnel."""
        if self._closed_to_tunnel or self.done:
            return  # closing: only the close handshake matters now
        if self._message_text:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                assert self.ws is not None
                self.ws.fail(1007, "invalid UTF-8")
                self._close_tunnel(1007)
                return
        try:
            room = self.stream.send_ws_now(data, text=self._message_text)
        except StreamClosed:
            self._stream_failed()
            return
        if not room and self.connection is not None:
            self.connection.pause_reading()  # until writable()

    def raw_lost(self, error: BaseException | None) -> None:
        """Home Assistant's connection ended (after its close, or cut)."""
        if self._ha_timer is not None:
            self._ha_timer.cancel()
            self._ha_timer = None
        ws = self.ws
        self.connection = None
        if ws is not None:
            ws.receive_eof()
            ws.data_to_send()
            if self.done:
                return
            received = ws.close_rcvd
            code = received.code if received is not None else 1006
            self._close_tunnel(1011 if code == 1006 else code)

    def raw_writable(self) -> None:
        if self._acked_later and not self.done:
            size, self._acked_later = self._acked_later, 0
            self.stream.consumed(size)

    def _flush(self) -> None:
        """Send what the protocol has for Home Assistant; close once both closes crossed."""
        ws, connection = self.ws, self.connection
        if ws is None or connection is None:
            return
        out = ws.data_to_send()
        if out:
            connection.writelines([part for part in out if part])
        if ws.close_sent is not None and (ws.close_rcvd is not None or ws.parser_exc is not None):
            # Both closes crossed, or the protocol failed: nothing more to say.
            connection.close()

    # ------------------------------------------------------- the tunnel side

    def ws_message_received(self, data: bytes, text: bool) -> None:
        ws, connection = self.ws, self.connection
        if ws is None or connection is None or ws.state is not _OPEN:
            self.stream.consumed(len(data))  # closing: dropped, credit back
            return
        if ws.expect_continuation_frame:  # never: we send whole messages
            if text:
                ws.send_text(data)
            else:
                ws.send_binary(data)
            connection.writelines(ws.data_to_send())
        else:
            # What send_text / send_binary write (a client's frame: masked), without
            # a Frame object; after anything the library queued (a pong).
            parts = ws.data_to_send()
            parts += data_frame(data, text=text, mask=True)
            connection.writelines(parts)
        if connection.write_paused:
            self._acked_later += len(data)
        else:
            self.stream.consumed(len(data))

    def ws_closed(self, code: int, reason: str) -> None:
        """The relay's close (the browser's): pass it on, wait for Home Assistant's."""
        self._tunnel_closed = True
        ws = self.ws
        if ws is not None and ws.state is State.OPEN:
            ws.send_close(valid_close_code(code), _reason(reason))
            self._flush()
            self._await_home_assistant()
        if self._closed_to_tunnel:
            self._finish()

    def data_received(self, data: bytes, end: bool) -> None:  # pragma: no cover
        self.stream.consumed(len(data))  # an upgrade request has no body

    def head_received(self, head: ResponseHead, end: bool) -> None:  # pragma: no cover
        pass  # relay side only

    def writable(self) -> None:
        if self.connection is not None:
            self.connection.resume_reading()

    def stream_ended(self, error: StreamClosed | None) -> None:
        """The stream was reset or the tunnel closed: Home Assistant's side goes too."""
        if self.done:
            return
        if self.ws is None:
            self._drop_connection()
            self._end(None)
            return
        self._end(101)
        self._let_go_of_home_assistant(1001, "tunnel stream closed")

    def cut(self) -> None:
        """Remote access switched off: close (1008) now, then wait briefly for the peer's."""
        if self.done or self._cutting:
            return
        self._cutting = True
        stream = self.stream
        if self.ws is None:
            self._drop_connection()
            self._end(503)
            refuse(stream)
            return
        if not self._closed_to_tunnel:
            self._closed_to_tunnel = True
            with contextlib.suppress(StreamClosed):
                stream.close_ws(SWITCHED_OFF_CLOSE, SWITCHED_OFF_TEXT)
        ws = self.ws
        if ws.state is State.OPEN:
            ws.send_close(1000, "")
            self._flush()
        if self._tunnel_closed:
            self._finish()
        else:
            self._await_tunnel()

    # -------------------------------------------------------------- endings

    def _close_tunnel(self, code: int) -> None:
        """Home Assistant closed (or failed): our close to the relay, then wait for its."""
        if self._closed_to_tunnel or self.done:
            return
        self._closed_to_tunnel = True
        try:
            self.stream.close_ws(code, "")
        except StreamClosed:
            self._stream_failed()
            return
        if self._tunnel_closed:
            self._finish()
        else:
            self._await_tunnel()

    def _finish(self) -> None:
        """Both closes crossed on the tunnel: the stream is released, the exchange over."""
        if self.done:
            return
        if self._tunnel_timer is not None:
            self._tunnel_timer.cancel()
            self._tunnel_timer = None
        self._end(101)
        self.stream.release(ErrorCode.NO_ERROR, "websocket closed")
        self._let_go_of_home_assistant(1001, "going away")

    def _stream_failed(self) -> None:
        """The tunnel refused what we sent (or the stream is gone): end both sides."""
        if self.done:
            return
        self._end(101)
        self.stream.reset(ErrorCode.CANCEL, "not carried")
        self._let_go_of_home_assistant(1011, "")

    def _tunnel_close_late(self) -> None:
        """The relay did not answer our close in time."""
        self._tunnel_timer = None
        if self.done:
            return
        self._end(101)
        if self._cutting:
            self.stream.reset(ErrorCode.CANCEL, SWITCHED_OFF_TEXT)
        else:
            self.stream.release(ErrorCode.CANCEL, "websocket close timed out")
        self._let_go_of_home_assistant(1001, "going away")

    def _ha_close_late(self) -> None:
        """Home Assistant did not answer our close in time: its connection is cut."""
        self._ha_timer = None
        if self.connection is not None:
            self.connection.abort()  # -> raw_lost

    def _await_tunnel(self) -> None:
        if self._tunnel_timer is None:
            self._tunnel_timer = self._later(self._tunnel_close_late)

    def _await_home_assistant(self) -> None:
        if self._ha_timer is None and self.connection is not None:
            self._ha_timer = self._later(self._ha_close_late)

    def _later(self, call: Callable[[], None]) -> asyncio.TimerHandle:
        return self._forwarder.pool.loop.call_later(CLOSE_WAIT, call)

    def _let_go_of_home_assistant(self, code: int, reason: str) -> None:
        """The exchange is over: Home Assistant's side closes, within CLOSE_WAIT."""
        connection, ws = self.connection, self.ws
        if connection is None or connection.closed:
            return
        if ws is not None and ws.state is State.OPEN:
            ws.send_close(code, reason)
            self._flush()
        if not connection.closed:
            self._await_home_assistant()

    def _upstream_failed(self, error: BaseException | None) -> None:
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
        self._end(None)
        self.stream.reset(code, reason)

    def _drop_connection(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.abort()

    def _end(self, status: int | None) -> None:
        self.done = True
        gate = self._forwarder.gate
        if gate is not None:
            gate.closed(self, status)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("addon.websocket_closed", extra={"stream": self.stream.id, "status": status})


def valid_close_code(code: int) -> int:
    """RFC 6455 §7.4: 1005/1006/1015 must never be sent on the wire."""
    if code in (1000, 1001) or 1002 <= code <= 1003 or 1007 <= code <= 1014:
        return code
    if 3000 <= code <= 4999:
        return code
    return 1000


def _reason(reason: str) -> str:
    """At most 123 bytes of UTF-8, cut on a character boundary."""
    raw = reason.encode("utf-8")
    if len(raw) <= _MAX_REASON:
        return reason
    return raw[:_MAX_REASON].decode("utf-8", "ignore")
