"""Serve tunnel streams from Home Assistant: the add-on's side of the data path.

:class:`HomeAssistantForwarder` is the tunnel session's ``on_open``: it takes
each new stream at once, without a task, checks it, and hands it to one
callback-driven exchange (``exchange.py`` for HTTP, ``websocket.py`` for a
WebSocket) on raw keep-alive connections to Home Assistant
(``upstream.py``).

Threats this stops:

* SSRF / open proxy: the relay only ever names a path.  Every request goes to
  the configured Home Assistant base URL; absolute-form, authority-form and
  ``//host`` targets are refused by the head decoder and again here
  (``messages.check_target``), and ``CONNECT`` is refused outright: the
  stream is reset with ``BAD_REQUEST`` and Home Assistant never sees it.
* Request smuggling: we never forward raw bytes.  The head arrives parsed and
  length-framed, and ``messages.request_head`` writes a fresh request from it
  with the add-on's own body framing.
* Header spoofing: hop-by-hop headers are dropped in both directions and the
  ``X-Forwarded-*`` headers Home Assistant sees are the relay's, never the
  browser's (the relay strips the browser's own), and only while Home
  Assistant trusts the add-on (``send_forwarded``).
* The remote-access switch (``gate.py``): while it is off, no stream reaches
  Home Assistant; every exchange registers so that switching off cuts it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from homeport.addon.exchange import HttpExchange
from homeport.addon.gate import RemoteAccessGate
from homeport.addon.messages import RequestRefused, request_head
from homeport.addon.upstream import Origin, UpstreamPool
from homeport.addon.websocket import WebSocketExchange, websocket_exchange
from homeport.protocol import ErrorCode
from homeport.tunnel.stream import Stream

log = logging.getLogger(__name__)


class HomeAssistantForwarder:
    """Turns each stream into one request (or WebSocket) to Home Assistant."""

    def __init__(
        self,
        pool: UpstreamPool,
        *,
        send_forwarded: Callable[[], bool] | None = None,
        gate: RemoteAccessGate | None = None,
    ) -> None:
        self.pool = pool
        self.origin: Origin = pool.origin
        self.gate = gate
        # False while Home Assistant does not trust us as a proxy: it would answer
        # 400 to every request carrying X-Forwarded-For (see addon.ha_trust).
        self._send_forwarded = send_forwarded or _always

    def open(self, stream: Stream) -> None:
        """Take a new stream now (``TunnelSession(on_open=...)``); serve it by callbacks."""
        gate = self.gate
        if gate is not None and not gate.admit(stream):
            return
        request = stream.request
        assert request is not None
        exchange: HttpExchange | WebSocketExchange
        try:
            if stream.websocket:
                exchange = websocket_exchange(self, stream, send_forwarded=self._send_forwarded())
            else:
                head, length = request_head(
                    request.method,
                    request.target,
                    request.headers,
                    self.origin,
                    send_forwarded=self._send_forwarded(),
                    has_body=stream.request_has_body,
                )
                exchange = HttpExchange(self, stream, head, length)
        except RequestRefused as refused:
            log.info("addon.request_refused", extra={"stream": stream.id})
            stream.reset(ErrorCode.BAD_REQUEST, str(refused))
            if gate is not None:
                gate.record(stream, None)
            return
        stream.consumer = exchange
        if gate is not None:
            gate.opened(exchange)
        exchange.start()


def _always() -> bool:
    return True
