"""The proxied response head's one-pass header lines (``relay/proxy/responses.py``)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from homeport.relay.headers import response_headers
from homeport.relay.proxy.responses import head_is_clean, response_lines
from homeport.relay.security_headers import tenant_response_headers

_FIELDS = st.sampled_from(
    [
        ("content-type", "text/html"),
        ("content-length", "12"),
        ("content-length", "x"),
        ("connection", "x-secret"),
        ("connection", "close"),
        ("x-secret", "1"),
        ("server", "Python"),
        ("date", "yesterday"),
        ("strict-transport-security", "max-age=0"),
        ("keep-alive", "timeout=5"),
        ("set-cookie", "a=1; Path=/"),
        ("set-cookie", "__Host-homeport_session=x; Path=/"),
        ("set-cookie", "b=2; Domain=example.com"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("content-security-policy", "default-src 'self'"),
        ("content-security-policy", "default-src 'self'; frame-ancestors 'none'"),
    ]
)


@given(st.lists(_FIELDS, max_size=10))
@settings(max_examples=500, deadline=None)
def test_response_lines_are_exactly_the_filtered_headers_with_the_security_ones(
    headers: list[tuple[str, str]],
) -> None:
    lines, lengths, length = response_lines(*_fields(headers))
    expected = tenant_response_headers(response_headers(headers))
    assert lines == [f"{n}: {v}\r\n".encode("latin-1") for n, v in expected]
    assert [lines[i] for i in lengths] == [
        f"content-length: {v}\r\n".encode() for n, v in expected if n == "content-length"
    ]
    assert length == next((v.encode() for n, v in expected if n == "content-length"), None)


def _fields(headers: list[tuple[str, str]]) -> tuple[list[bytes], list[bytes]]:
    return [n.encode() for n, _ in headers], [v.encode() for _, v in headers]


def test_a_home_cannot_set_the_relay_session_cookie_or_drop_hsts() -> None:
    lines, _, _ = response_lines(
        *_fields(
            [
                ("set-cookie", "__Host-homeport_session=evil"),
                ("strict-transport-security", "max-age=0"),
            ]
        )
    )
    assert not any(b"homeport_session" in line for line in lines)
    assert [line for line in lines if line.startswith(b"strict-transport-security")] == [
        b"strict-transport-security: max-age=63072000; includeSubDomains; preload\r\n"
    ]


def test_a_clean_head_is_exactly_its_crlf_ended_lines() -> None:
    head = b"HTTP/1.1 200 OK\r\ndate: x\r\nx-a: 1\r\n\r\n"
    assert head_is_clean(head, 4)
    for unclean in (
        b"HTTP/1.1 200 OK\r\ndate: x\r\nx-a: 1\r\nset-cookie: x\r\n\r\n",  # one line too many
        b"HTTP/1.1 200 OK\r\nx-a: 1\nset-cookie: x\r\n\r\n",  # a bare LF
        b"HTTP/1.1 200 OK\r\nx-a: 1\rset-cookie: x\r\n\r\n",  # a bare CR
        b"HTTP/1.1 200 OK\r\nx-a: 1\x00\r\n\r\n",  # a NUL
        b"HTTP/1.1 200 OK\r\nx-a: 1\r\n",  # a line short
    ):
        assert not head_is_clean(unclean, 4), unclean
