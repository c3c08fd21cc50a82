"""Error codes carried in RESET and GOAWAY frames, and the exceptions behind them."""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    NO_ERROR = 0  # graceful: GOAWAY for a restart, RESET after a finished exchange
    PROTOCOL = 1  # the peer broke the protocol
    INTERNAL = 2  # a bug or an unexpected failure on the sender's side
    FLOW_CONTROL = 3  # more data than the window allowed
    FRAME_SIZE = 4  # a frame larger than the negotiated maximum
    REFUSED = 5  # not processed at all; safe to retry (GOAWAY, stream limit)
    CANCEL = 6  # the stream is no longer wanted (browser went away)
    HEAD_TOO_LARGE = 7  # request or response head over the limit
    MESSAGE_TOO_LARGE = 8  # WebSocket message over the limit
    BAD_REQUEST = 9  # the request head is not acceptable (bad target, bad header)
    UPSTREAM_UNAVAILABLE = 10  # Home Assistant could not be reached
    UPSTREAM_TIMEOUT = 11  # Home Assistant did not answer in time
    SESSION_REVOKED = 12  # the person's access ended while the stream was open
    TOO_MANY_STREAMS = 13  # concurrent-stream limit reached
    FLOOD = 14  # more control frames, or more held bytes, than the budget allows


class ProtocolViolation(Exception):
    """A connection-level error: the tunnel cannot safely continue."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class StreamViolation(Exception):
    """A stream-level error: only this stream is reset; the tunnel carries on."""

    def __init__(self, stream_id: int, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.stream_id = stream_id
        self.code = code
        self.reason = reason
