"""Events produced by :class:`homeport.protocol.connection.TunnelConnection`.

Plain slotted classes, not frozen: a frozen dataclass sets each field through
``object.__setattr__``, which costs more than the rest of making a small
event, and one is made per frame.  Nothing holds on to an event or changes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeport.protocol.errors import ErrorCode
from homeport.protocol.heads import RequestHead, ResponseHead


@dataclass(slots=True)
class Event:
    """Base class of everything :meth:`TunnelConnection.receive_data` returns."""


@dataclass(slots=True)
class StreamOpened(Event):
    """A new request (add-on side). ``websocket`` asks for an upgrade."""

    stream_id: int
    head: RequestHead
    websocket: bool
    end_stream: bool


@dataclass(slots=True)
class ResponseReceived(Event):
    """The response head for a stream (relay side)."""

    stream_id: int
    head: ResponseHead
    end_stream: bool


@dataclass(slots=True)
class DataReceived(Event):
    """Body bytes. Call :meth:`TunnelConnection.acknowledge` once they are consumed."""

    stream_id: int
    data: bytes
    end_stream: bool


@dataclass(slots=True)
class WebSocketMessageReceived(Event):
    """A whole WebSocket message; acknowledge ``len(data)`` once it is delivered."""

    stream_id: int
    data: bytes
    text: bool


@dataclass(slots=True)
class WebSocketClosed(Event):
    stream_id: int
    code: int
    reason: str


@dataclass(slots=True)
class StreamReset(Event):
    """The stream ended abnormally (by the peer, or by us after bad input)."""

    stream_id: int
    code: ErrorCode
    reason: str
    remote: bool


@dataclass(slots=True)
class PongReceived(Event):
    payload: bytes


@dataclass(slots=True)
class GoAwayReceived(Event):
    """The peer will accept no stream above ``last_stream_id``; reconnect soon."""

    last_stream_id: int
    code: ErrorCode
    reason: str


@dataclass(slots=True)
class ConnectionTerminated(Event):
    """The tunnel is unusable: close the transport after flushing ``data_to_send``."""

    code: ErrorCode
    reason: str
    remote: bool


@dataclass(slots=True)
class ControlRequested(Event):
    """The add-on asks for an owner action (relay side); answer with ``send_control_reply``."""

    request_id: int
    body: dict[str, Any]


@dataclass(slots=True)
class ControlAnswered(Event):
    """The relay's reply to one of our control requests (add-on side)."""

    request_id: int
    body: dict[str, Any]
