"""What the add-on writes to Home Assistant and what it passes back (``addon/messages.py``).

Unit level: the request head is written from the tunnel's parsed head (never
raw bytes), to the configured origin only, with the add-on's own framing;
the response's fields lose what belongs to one hop, and a ``Location`` to the
internal address becomes a path on the public host.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homeport.addon.messages import (
    RequestRefused,
    _check_lines,
    request_head,
    response_fields,
    websocket_fields,
)
from homeport.addon.upstream import Origin

BASE = "http://127.0.0.1:8123"
ORIGIN = Origin.parse(BASE)


def head(
    method: str = "GET",
    target: str = "/api/states",
    headers: list[tuple[str, str]] | None = None,
    *,
    send_forwarded: bool = True,
    has_body: bool = False,
) -> tuple[list[str], int | None]:
    raw, length = request_head(
        method,
        target,
        headers or [],
        ORIGIN,
        send_forwarded=send_forwarded,
        has_body=has_body,
    )
    assert raw.endswith(b"\r\n\r\n")
    return raw.decode("latin-1").split("\r\n")[:-2], length


@pytest.mark.parametrize(
    ("location", "public"),
    [
        (f"{BASE}/lovelace/0", "/lovelace/0"),
        (f"{BASE}/auth/authorize?x=1", "/auth/authorize?x=1"),
        (BASE, "/"),
        (f"{BASE}/", "/"),
        (f"{BASE}?q", "/?q"),
        # Never a network-path reference (``//host``), which names another host:
        (f"{BASE}//evil.example", "/evil.example"),
        (f"{BASE}//evil.example/path?q", "/evil.example/path?q"),
        (f"{BASE}///evil.example", "/evil.example"),
        (f"{BASE}/\\evil.example", "/evil.example"),  # browsers read \ as /
        (f"{BASE}/\t/evil.example", "/evil.example"),  # and drop tabs
        # Not the internal address: left as Home Assistant sent it.
        ("https://accounts.example/login", "https://accounts.example/login"),
        (f"{BASE}0/x", f"{BASE}0/x"),
        ("/relative", "/relative"),
    ],
)
def test_public_location(location: str, public: str) -> None:
    made = ORIGIN.public_location(location)
    assert made == public
    if made.startswith("/"):
        assert made[1:2] not in ("/", "\\")
    # The same rule on the response path.
    relayed = response_fields([(b"Location", location.encode("latin-1"))], ORIGIN)
    assert relayed == ([b"location"], [public.encode("latin-1")])


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "http://evil.example/"),  # absolute-form
        ("GET", "evil.example:443"),  # authority-form
        ("GET", "//evil.example/x"),  # network-path reference
        ("GET", "*"),  # asterisk-form
        ("GET", ""),
        ("GET", "/a b"),
        ("CONNECT", "/"),
        ("CONNECT", "evil.example:443"),
    ],
)
def test_ssrf_targets_are_refused(method: str, target: str) -> None:
    with pytest.raises(RequestRefused):
        head(method, target)


def test_the_request_goes_to_home_assistant_own_host_in_canonical_form() -> None:
    lines, length = head(
        "GET",
        "/api/states?x=1",
        [
            ("host", "relay.example"),
            ("accept", "*/*"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "hop-by-hop, named by connection"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("cookie", "a=1"),
        ],
    )
    assert lines == [
        "GET /api/states?x=1 HTTP/1.1",
        "host: 127.0.0.1:8123",
        "accept: */*",
        "cookie: a=1",
    ]
    assert length is None


def test_forwarded_headers_only_while_home_assistant_trusts_us() -> None:
    fields = [
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "home.example"),
        ("forwarded", "for=203.0.113.9"),
        ("accept", "*/*"),
    ]
    trusted, _ = head(headers=fields, send_forwarded=True)
    untrusted, _ = head(headers=fields, send_forwarded=False)
    assert [line for line in trusted if "forwarded" in line] == [
        "x-forwarded-for: 203.0.113.9",
        "x-forwarded-proto: https",
        "x-forwarded-host: home.example",
        "forwarded: for=203.0.113.9",
    ]
    assert untrusted == ["GET /api/states HTTP/1.1", "host: 127.0.0.1:8123", "accept: */*"]


def test_body_framing_is_the_addons_own() -> None:
    with_length, length = head("POST", headers=[("content-length", "5")], has_body=True)
    assert with_length[-1] == "content-length: 5"
    assert length == 5
    chunked, length = head("POST", headers=[("transfer-encoding", "gzip, chunked")], has_body=True)
    assert chunked[-1] == "transfer-encoding: chunked"
    assert length is None
    empty, length = head("POST", headers=[("content-length", "0")])
    assert empty[-1] == "content-length: 0"
    assert length is None
    bodiless, _ = head("GET")
    assert not any("content-length" in line or "transfer-encoding" in line for line in bodiless)


@pytest.mark.parametrize(
    ("fields", "has_body"),
    [
        ([("content-length", "5"), ("content-length", "6")], True),
        ([("content-length", "-1")], True),
        ([("content-length", "0x10")], True),
        ([("content-length", "\uff15")], True),  # a digit to str.isdigit, not to HTTP
        ([("content-length", "7")], False),  # a length with nothing to send
    ],
)
def test_lengths_that_do_not_add_up_are_refused(
    fields: list[tuple[str, str]], has_body: bool
) -> None:
    with pytest.raises(RequestRefused):
        head("POST", headers=fields, has_body=has_body)


@pytest.mark.parametrize(
    "field",
    [
        ("x-a", "b\r\nx-injected: 1"),
        ("x-a", "b\nGET /smuggled HTTP/1.1"),
        ("x-a", "b\x00"),
        ("x-a", "b\r"),
        ("x-a", "\n\r"),
        ("x-a\r\nx-b", "1"),
    ],
)
def test_a_field_with_line_breaks_never_goes_out(field: tuple[str, str]) -> None:
    """The tunnel's head decoder refuses these; this layer refuses them again."""
    with pytest.raises(RequestRefused):
        head(headers=[field])


def test_response_fields_lose_what_belongs_to_one_hop() -> None:
    names, values = response_fields(
        [
            (b"Content-Type", b"text/html"),
            (b"Connection", b"keep-alive, X-Hop"),
            (b"X-Hop", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Host", b"127.0.0.1"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
            (b"X-Latin", b"caf\xe9"),
        ],
        ORIGIN,
    )
    assert names == [b"content-type", b"set-cookie", b"set-cookie", b"x-latin"]
    assert values == [b"text/html", b"a=1", b"b=2", b"caf\xe9"]


def test_websocket_upgrade_head_has_only_our_handshake() -> None:
    raw, length = request_head(
        "GET",
        "/api/websocket",
        [
            ("sec-websocket-key", "browser-key"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-extensions", "permessage-deflate"),
            ("sec-websocket-protocol", "a, b"),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("origin", "https://home.example"),
        ],
        ORIGIN,
        send_forwarded=True,
        has_body=False,
        websocket=websocket_fields("our-key", ["a", "b"]),
    )
    assert length is None
    assert raw.decode().split("\r\n") == [
        "GET /api/websocket HTTP/1.1",
        "host: 127.0.0.1:8123",
        "origin: https://home.example",
        "upgrade: websocket",
        "connection: Upgrade",
        "sec-websocket-version: 13",
        "sec-websocket-key: our-key",
        "sec-websocket-protocol: a, b",
        "",
        "",
    ]


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=12).map(lambda b: b.translate(_FOLD)), st.integers(0, 4))
def test_the_line_check_accepts_only_the_line_endings_we_wrote(head: bytes, lines: int) -> None:
    """The head check counts bytes as a whole; it must mean: exactly ``lines`` CRLFs and
    no other CR, LF or NUL anywhere (a bare one would add a field or split the request)."""
    clean = head.count(b"\r\n") == lines and not head.replace(b"\r\n", b"").translate(None, b"ab")
    try:
        _check_lines(head, lines)
    except RequestRefused:
        assert not clean
    else:
        assert clean


#: Folds random bytes onto the four that matter: "a", "b" (any field byte), CR, LF, NUL.
_FOLD = bytes(b"ab\r\n\0"[i % 5] for i in range(256))
