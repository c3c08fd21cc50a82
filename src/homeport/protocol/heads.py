"""Request and response heads: parsed, validated, length-framed.

The tunnel never carries raw HTTP bytes.  The relay parses the browser's
request with a strict parser, and sends only this structured head; the add-on
re-serialises it with its own HTTP client.  Both encoding and decoding check
every field, so neither side can be made to emit a header with CR, LF or NUL
in it (response splitting, request smuggling) whatever the other side sends.

Wire form (big-endian)::

    OPEN:     priority:u8 | method_len:u8 | method | target_len:u16 | target | headers
    RESPONSE: status:u16 | headers

The header block depends on the protocol version the handshake agreed
(:class:`HeaderFormat`, one per tunnel)::

    version 2: count:u16 | names_len:u32 | names | values
               names: the count names joined by LF; values: the values joined
               by LF, running to the end of the head
    version 1: count:u16 | (name_len:u16 | name | value_len:u16 | value) * count

LF is valid in neither a name nor a value, so it cannot be mistaken for a
field's own byte: a block is valid exactly when deleting the allowed bytes
from its names (and from its values) leaves ``count - 1`` LFs.  Version 2
is checked, split and joined in a few C calls per head, where version 1
needs a loop over the fields on both sides (docs/protocol.md §3).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable
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
#: Version 2's block header: the field count and the length of the joined names.
_BLOCK = struct.Struct(">HI")
# The same two alphabets for ``bytes.translate``: deleting the allowed bytes from a
# whole head's names (or values) at once leaves nothing exactly when every field is
# valid, one C call per head instead of two regex matches per field.
_TOKEN_BYTES = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VALUE_BYTES = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))

#: Lengths below 4 KiB as their two big-endian bytes, and the LF separators
#: between ``n`` fields joined with LF: lookups, not calls, per field.
_LENGTHS = [_U16.pack(n) for n in range(4096)]
_SEPARATORS = [b"\n" * max(n - 1, 0) for n in range(MAX_HEADERS + 1)]
_NO_HEADERS = _U16.pack(0)
_NO_JOINED_HEADERS = _BLOCK.pack(0, 0)

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


# Not frozen: one of each is made per request on both sides, and a frozen
# dataclass's __init__ costs four times a plain one's.  Never changed once made.
@dataclass(slots=True)
class RequestHead:
    method: str
    target: str
    headers: Headers = field(default_factory=list)
    priority: int = PRIORITY_DEFAULT


class ResponseHead:
    """A response's status and its fields, as text or as bytes.

    A head holds its fields in the form it was made from: text ``headers``
    (``ResponseHead(status, headers)``), or bytes (:meth:`from_fields`:
    lower-case ``names`` and their ``values``), and makes the other on first
    use.  The data plane keeps them as bytes end to end: the add-on from
    Home Assistant's parsed bytes into the tunnel, the relay from the tunnel's
    block into the browser's head, with no decode and encode per field.  A
    head is never changed once made.
    """

    __slots__ = ("_fields", "_headers", "status")

    def __init__(self, status: int, headers: Headers | None = None) -> None:
        self.status = status
        self._headers: Headers | None = [] if headers is None else headers
        self._fields: tuple[list[bytes], list[bytes]] | None = None

    @classmethod
    def from_fields(cls, status: int, names: list[bytes], values: list[bytes]) -> ResponseHead:
        """A head from its fields as bytes (names lower-case, as many values as names)."""
        head = cls.__new__(cls)
        head.status = status
        head._headers = None
        head._fields = (names, values)
        return head

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            names, values = self._fields or ([], [])
            self._headers = [
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in zip(names, values, strict=True)
            ]
        return self._headers

    @property
    def fields(self) -> tuple[list[bytes], list[bytes]]:
        """Names (lower-case) and values as bytes; :class:`HeadError` if not latin-1."""
        if self._fields is None:
            headers = self._headers or []
            try:
                self._fields = (
                    [name.lower().encode("latin-1") for name, _ in headers],
                    [value.encode("latin-1") for _, value in headers],
                )
            except UnicodeEncodeError:
                raise HeadError("header field is not latin-1") from None
        return self._fields

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ResponseHead):
            return NotImplemented
        return self.status == other.status and self.headers == other.headers

    __hash__ = None  # type: ignore[assignment]  # as for a dataclass with eq: not a key

    def __repr__(self) -> str:
        return f"ResponseHead(status={self.status!r}, headers={self.headers!r})"


@dataclass(frozen=True, slots=True)
class HeaderFormat:
    """How one tunnel writes header blocks: chosen by the protocol version the
    handshake agreed (:data:`HEADER_FORMATS`), the same for every head on it."""

    version: int
    #: A block from names (lower-cased by the caller) and values as bytes.
    encode_fields: Callable[[list[bytes], list[bytes]], bytes]
    #: A block from text fields.
    encode_headers: Callable[[Headers], bytes]
    #: The block at ``pos``, which must run to the end of the data; names lower-cased.
    decode_headers: Callable[[bytes, int], Headers]
    #: The same as names and values in bytes, with the same checks.
    decode_fields: Callable[[bytes, int], tuple[list[bytes], list[bytes]]]


def encode_request_head(head: RequestHead, fmt: HeaderFormat | None = None) -> bytes:
    try:
        method = head.method.encode("ascii")
        target = head.target.encode("ascii")
    except UnicodeEncodeError:
        raise HeadError("method and target must be ASCII") from None
    fields = (fmt or LATEST).encode_headers(head.headers)
    return encode_request_fields(head.priority, method, target, fields)


def encode_request_fields(priority: int, method: bytes, target: bytes, fields: bytes) -> bytes:
    """A request head from its parts as bytes; ``fields`` from ``HeaderFormat.encode_fields``.

    The relay's data plane builds heads this way straight from the bytes it
    parsed, with exactly the checks :func:`encode_request_head` makes.
    """
    if not _TOKEN.fullmatch(method) or len(method) > MAX_METHOD:
        raise HeadError(f"invalid method {method!r}")
    if not _TARGET.fullmatch(target) or len(target) > MAX_TARGET or target.startswith(b"//"):
        raise HeadError("request target must be origin-form")
    if not 0 <= priority <= PRIORITY_BULK:
        raise HeadError("priority out of range")
    return bytes([priority, len(method)]) + method + _U16.pack(len(target)) + target + fields


def decode_request_head(payload: bytes, fmt: HeaderFormat | None = None) -> RequestHead:
    size = len(payload)
    if size < 2:
        raise HeadError("truncated head")
    priority, method_len = payload[0], payload[1]
    if priority > PRIORITY_BULK:
        raise HeadError("priority out of range")
    pos = 2 + method_len
    if pos + 2 > size:  # the method, then the target's length
        raise HeadError("truncated head")
    method = payload[2:pos]
    end = pos + 2 + (payload[pos] << 8 | payload[pos + 1])
    if end > size:
        raise HeadError("truncated head")
    target = payload[pos + 2 : end]
    if not _TOKEN.fullmatch(method) or len(method) > MAX_METHOD:
        raise HeadError("invalid method")
    if len(target) > MAX_TARGET:
        raise HeadError("request target too long")
    if not _TARGET.fullmatch(target) or target.startswith(b"//"):
        raise HeadError("request target must be origin-form")
    headers = (fmt or LATEST).decode_headers(payload, end)
    return RequestHead(method.decode("ascii"), target.decode("ascii"), headers, priority)


def encode_response_head(head: ResponseHead, fmt: HeaderFormat | None = None) -> bytes:
    if not 100 <= head.status <= 599:
        raise HeadError(f"invalid status {head.status}")
    fmt = fmt or LATEST
    fields = head._fields  # bytes when the head was made from bytes: encoded as they are
    block = fmt.encode_fields(*fields) if fields is not None else fmt.encode_headers(head.headers)
    return _U16.pack(head.status) + block


def decode_response_head(payload: bytes, fmt: HeaderFormat | None = None) -> ResponseHead:
    """The head with its fields as bytes (see :class:`ResponseHead`), every one checked."""
    if len(payload) < 2:
        raise HeadError("truncated head")
    status = payload[0] << 8 | payload[1]
    if not 100 <= status <= 599:
        raise HeadError(f"invalid status {status}")
    names, values = (fmt or LATEST).decode_fields(payload, 2)
    return ResponseHead.from_fields(status, names, values)


def valid_field(name: bytes, value: bytes) -> bool:
    """True if ``name: value`` is safe to put on the wire (RFC 9110 §5.1, §5.5)."""
    return bool(_TOKEN.fullmatch(name)) and bool(_FIELD_VALUE.fullmatch(value))


# ------------------------------------------------------------- version 2


def _encode_joined_fields(names: list[bytes], values: list[bytes]) -> bytes:
    """Version 2's block from names and values as bytes: joined, checked as a whole."""
    count = len(names)
    if count > MAX_HEADERS:
        raise HeadError(f"more than {MAX_HEADERS} headers")
    if count != len(values):
        raise ValueError("as many values as names")
    if not count:
        return _NO_JOINED_HEADERS
    raw_names = b"\n".join(names)
    raw_values = b"\n".join(values)
    separators = _SEPARATORS[count]
    if (
        raw_names.translate(None, _TOKEN_BYTES) != separators
        or raw_values.translate(None, _VALUE_BYTES) != separators
        or not all(names)
    ):
        bad = next(n for n, v in zip(names, values, strict=True) if not valid_field(n, v))
        raise HeadError(f"invalid header field {bad!r}")
    return b"".join((_BLOCK.pack(count, len(raw_names)), raw_names, raw_values))


def _encode_joined_headers(headers: Headers) -> bytes:
    """Version 2's block from text fields."""
    count = len(headers)
    if count > MAX_HEADERS:
        raise HeadError(f"more than {MAX_HEADERS} headers")
    if not count:
        return _NO_JOINED_HEADERS
    raw_names, raw_values = _joined(headers)
    return b"".join((_BLOCK.pack(count, len(raw_names)), raw_names, raw_values))


def _decode_joined_headers(data: bytes, pos: int) -> Headers:
    """Version 2's block at ``pos``, which must run to the end of ``data``."""
    raw_names, raw_values, count = _joined_block(data, pos)
    return _split(raw_names, raw_values, count) if count else []


def _decode_joined_fields(data: bytes, pos: int) -> tuple[list[bytes], list[bytes]]:
    raw_names, raw_values, count = _joined_block(data, pos)
    return _split_fields(raw_names, raw_values, count) if count else ([], [])


def _joined_block(data: bytes, pos: int) -> tuple[bytes, bytes, int]:
    """Version 2's joined names and values at ``pos``, and their count (not yet checked)."""
    size = len(data)
    start = pos + _BLOCK.size
    if start > size:
        raise HeadError("truncated head")
    count, names_size = _BLOCK.unpack_from(data, pos)
    if count > MAX_HEADERS:
        raise HeadError(f"more than {MAX_HEADERS} headers")
    end = start + names_size
    if end > size:
        raise HeadError("truncated head")
    if not count and (end != size or names_size):
        raise HeadError("trailing bytes after head")
    return data[start:end], data[end:], count


def _joined(headers: Headers) -> tuple[bytes, bytes]:
    """All names, and all values, each joined by LF and encoded, checked as a whole
    (LF is valid in neither: a field holding one is refused like any bad byte)."""
    names = [name for name, _ in headers]
    try:
        raw_names = "\n".join(names).encode("latin-1")
        raw_values = "\n".join([value for _, value in headers]).encode("latin-1")
    except UnicodeEncodeError:
        bad = next(n for n, v in headers if not _is_latin1(n) or not _is_latin1(v))
        raise HeadError(f"header field {bad!r} is not latin-1") from None
    separators = _SEPARATORS[len(headers)]
    if (
        raw_names.translate(None, _TOKEN_BYTES) != separators
        or raw_values.translate(None, _VALUE_BYTES) != separators
        or not all(names)
    ):
        bad = next(
            n for n, v in headers if not valid_field(n.encode("latin-1"), v.encode("latin-1"))
        )
        raise HeadError(f"invalid header field {bad!r}")
    return raw_names, raw_values


def _split(raw_names: bytes, raw_values: bytes, count: int) -> Headers:
    """``count`` fields from their names and their values each joined by LF.

    Exactly ``count - 1`` LFs left in each once the allowed bytes are gone:
    every field is clean, and the two split into exactly ``count`` names and
    values; no name may be empty.  Names are lower-cased.
    """
    separators = _SEPARATORS[count]
    if (
        raw_names.translate(None, _TOKEN_BYTES) != separators
        or raw_values.translate(None, _VALUE_BYTES) != separators
    ):
        raise HeadError("invalid header field")
    names = raw_names.decode("latin-1").lower().split("\n")
    if not all(names):
        raise HeadError("invalid header field")
    return list(zip(names, raw_values.decode("latin-1").split("\n"), strict=True))


def _split_fields(
    raw_names: bytes, raw_values: bytes, count: int
) -> tuple[list[bytes], list[bytes]]:
    """:func:`_split`'s checks, its fields left as bytes (names lower-cased)."""
    separators = _SEPARATORS[count]
    if (
        raw_names.translate(None, _TOKEN_BYTES) != separators
        or raw_values.translate(None, _VALUE_BYTES) != separators
    ):
        raise HeadError("invalid header field")
    # A valid name is ASCII, so bytes.lower() is the text's lower().
    names = raw_names.lower().split(b"\n")
    if not all(names):
        raise HeadError("invalid header field")
    return names, raw_values.split(b"\n")


# ------------------------------------------------------------- version 1


def encode_fields(names: list[bytes], values: list[bytes]) -> bytes:
    """Version 1's headers block from names and values as bytes, validated as a whole."""
    if len(names) > MAX_HEADERS:
        raise HeadError(f"more than {MAX_HEADERS} headers")
    if not _all_valid(names, values):
        bad = next(n for n, v in zip(names, values, strict=True) if not valid_field(n, v))
        raise HeadError(f"invalid header field {bad!r}")
    lengths = _LENGTHS
    parts = [lengths[len(names)]]
    try:
        for raw_name, raw_value in zip(names, values, strict=True):
            parts += (lengths[len(raw_name)], raw_name, lengths[len(raw_value)], raw_value)
    except IndexError:  # a field longer than the table: rare, packed one by one
        return _pack_fields(names, values)
    return b"".join(parts)


def _encode_headers(headers: Headers) -> bytes:
    count = len(headers)
    if count > MAX_HEADERS:
        raise HeadError(f"more than {MAX_HEADERS} headers")
    if not count:
        return _NO_HEADERS
    # The whole block at once: one encode and one validity check for all names,
    # and the same for all values, instead of a few calls per field.
    raw_names, raw_values = _joined(headers)
    fields = zip(raw_names.split(b"\n"), raw_values.split(b"\n"), strict=True)
    lengths = _LENGTHS
    parts = [lengths[count]]
    try:
        for raw_name, raw_value in fields:
            parts += (lengths[len(raw_name)], raw_name, lengths[len(raw_value)], raw_value)
    except IndexError:  # a field longer than the table: rare, packed one by one
        return _pack_fields(raw_names.split(b"\n"), raw_values.split(b"\n"))
    return b"".join(parts)


def _pack_fields(names: list[bytes], values: list[bytes]) -> bytes:
    pack = _U16.pack
    parts = [pack(len(names))]
    for raw_name, raw_value in zip(names, values, strict=True):
        if len(raw_name) > 0xFFFF or len(raw_value) > 0xFFFF:
            raise HeadError("header field too long")
        parts += (pack(len(raw_name)), raw_name, pack(len(raw_value)), raw_value)
    return b"".join(parts)


def _decode_headers(data: bytes, pos: int) -> Headers:
    """The headers block at ``pos``, which must run to the end of ``data``."""
    raw_names, raw_values, count = _length_prefixed_block(data, pos)
    return _split(raw_names, raw_values, count) if count else []


def _decode_fields(data: bytes, pos: int) -> tuple[list[bytes], list[bytes]]:
    raw_names, raw_values, count = _length_prefixed_block(data, pos)
    return _split_fields(raw_names, raw_values, count) if count else ([], [])


def _length_prefixed_block(data: bytes, pos: int) -> tuple[bytes, bytes, int]:
    """Version 1's names and values at ``pos`` joined by LF, as version 2 carries
    them, and their count: validated and split the same way (not yet checked)."""
    size = len(data)
    if pos + 2 > size:
        raise HeadError("truncated head")
    count = data[pos] << 8 | data[pos + 1]
    if count > MAX_HEADERS:
        raise HeadError(f"more than {MAX_HEADERS} headers")
    pos += 2
    names: list[bytes] = []
    values: list[bytes] = []
    for _ in range(count):
        if pos + 2 > size:
            raise HeadError("truncated head")
        end = pos + 2 + (data[pos] << 8 | data[pos + 1])
        if end + 2 > size:
            raise HeadError("truncated head")
        names.append(data[pos + 2 : end])
        pos = end + 2 + (data[end] << 8 | data[end + 1])
        if pos > size:
            raise HeadError("truncated head")
        values.append(data[end + 2 : pos])
    if pos != size:
        raise HeadError("trailing bytes after head")
    return b"\n".join(names), b"\n".join(values), count


def _all_valid(names: list[bytes], values: list[bytes]) -> bool:
    """Every name a non-empty token and every value clean: the same rule as
    :func:`valid_field`, checked for a whole head in three C calls."""
    return (
        all(names)
        and not b"".join(names).translate(None, _TOKEN_BYTES)
        and not b"".join(values).translate(None, _VALUE_BYTES)
    )


def _is_latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


#: Version 1: every field length-prefixed.
HEADERS_V1 = HeaderFormat(1, encode_fields, _encode_headers, _decode_headers, _decode_fields)
#: Version 2: names and values each joined by LF (see the module docstring).
HEADERS_V2 = HeaderFormat(
    2, _encode_joined_fields, _encode_joined_headers, _decode_joined_headers, _decode_joined_fields
)
#: The header block of each protocol version.
HEADER_FORMATS: dict[int, HeaderFormat] = {1: HEADERS_V1, 2: HEADERS_V2}
#: What a tunnel uses unless told otherwise: the newest.
LATEST = HEADERS_V2
