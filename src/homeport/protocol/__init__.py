"""The tunnel protocol, sans I/O: frames, streams, flow control and the handshake.

Bytes in, events out; actions in, bytes out.  Nothing here touches a socket
or an event loop, so every rule is testable and fuzzable on its own.  The
names below are the package's public API; the I/O layer (``homeport.tunnel``)
and the relay and add-on use only these.
"""

from homeport.protocol.connection import (
    MAX_FRAME_SIZE,
    MAX_PENDING_CONTROL,
    Role,
    Settings,
    TunnelConnection,
)
from homeport.protocol.errors import ErrorCode, ProtocolViolation, StreamViolation
from homeport.protocol.events import (
    ConnectionTerminated,
    ControlAnswered,
    ControlRequested,
    DataReceived,
    Event,
    GoAwayReceived,
    PongReceived,
    ResponseReceived,
    StreamOpened,
    StreamReset,
    WebSocketClosed,
    WebSocketMessageReceived,
)
from homeport.protocol.heads import (
    PRIORITY_BULK,
    PRIORITY_DEFAULT,
    PRIORITY_INTERACTIVE,
    HeadError,
    Headers,
    RequestHead,
    ResponseHead,
)

__all__ = [
    "MAX_FRAME_SIZE",
    "MAX_PENDING_CONTROL",
    "PRIORITY_BULK",
    "PRIORITY_DEFAULT",
    "PRIORITY_INTERACTIVE",
    "ConnectionTerminated",
    "ControlAnswered",
    "ControlRequested",
    "DataReceived",
    "ErrorCode",
    "Event",
    "GoAwayReceived",
    "HeadError",
    "Headers",
    "PongReceived",
    "ProtocolViolation",
    "RequestHead",
    "ResponseHead",
    "ResponseReceived",
    "Role",
    "Settings",
    "StreamOpened",
    "StreamReset",
    "StreamViolation",
    "TunnelConnection",
    "WebSocketClosed",
    "WebSocketMessageReceived",
]
