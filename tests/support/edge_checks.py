"""Header checks shared by the edge tests: what every HTTPS response of the relay must carry.

Headers are given as ``(lower-case name, value)`` pairs in wire order, so a
duplicated header (two HSTS lines, say) is visible; ``pairs`` converts an
aiohttp client response.
"""

from __future__ import annotations

from collections.abc import Iterable

from homeport.relay.pages import HSTS, PAGE_HEADERS
from homeport.relay.security_headers import BASELINE

Pairs = list[tuple[str, str]]


def pairs(raw_headers: Iterable[tuple[bytes, bytes]]) -> Pairs:
    """An aiohttp client response's ``raw_headers``, decoded, order and duplicates kept."""
    return [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in raw_headers]


def values(headers: Pairs, name: str) -> list[str]:
    return [v for n, v in headers if n == name.lower()]


def one(headers: Pairs, name: str) -> str | None:
    found = values(headers, name)
    assert len(found) <= 1, f"{name} sent {len(found)} times: {found}"
    return found[0] if found else None


def assert_https_basics(headers: Pairs, *, what: str) -> None:
    """R-HSTS-01, R-HDR-03, R-HDR-07, R-HDR-10 on any HTTPS response."""
    assert values(headers, "strict-transport-security") == [HSTS], what
    assert one(headers, "x-content-type-options") == "nosniff", what
    assert not values(headers, "server"), what
    assert not values(headers, "x-powered-by"), what
    content_type = one(headers, "content-type")
    if content_type is not None and content_type.startswith("text/"):
        assert "charset=utf-8" in content_type.lower(), (what, content_type)


def assert_no_cors(headers: Pairs, *, what: str) -> None:
    """R-HDR-09: the relay never answers with CORS headers of its own."""
    assert not [n for n, _ in headers if n.startswith("access-control-")], (what, headers)


def assert_relay_page(headers: Pairs, csp: str, *, what: str) -> None:
    """A page the relay rendered: the full page set and the strict CSP (R-HDR-01..08)."""
    assert_https_basics(headers, what=what)
    assert_no_cors(headers, what=what)
    assert one(headers, "content-security-policy") == csp, what
    for name, value in PAGE_HEADERS.items():
        if name.lower() != "cache-control" or value == "no-store":
            assert one(headers, name) == value, (what, name)
    assert "frame-ancestors 'none'" in csp
    assert "script-src 'self'" in csp
    assert "'unsafe-inline'" not in csp


def assert_relay_baseline(headers: Pairs, *, what: str, cacheable: bool = False) -> None:
    """A relay-owned answer that is not a page (421, 405, parser 400, 401, redirects)."""
    assert_https_basics(headers, what=what)
    assert_no_cors(headers, what=what)
    csp = one(headers, "content-security-policy")
    assert csp is not None, what
    assert "frame-ancestors 'none'" in csp, (what, csp)
    assert one(headers, "referrer-policy") in ("no-referrer", "same-origin"), what
    assert one(headers, "cross-origin-resource-policy") == "same-origin", what
    if not cacheable:
        assert one(headers, "cache-control") == BASELINE["Cache-Control"], what
