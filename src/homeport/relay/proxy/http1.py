"""HTTP/1.1 requests from browsers, sans I/O: bytes in, events out.

A strict reader in front of the tunnel (R-MT-9, request smuggling): llhttp
(through ``httptools``) refuses malformed framing (Content-Length with
Transfer-Encoding, duplicate or signed lengths, bad chunk sizes, bare LF,
obs-fold, NUL, bad versions); this module adds what llhttp leaves to the
application: one and only one Host, ``chunked`` as the only transfer coding,
no TRACE or CONNECT, and size limits on the head (a long target, one huge
header, thousands of headers).  Any of these ends the connection after one
clean error answer: nothing after a framing error can be trusted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol

import httptools

#: Limits on a request head, as aiohttp's own parser has them.
MAX_TARGET = 8190
MAX_FIELD = 8190
MAX_HEADERS = 128
MAX_HEAD = 64 * 1024


@dataclass(slots=True)
class Request:
    """One request head, as read (names as sent; the policy layer lower-cases)."""

    method: str
    target: str
    version: str
    headers: list[tuple[bytes, bytes]]
    host: str
    keep_alive: bool
    upgrade: bool
    content_length: int | None
    chunked: bool
    #: Lower-cased header names -> values, for the few the relay looks at.
    lookup: dict[bytes, bytes] = field(default_factory=dict)
    #: The target without its query (asked several times per request).
    path: str = ""

    def __post_init__(self) -> None:
        if not self.path:
            self.path = self.target.partition("?")[0]

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def header(self, name: bytes) -> str | None:
        value = self.lookup.get(name)
        return value.decode("latin-1") if value is not None else None


class RequestError(Exception):
    """The request cannot be served; answer ``status`` and close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RequestReader:
    """Feeds browser bytes to llhttp; calls the sink as requests and bodies arrive.

    ``sink`` gets ``request_started(Request)``, ``body_received(bytes)``,
    ``request_ended()`` and, after a WebSocket upgrade request has been read,
    ``upgraded(rest)`` with the bytes that followed it (the first frames).
    """

    def __init__(self, sink: RequestSink) -> None:
        self._sink = sink
        self._parser = httptools.HttpRequestParser(self)
        self._reset()

    def _reset(self) -> None:
        self._target = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []
        self._name = bytearray()
        self._size = 0
        self._in_head = True

    def close(self) -> None:
        """The connection is gone: let go of the sink and the parser.

        Both refer back to this reader, so dropping them breaks the cycles and
        the connection, its TLS state and its buffers are freed at once by
        reference counting instead of waiting for the cycle collector.
        """
        self._sink = _DETACHED
        self._parser = _CLOSED_PARSER

    def feed(self, data: bytes) -> None:
        """Raises :class:`RequestError` for anything malformed."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            self._sink.upgraded(data[offset:])
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, RequestError):
                raise exc.__context__ from None
            raise RequestError(400, "malformed request") from None

    # ------------------------------------------------------------ llhttp callbacks

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, part: bytes) -> None:
        self._target += part
        if len(self._target) > MAX_TARGET:
            raise RequestError(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # trailers: never forwarded
        self._size += len(name) + len(value) + 4
        if len(name) + len(value) > MAX_FIELD or self._size > MAX_HEAD:
            raise RequestError(431, "request header too large")
        if len(self._headers) >= MAX_HEADERS:
            raise RequestError(431, "too many request headers")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        method = parser.get_method().decode("ascii", "replace")
        if method in ("TRACE", "CONNECT"):
            # TRACE would echo cookies back; CONNECT asks for a raw tunnel.
            raise RequestError(405, "method not allowed")
        lookup: dict[bytes, bytes] = {}
        hosts = 0
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"host":
                hosts += 1
            elif lower == b"transfer-encoding" and lower in lookup:
                value = lookup[lower] + b"," + value
            lookup[lower] = value
        if hosts != 1:
            raise RequestError(400, "exactly one Host header is required")
        coding = lookup.get(b"transfer-encoding")
        chunked = False
        if coding is not None:
            codings = [c.strip().lower() for c in coding.split(b",")]
            if codings != [b"chunked"]:
                # RFC 9112 §6.1: a coding we would not undo; the backend could not know.
                raise RequestError(501, "transfer coding not supported")
            chunked = True
        raw_length = lookup.get(b"content-length")
        length = int(raw_length) if raw_length is not None else None
        version = parser.get_http_version()
        target = self._target.decode("latin-1")
        request = Request(
            method=method,
            target=target,
            path=target.partition("?")[0],
            version=version,
            headers=self._headers,
            host=lookup[b"host"].decode("latin-1"),
            keep_alive=parser.should_keep_alive(),
            upgrade=parser.should_upgrade(),
            content_length=length,
            chunked=chunked,
            lookup=lookup,
        )
        self._sink.request_started(request)

    def on_body(self, data: bytes) -> None:
        self._sink.body_received(data)

    def on_message_complete(self) -> None:
        self._sink.request_ended()


class RequestSink(Protocol):
    """What a :class:`RequestReader` tells (see there)."""

    def request_started(self, request: Request) -> None: ...
    def body_received(self, data: bytes) -> None: ...
    def request_ended(self) -> None: ...
    def upgraded(self, rest: bytes) -> None: ...


class _Detached:
    """The sink of a closed reader: hears nothing (its parser is gone too)."""

    def request_started(self, request: Request) -> None:
        pass

    def body_received(self, data: bytes) -> None:
        pass

    def request_ended(self) -> None:
        pass

    def upgraded(self, rest: bytes) -> None:
        pass


_DETACHED = _Detached()
#: A closed reader's parser: one that refers to no reader, shared by all of them.
_CLOSED_PARSER = httptools.HttpRequestParser(_DETACHED)


_REASONS = {
    101: "Switching Protocols",
    200: "OK",
    204: "No Content",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    421: "Misdirected Request",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def reason(status: int) -> str:
    """The reason phrase for a status line."""
    known = _REASONS.get(status)
    if known is not None:
        return known
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def bodiless(method: str, status: int) -> bool:
    """RFC 9112 §6.3: responses that never have a body."""
    return method == "HEAD" or status < 200 or status in (204, 304)
