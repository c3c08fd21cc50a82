"""Request and response heads: strict on both the encoding and the decoding side.

Every test runs for both header formats (protocol versions 1 and 2): a relay
serves older add-ons in version 1, so both decoders must refuse exactly the
same heads.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homeport.protocol import heads
from homeport.protocol.heads import (
    HEADERS_V1,
    HEADERS_V2,
    MAX_HEADERS,
    MAX_TARGET,
    PRIORITY_BULK,
    HeaderFormat,
    HeadError,
    RequestHead,
    ResponseHead,
    decode_request_head,
    decode_response_head,
    encode_request_head,
    encode_response_head,
    valid_field,
)

U16 = struct.Struct(">H")
BLOCK = struct.Struct(">HI")


@pytest.fixture(params=[HEADERS_V1, HEADERS_V2], ids=["v1", "v2"])
def fmt(request: pytest.FixtureRequest) -> HeaderFormat:
    return request.param  # type: ignore[no-any-return]


def raw_request(
    method: bytes = b"GET",
    target: bytes = b"/",
    headers: list[tuple[bytes, bytes]] | None = None,
    priority: int = 3,
    fmt: HeaderFormat = HEADERS_V2,
) -> bytes:
    """A request head built by hand, bypassing the encoder's checks."""
    out = bytes([priority, len(method)]) + method + U16.pack(len(target)) + target
    return out + raw_headers(headers or [], fmt)


def raw_headers(headers: list[tuple[bytes, bytes]], fmt: HeaderFormat = HEADERS_V2) -> bytes:
    if fmt.version == 2:
        names = b"\n".join(n for n, _ in headers)
        return BLOCK.pack(len(headers), len(names)) + names + b"\n".join(v for _, v in headers)
    out = U16.pack(len(headers))
    for name, value in headers:
        out += U16.pack(len(name)) + name + U16.pack(len(value)) + value
    return out


def test_request_round_trip(fmt: HeaderFormat) -> None:
    head = RequestHead(
        "POST",
        "/api/states/light.kitchen?x=1&y=%20",
        [("content-type", "application/json"), ("x-empty", ""), ("x-obs", "caf\xe9")],
        priority=0,
    )
    assert decode_request_head(encode_request_head(head, fmt), fmt) == head


def test_response_round_trip(fmt: HeaderFormat) -> None:
    head = ResponseHead(404, [("content-type", "text/plain"), ("set-cookie", "a=b; Path=/")])
    assert decode_response_head(encode_response_head(head, fmt), fmt) == head
    empty = ResponseHead(204, [])
    assert decode_response_head(encode_response_head(empty, fmt), fmt) == empty


def test_a_response_head_is_the_same_as_text_or_as_bytes(fmt: HeaderFormat) -> None:
    text = ResponseHead(200, [("content-type", "text/plain"), ("x-obs", "caf\xe9")])
    raw = ResponseHead.from_fields(200, [b"content-type", b"x-obs"], [b"text/plain", b"caf\xe9"])
    assert raw == text
    assert text.fields == raw.fields
    assert encode_response_head(raw, fmt) == encode_response_head(text, fmt)
    decoded = decode_response_head(encode_response_head(text, fmt), fmt)
    assert decoded.fields == raw.fields  # decoded as bytes; text on first use
    assert decoded.headers == text.headers
    assert ResponseHead(200, [("X-A", "1")]).fields == ([b"x-a"], [b"1"])
    with pytest.raises(HeadError):
        _ = ResponseHead(200, [("x-a", "\u20ac")]).fields  # not latin-1


def test_header_names_are_lowercased_on_decode_and_order_and_duplicates_kept(
    fmt: HeaderFormat,
) -> None:
    head = RequestHead("GET", "/", [("X-A", "1"), ("x-a", "2"), ("Accept", "*/*")])
    assert decode_request_head(encode_request_head(head, fmt), fmt).headers == [
        ("x-a", "1"),
        ("x-a", "2"),
        ("accept", "*/*"),
    ]


def test_wire_layout_of_a_request_head() -> None:
    head = RequestHead("GET", "/a", [("h", "v")], priority=7)
    assert encode_request_head(head, HEADERS_V1) == (
        b"\x07\x03GET\x00\x02/a\x00\x01\x00\x01h\x00\x01v"
    )
    head = RequestHead("GET", "/a", [("h", "v"), ("ab", "")], priority=7)
    assert encode_request_head(head, HEADERS_V2) == (
        b"\x07\x03GET\x00\x02/a\x00\x02\x00\x00\x00\x04h\nabv\n"
    )


def test_wire_layout_of_a_response_head() -> None:
    assert encode_response_head(ResponseHead(200, []), HEADERS_V1) == b"\x00\xc8\x00\x00"
    assert encode_response_head(ResponseHead(200, []), HEADERS_V2) == b"\x00\xc8" + bytes(6)


def test_the_latest_format_is_the_default() -> None:
    head = ResponseHead(200, [("a", "b")])
    assert encode_response_head(head) == encode_response_head(head, HEADERS_V2)


# ----------------------------------------------------------------- refused on encode


@pytest.mark.parametrize(
    "target",
    [
        "http://evil.example/",  # absolute-form
        "//evil.example/x",  # network-path reference: a different host for many clients
        "*",  # asterisk-form
        "evil.example:443",  # authority-form
        "",
        "/a b",
        "/a\r\nx: y",
        "/\x00",
        "/caf\xe9",  # not ASCII
        "/" + "a" * MAX_TARGET,
    ],
)
def test_encoder_refuses_targets(target: str) -> None:
    with pytest.raises(HeadError):
        encode_request_head(RequestHead("GET", target))


@pytest.mark.parametrize(
    "method", ["", "GE T", "GET\r\n", "G\x00", "(GET)", "GÉT", "A" * 33, "GET/"]
)
def test_encoder_refuses_methods(method: str) -> None:
    with pytest.raises(HeadError):
        encode_request_head(RequestHead(method, "/"))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-a", "a\r\nset-cookie: x"),
        ("x-a", "a\nb"),
        ("x-a", "a\rb"),
        ("x-a", "a\x00b"),
        ("x-a", "a\x7fb"),
        ("x-a", "a\x1bb"),
        ("x a", "v"),
        ("x:a", "v"),
        ("", "v"),
        ("x-\u0100", "v"),  # not latin-1
        ("x-a", "\u20ac"),  # not latin-1
    ],
)
def test_encoder_refuses_header_fields(fmt: HeaderFormat, name: str, value: str) -> None:
    with pytest.raises(HeadError):
        encode_request_head(RequestHead("GET", "/", [(name, value)]), fmt)
    with pytest.raises(HeadError):
        encode_response_head(ResponseHead(200, [(name, value)]), fmt)
    if name.isascii() and value.isascii():  # else the bytes are a caller's choice
        with pytest.raises(HeadError):
            fmt.encode_fields([b"x-ok", name.encode("ascii")], [b"ok", value.encode("ascii")])


def test_version_1_refuses_a_field_over_its_length_prefix() -> None:
    # Version 2 has no per-field prefix: a head of either version must fit in one
    # frame (64 KiB), which the connection checks (test_connection.py).
    with pytest.raises(HeadError):
        encode_response_head(ResponseHead(200, [("x-a", "v" * 0x10000)]), HEADERS_V1)


@pytest.mark.parametrize("priority", [-1, PRIORITY_BULK + 1, 255])
def test_encoder_refuses_priority(priority: int) -> None:
    with pytest.raises(HeadError):
        encode_request_head(RequestHead("GET", "/", priority=priority))


@pytest.mark.parametrize("status", [0, 99, 600, 65535])
def test_encoder_refuses_status(status: int) -> None:
    with pytest.raises(HeadError):
        encode_response_head(ResponseHead(status))


def test_encoder_refuses_too_many_headers() -> None:
    encode_response_head(ResponseHead(200, [("x", "y")] * MAX_HEADERS))
    with pytest.raises(HeadError):
        encode_response_head(ResponseHead(200, [("x", "y")] * (MAX_HEADERS + 1)))


# ----------------------------------------------------------------- refused on decode


def _bad_requests(fmt: HeaderFormat) -> list[bytes]:
    def req(**kwargs: Any) -> bytes:
        return raw_request(fmt=fmt, **kwargs)

    bad = [
        req(target=b"http://evil.example/"),
        req(target=b"//evil.example/"),
        req(target=b"*"),
        req(target=b"evil.example:443"),
        req(target=b""),
        req(target=b"/a b"),
        req(target=b"/a\r\nHost: x"),
        req(target=b"/\xff"),
        req(target=b"/" + b"a" * MAX_TARGET),
        req(method=b""),
        req(method=b"G T"),
        req(method=b"GET\n"),
        req(method=b"\xc3\x89"),
        req(method=b"A" * 33),
        req(priority=8),
        req(headers=[(b"x-a", b"a\r\nset-cookie: x")]),
        req(headers=[(b"x-a", b"a\nb")]),
        req(headers=[(b"x-a", b"a\x00b")]),
        req(headers=[(b"x a", b"b")]),
        req(headers=[(b"", b"b")]),
        req(headers=[(b"a", b"1"), (b"", b"b")]),
        req(headers=[(b"x\r\n", b"b")]),
        req(headers=[(b"x\n", b"b")]),
        req() + b"\x00",  # trailing bytes
        req()[:-1],  # truncated header count
        req()[:3],  # truncated method
        b"",
        b"\x03",
    ]
    prefix = req()[: -len(raw_headers([], fmt))]
    if fmt.version == 1:
        bad += [
            req(headers=[(b"x", b"y")])[:-1],  # truncated value
            prefix + U16.pack(MAX_HEADERS + 1),
        ]
    else:
        bad += [prefix + block for block in _BAD_JOINED_BLOCKS]
    return bad


#: Version 2 blocks whose framing is wrong, whatever head they end.
_BAD_JOINED_BLOCKS = [
    BLOCK.pack(MAX_HEADERS + 1, 0),
    BLOCK.pack(1, 2) + b"x",  # the names run past the end
    BLOCK.pack(2, 1) + b"xy",  # two fields, one name
    BLOCK.pack(1, 3) + b"x\nyv",  # one field, two names
    BLOCK.pack(2, 3) + b"x\nyv",  # two fields, one value
    BLOCK.pack(2, 2) + b"x\nv\nw",  # an empty name
    BLOCK.pack(0, 1) + b"x",  # no fields, a name
    BLOCK.pack(0, 0) + b"v",  # no fields, a value
]


@pytest.mark.parametrize(
    ("fmt", "payload"),
    [(f, p) for f in (HEADERS_V1, HEADERS_V2) for p in _bad_requests(f)],
)
def test_decoder_refuses_request_heads(fmt: HeaderFormat, payload: bytes) -> None:
    with pytest.raises(HeadError):
        decode_request_head(payload, fmt)


def _bad_responses(fmt: HeaderFormat) -> list[bytes]:
    bad = [
        U16.pack(99) + raw_headers([], fmt),
        U16.pack(600) + raw_headers([], fmt),
        U16.pack(200) + raw_headers([(b"x", b"a\r\nb")], fmt),
        U16.pack(200) + raw_headers([(b"x", b"\x00")], fmt),
        U16.pack(200) + raw_headers([], fmt) + b"junk",
        U16.pack(200),
        b"\x00",
        b"",
    ]
    if fmt.version == 1:
        bad.append(U16.pack(200) + raw_headers([(b"x", b"y")], fmt)[:-1])
    else:
        bad += [U16.pack(200) + block for block in _BAD_JOINED_BLOCKS]
    return bad


@pytest.mark.parametrize(
    ("fmt", "payload"),
    [(f, p) for f in (HEADERS_V1, HEADERS_V2) for p in _bad_responses(f)],
)
def test_decoder_refuses_response_heads(fmt: HeaderFormat, payload: bytes) -> None:
    with pytest.raises(HeadError):
        decode_response_head(payload, fmt)


def test_valid_field() -> None:
    assert valid_field(b"x-ok", b"a b\tc \xe9")
    assert not valid_field(b"x-ok", b"a\rb")
    assert not valid_field(b"x ok", b"a")


# The whole-head check (bytes.translate over all names and all values) must agree
# with the per-field rule, field by field: a value byte or an empty name that one
# accepts and the other refuses would be a hole in the response-splitting defence.
_FIELD_BYTES = st.binary(max_size=12) | st.sampled_from(
    [b"x-ok", b"a b\tc \xe9", b"a\rb", b"a\nb", b"\x00", b"", b"x y", b"x:y", b"\x7f"]
)


@pytest.mark.parametrize("fmt", [HEADERS_V1, HEADERS_V2], ids=["v1", "v2"])
@settings(max_examples=400, deadline=None)
@given(fields=st.lists(st.tuples(_FIELD_BYTES, _FIELD_BYTES), max_size=6))
def test_whole_head_check_agrees_with_valid_field(
    fmt: HeaderFormat, fields: list[tuple[bytes, bytes]]
) -> None:
    names = [n for n, _ in fields]
    values = [v for _, v in fields]
    expected = all(valid_field(n, v) for n, v in fields)
    assert heads._all_valid(names, values) is expected
    raw = raw_request(headers=fields, fmt=fmt)
    block = raw_headers(fields, fmt)
    if expected:
        decoded = decode_request_head(raw, fmt).headers
        assert decoded == [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in fields]
        # The bytes form (response heads) decodes to exactly the same fields.
        assert fmt.decode_fields(block, 0) == ([n.lower() for n in names], values)
        assert fmt.encode_fields(names, values) == block
    else:
        with pytest.raises(HeadError):
            decode_request_head(raw, fmt)
        with pytest.raises(HeadError):
            fmt.decode_fields(block, 0)
        with pytest.raises(HeadError):
            fmt.encode_fields(names, values)
        with pytest.raises(HeadError):
            encode_response_head(ResponseHead.from_fields(200, names, values), fmt)


# The encoder checks a whole block at once too, with the fields joined by LF (valid
# in neither a name nor a value): a field holding an LF, or an empty one, next to
# valid ones must still be refused, and everything valid must round-trip.
_FIELD_TEXT = st.text(alphabet="aZ-\n\r \t\xe9:\x00", max_size=5) | st.sampled_from(
    ["x-ok", "", "\n", "a\n", "\nb", "v" * 5000]
)


@pytest.mark.parametrize("fmt", [HEADERS_V1, HEADERS_V2], ids=["v1", "v2"])
@settings(max_examples=400, deadline=None)
@given(fields=st.lists(st.tuples(_FIELD_TEXT, _FIELD_TEXT), max_size=6))
def test_block_encoder_agrees_with_valid_field(
    fmt: HeaderFormat, fields: list[tuple[str, str]]
) -> None:
    expected = all(valid_field(n.encode("latin-1"), v.encode("latin-1")) for n, v in fields)
    if not expected:
        with pytest.raises(HeadError):
            encode_response_head(ResponseHead(200, fields), fmt)
        return
    payload = encode_response_head(ResponseHead(200, fields), fmt)
    assert payload == U16.pack(200) + raw_headers(
        [(n.encode("latin-1"), v.encode("latin-1")) for n, v in fields], fmt
    )
    assert decode_response_head(payload, fmt).headers == [(n.lower(), v) for n, v in fields]
