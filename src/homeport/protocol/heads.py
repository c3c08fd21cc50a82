"""Request and response heads: parsed, validated, length-framed.

The tunnel never carries raw HTTP bytes.  The relay parses the browser's
request with a strict parser, and sends only this structured head; the add-on
re-serialises it with its own HTTP client.  Both encoding and decoding check
every field, so neither side can be made to emit a header with CR, LF or NUL
in it (response splitting, request smuggling) whatever the other side sends.

Wire form (big-endian)::

    OPEN:     priority:u8 | method_len:u8 | method | target_len:u16 | target | headers
    RESPONSE: status:u16 | headers
    headers:  count:u16 | (name_len:u16 | name | value_len:u16 | value) * count
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

Headers = list[tuple[str, str]]

MAX_HEADERS = 256
MAX_TARGET = 16 * 1024
MAX_METHOD = 32
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Field values: visible ASCII, space, tab and obs-text; never CR, LF, NUL or other controls.
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
# origin-form only: absolute-form, authority-form and asterisk-form are refused.
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_U16 = struct.Struct(">H")

PRIORITY_INTERACTIVE = 0
PRIORITY_DEFAULT = 3
PRIORITY_BULK = 7


#: Connection-level fields (RFC 9110 §7.6.1): they describe one hop, so neither the
#: relay nor the add-on ever passes them on.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def connection_tokens(values: Iterable[str]) -> frozenset[str]:
    """Field names listed in ``Connection`` headers: hop-by-hop for this message too."""
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())


class HeadError(ValueError):
    """A head that must not be sent or accepted."""


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    headers: Headers = field(default_factory=list)
    priority: int = PRIORITY_DEFAULT


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    headers: Headers = field(default_factory=list)


def encode_request_head(head: RequestHead) -> bytes:
    try:
        method = head.method.encode("ascii")
        target = head.target.encode("ascii")
    except UnicodeEncodeError:
        raise HeadError("method and target must be ASCII") from None
    if not _TOKEN.fullmatch(method) or len(method) > MAX_METHOD:
        raise HeadError(f"invalid method {head.method!r}")
    if not _TARGET.fullmatch(target) or len(target) > MAX_TARGET or target.startswith(b"//"):
        raise HeadError("request target must be origin-form")
    if not 0 <= head.priority <= PRIORITY_BULK:
        raise HeadError("priority out of range")
    return (
        bytes([head.priority, len(method)])
        + method
        + _U16.pack(len(target))
        + target
        + _encode_headers(head.headers)
    )


def decode_request_head(payload: bytes) -> RequestHead:
    reader = _Reader(payload)
    priority = reader.u8()
    if priority > PRIORITY_BULK:
        raise HeadError("priority out of range")
    method = reader.take(reader.u8())
    target = reader.take(reader.u16())
    if not _TOKEN.fullmatch(method) or len(method) > MAX_METHOD:
        raise HeadError("invalid method")
    if len(target) > MAX_TARGET:
        raise HeadError("request target too long")
    if not _TARGET.fullmatch(target) or target.startswith(b"//"):
        raise HeadError("request target must be origin-form")
    headers = _decode_headers(reader)
    reader.done()
    return RequestHead(method.decode("ascii"), target.decode("ascii"), headers, priority)


def encode_response_head(head: ResponseHead) -> bytes:
    if not 100 <= head.status <= 599:
        raise HeadError(f"invalid status {head.status}")
    return _U16.pack(head.status) + _encode_headers(head.headers)


def decode_response_head(payload: bytes) -> ResponseHead:
    reader = _Reader(payload)
    status = reader.u16()
    if not 100 <= status <= 599:
        raise HeadError(f"invalid status {status}")
    headers = _decode_headers(reader)
    reader.done()
    return ResponseHead(status, headers)


def valid_field(name: bytes, value: bytes) -> bool:
    """True if ``name: value`` is safe to put on the wire (RFC 9110 §5.1, §5.5)."""
    return bool(_TOKEN.fullmatch(name)) and bool(_FIELD_VALUE.fullmatch(value))


def _encode_headers(headers: Headers) -> bytes:
    if len(headers) > MAX_HEADERS:
        raise HeadError(f"more than {MAX_HEADERS} headers")
    parts = [_U16.pack(len(headers))]
    for name, value in headers:
        try:
            raw_name = name.encode("latin-1")
            raw_value = value.encode("latin-1")
        except UnicodeEncodeError:
            raise HeadError(f"header field {name!r} is not latin-1") from None
        if not valid_field(raw_name, raw_value):
            raise HeadError(f"invalid header field {name!r}")
        if len(raw_name) > 0xFFFF or len(raw_value) > 0xFFFF:
            raise HeadError("header field too long")
        parts += (_U16.pack(len(raw_name)), raw_name, _U16.pack(len(raw_value)), raw_value)
    return b"".join(parts)


def _decode_headers(reader: _Reader) -> Headers:
    count = reader.u16()
    if count > MAX_HEADERS:
        raise HeadError(f"more than {MAX_HEADERS} headers")
    headers: Headers = []
    for _ in range(count):
        name = reader.take(reader.u16())
        value = reader.take(reader.u16())
        if not valid_field(name, value):
            raise HeadError("invalid header field")
        headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))
    return headers


class _Reader:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise HeadError("truncated head")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = _U16.unpack(self.take(2))[0]
        return value

    def done(self) -> None:
        if self._pos != len(self._data):
            raise HeadError("trailing bytes after head")
