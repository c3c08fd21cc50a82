"""The proxied response head's one-pass header lines (``relay/proxy/responses.py``)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from homeport.relay.headers import response_headers
from homeport.relay.proxy.responses import response_lines
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
        ("x-bad", "a\r\nb"),
        ("bad name", "v"),
    ]
)


@given(st.lists(_FIELDS, max_size=10))
@settings(max_examples=500, deadline=None)
def test_response_lines_are_exactly_the_filtered_headers_with_the_security_ones(
    headers: list[tuple[str, str]],
) -> None:
    lines, lengths, length = response_lines(headers)
    expected = tenant_response_headers(response_headers(headers))
    assert lines == [f"{n}: {v}\r\n".encode("latin-1") for n, v in expected]
    assert [lines[i] for i in lengths] == [
        f"content-length: {v}\r\n".encode() for n, v in expected if n == "content-length"
    ]
    assert length == next((v for n, v in expected if n == "content-length"), None)


def test_a_home_cannot_set_the_relay_session_cookie_or_drop_hsts() -> None:
    lines, _, _ = response_lines(
        [("set-cookie", "__Host-homeport_session=evil"), ("strict-transport-security", "max-age=0")]
    )
    assert not any(b"homeport_session" in line for line in lines)
    assert [line for line in lines if line.startswith(b"strict-transport-security")] == [
        b"strict-transport-security: max-age=63072000; includeSubDomains; preload\r\n"
    ]
