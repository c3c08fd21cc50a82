"""What the relay forwards into the tunnel (``relay/headers.py: request_headers``)."""

from __future__ import annotations

from homeport.relay.headers import request_headers


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
