"""Request and response heads: strict on both the encoding and the decoding side."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homeport.protocol import heads
from homeport.protocol.heads import (
    MAX_HEADERS,
    MAX_TARGET,
    PRIORITY_BULK,
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


def raw_request(
    method: bytes = b"GET",
    target: bytes = b"/",
    headers: list[tuple[bytes, bytes]] | None = None,
    priority: int = 3,
) -> bytes:
    """A request head built by hand, bypassing the encoder's checks."""
    out = bytes([priority, len(method)]) + method + U16.pack(len(target)) + target
    return out + raw_headers(headers or [])


def raw_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    out = U16.pack(len(headers))
    for name, value in headers:
        out += U16.pack(len(name)) + name + U16.pack(len(value)) + value
    return out


def test_request_round_trip() -> None:
    head = RequestHead(
        "POST",
        "/api/states/light.kitchen?x=1&y=%20",
        [("content-type", "application/json"), ("x-empty", ""), ("x-obs", "caf\xe9")],
        priority=0,
    )
    assert decode_request_head(encode_request_head(head)) == head


def test_response_round_trip() -> None:
    head = ResponseHead(404, [("content-type", "text/plain"), ("set-cookie", "a=b; Path=/")])
    assert decode_response_head(encode_response_head(head)) == head


def test_header_names_are_lowercased_on_decode_and_order_and_duplicates_kept() -> None:
    head = RequestHead("GET", "/", [("X-A", "1"), ("x-a", "2"), ("Accept", "*/*")])
    assert decode_request_head(encode_request_head(head)).headers == [
        ("x-a", "1"),
        ("x-a", "2"),
        ("accept", "*/*"),
    ]


def test_wire_layout_of_a_request_head() -> None:
    head = RequestHead("GET", "/a", [("h", "v")], priority=7)
    assert encode_request_head(head) == b"\x07\x03GET\x00\x02/a\x00\x01\x00\x01h\x00\x01v"


def test_wire_layout_of_a_response_head() -> None:
    assert encode_response_head(ResponseHead(200, [])) == b"\x00\xc8\x00\x00"


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
        ("x-a", "v" * 0x10000),
    ],
)
def test_encoder_refuses_header_fields(name: str, value: str) -> None:
    with pytest.raises(HeadError):
        encode_request_head(RequestHead("GET", "/", [(name, value)]))
    with pytest.raises(HeadError):
        encode_response_head(ResponseHead(200, [(name, value)]))


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


@pytest.mark.parametrize(
    "payload",
    [
        raw_request(target=b"http://evil.example/"),
        raw_request(target=b"//evil.example/"),
        raw_request(target=b"*"),
        raw_request(target=b"evil.example:443"),
        raw_request(target=b""),
        raw_request(target=b"/a b"),
        raw_request(target=b"/a\r\nHost: x"),
        raw_request(target=b"/\xff"),
        raw_request(target=b"/" + b"a" * MAX_TARGET),
        raw_request(method=b""),
        raw_request(method=b"G T"),
        raw_request(method=b"GET\n"),
        raw_request(method=b"\xc3\x89"),
        raw_request(method=b"A" * 33),
        raw_request(priority=8),
        raw_request(headers=[(b"x-a", b"a\r\nset-cookie: x")]),
        raw_request(headers=[(b"x-a", b"a\nb")]),
        raw_request(headers=[(b"x-a", b"a\x00b")]),
        raw_request(headers=[(b"x a", b"b")]),
        raw_request(headers=[(b"", b"b")]),
        raw_request(headers=[(b"x\r\n", b"b")]),
        raw_request() + b"\x00",  # trailing bytes
        raw_request()[:-1],  # truncated header count
        raw_request(headers=[(b"x", b"y")])[:-1],  # truncated value
        raw_request()[:3],  # truncated method
        b"",
        b"\x03",
        raw_request()[:-2] + U16.pack(MAX_HEADERS + 1),
    ],
)
def test_decoder_refuses_request_heads(payload: bytes) -> None:
    with pytest.raises(HeadError):
        decode_request_head(payload)


@pytest.mark.parametrize(
    "payload",
    [
        U16.pack(99) + raw_headers([]),
        U16.pack(600) + raw_headers([]),
        U16.pack(200) + raw_headers([(b"x", b"a\r\nb")]),
        U16.pack(200) + raw_headers([(b"x", b"\x00")]),
        U16.pack(200) + raw_headers([]) + b"junk",
        U16.pack(200) + raw_headers([(b"x", b"y")])[:-1],
        U16.pack(200),
        b"\x00",
        b"",
    ],
)
def test_decoder_refuses_response_heads(payload: bytes) -> None:
    with pytest.raises(HeadError):
        decode_response_head(payload)


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


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_FIELD_BYTES, _FIELD_BYTES), max_size=6))
def test_whole_head_check_agrees_with_valid_field(fields: list[tuple[bytes, bytes]]) -> None:
    names = [n for n, _ in fields]
    values = [v for _, v in fields]
    expected = all(valid_field(n, v) for n, v in fields)
    assert heads._all_valid(names, values) is expected
    raw = raw_request(headers=fields)
    if expected:
        assert len(decode_request_head(raw).headers) == len(fields)
    else:
        with pytest.raises(HeadError):
            decode_request_head(raw)


# The encoder checks a whole block at once too, with the fields joined by LF (valid
# in neither a name nor a value): a field holding an LF, or an empty one, next to
# valid ones must still be refused, and everything valid must round-trip.
_FIELD_TEXT = st.text(alphabet="aZ-\n\r \t\xe9:\x00", max_size=5) | st.sampled_from(
    ["x-ok", "", "\n", "a\n", "\nb", "v" * 5000]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_FIELD_TEXT, _FIELD_TEXT), max_size=6))
def test_block_encoder_agrees_with_valid_field(fields: list[tuple[str, str]]) -> None:
    expected = all(valid_field(n.encode("latin-1"), v.encode("latin-1")) for n, v in fields)
    if not expected:
        with pytest.raises(HeadError):
            encode_response_head(ResponseHead(200, fields))
        return
    payload = encode_response_head(ResponseHead(200, fields))
    assert payload == U16.pack(200) + raw_headers(
        [(n.encode("latin-1"), v.encode("latin-1")) for n, v in fields]
    )
    assert decode_response_head(payload).headers == [(n.lower(), v) for n, v in fields]
