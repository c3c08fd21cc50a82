"""What the relay forwards into the tunnel (``relay/headers.py: request_headers``)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from homeport.relay.headers import (
    request_fields,
    request_headers,
    strip_relay_cookie_bytes,
    strip_relay_cookies,
)


def _forwarded(*raw: tuple[str, str]) -> list[tuple[str, str]]:
    return request_headers(
        [(n.encode("latin-1"), v.encode("latin-1")) for n, v in raw],
        client_ip="198.51.100.7",
        public_host="home.example",
        websocket=False,
    )


def test_header_names_with_underscores_are_dropped() -> None:
    """``x_forwarded_for`` would read as ``X-Forwarded-For`` to a backend mapping ``_`` to ``-``."""
    out = _forwarded(
        ("x_forwarded_for", "203.0.113.66"),
        ("X_Real_IP", "203.0.113.66"),
        ("x-forwarded_host", "evil.example"),
        ("My_Header", "a"),
        ("X-Custom", "kept"),
        ("Accept", "text/html"),
    )
    assert [n for n, _ in out if "_" in n] == []
    assert ("x-custom", "kept") in out
    assert ("accept", "text/html") in out
    assert [v for n, v in out if n == "x-forwarded-for"] == ["198.51.100.7"]
    assert [v for n, v in out if n == "x-forwarded-host"] == ["home.example"]
    assert "203.0.113.66" not in str(out)


_COOKIE_TEXT = st.lists(
    st.sampled_from(
        ["a", "b", "=", ";", " ", "\t", "\xa0", "\x85", "\x1f", "__Host-homeport", "_", "x"]
    ),
    max_size=20,
).map("".join)


@given(_COOKIE_TEXT)
@settings(max_examples=500, deadline=None)
def test_the_bytes_cookie_strip_cuts_exactly_what_the_text_one_cuts(header: str) -> None:
    """The data plane's bytes version never lets a relay cookie through that the other cuts."""
    raw = header.encode("latin-1")
    assert strip_relay_cookie_bytes(raw) == strip_relay_cookies(header).encode("latin-1")


def test_the_relay_session_cookie_never_enters_the_tunnel() -> None:
    raw = [
        (b"Host", b"h"),
        (b"Cookie", b"a=1; __Host-homeport-session=SECRET;\xa0__Host-homeport-x=2 ;b=3"),
    ]
    names, values = request_fields(raw, client_ip="192.0.2.1", public_host="h", websocket=False)
    cookies = [v for n, v in zip(names, values, strict=True) if n == b"cookie"]
    assert cookies == [b"a=1; b=3"]
    only_ours = [(b"Host", b"h"), (b"Cookie", b"__Host-homeport-session=SECRET")]
    names, _ = request_fields(only_ours, client_ip="192.0.2.1", public_host="h", websocket=False)
    assert b"cookie" not in names


_NAMES = st.sampled_from(
    [
        "Host",
        "Connection",
        "connection",
        "Keep-Alive",
        "Upgrade",
        "X-Custom",
        "x_custom",
        "Cookie",
        "Accept",
        "TE",
        "Forwarded",
        "X-Forwarded-For",
        "Expect",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Protocol",
        "Proxy-Connection",
    ]
)
_VALUES = st.sampled_from(
    [
        "keep-alive",
        "close",
        "Keep-Alive",
        " close ",
        "x-custom",
        "X-Custom, accept",
        "upgrade",
        "te, keep-alive",
        "a=1; __Host-homeport_session=s",
        "text/html",
        "",
    ]
)


@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=12), st.booleans())
@settings(max_examples=500, deadline=None)
def test_the_bytes_request_fields_are_exactly_the_text_ones(
    raw: list[tuple[str, str]], websocket: bool
) -> None:
    """The data plane's one-pass version (with its ``Connection: keep-alive`` shortcut)
    forwards exactly what the text version does, including fields ``Connection`` lists."""
    encoded = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in raw]
    names, values = request_fields(
        encoded, client_ip="192.0.2.1", public_host="h.example", websocket=websocket
    )
    text = request_headers(
        encoded, client_ip="192.0.2.1", public_host="h.example", websocket=websocket
    )
    assert list(zip(names, values, strict=True)) == [
        (n.encode("latin-1"), v.encode("latin-1")) for n, v in text
    ]


def test_a_field_listed_in_connection_is_not_forwarded() -> None:
    raw = [(b"Connection", b"keep-alive, X-Secret"), (b"X-Secret", b"1"), (b"Accept", b"*/*")]
    names, _ = request_fields(raw, client_ip="192.0.2.1", public_host="h", websocket=False)
    assert b"x-secret" not in names
    assert b"accept" in names
