"""Security headers on every kind of HTTPS response, seen on the wire (R-HSTS-01, R-HDR-01..10).

A relay, a real add-on and a backend that plays Home Assistant with whatever
response headers a test asks for, all on loopback.  Raw TLS sockets fetch
the relay's own answers (pages, refusals, parser errors) exactly as sent; a
signed-in client fetches proxied ones.  Every case is checked for exactly
one HSTS header, ``nosniff``, no banner and a charset on text; relay pages
for the full page set; proxied answers for "add only what cannot break HA,
never weaken what HA sent".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
import pytest_asyncio
from edge_checks import (
    Pairs,
    assert_https_basics,
    assert_no_cors,
    assert_relay_baseline,
    assert_relay_page,
    one,
    pairs,
    values,
)
from header_backend import start_header_backend
from ports import reserve_port
from rawhttp import RawResponse, exchange
from stack import Browser, Stack, start_stack
from tenants import extra_tenant, linked_key

from homeport.relay.security_headers import TENANT_FRAMING, TENANT_REFERRER
from homeport.relay.tenant import SESSION_COOKIE

pytestmark = pytest.mark.asyncio(loop_scope="module")

BIG = "a" * 20_000


@dataclass
class Edge:
    stack: Stack
    browser: Browser
    token: str

    @property
    def account(self) -> str:
        return self.stack.config.account_host

    @property
    def tenant(self) -> str:
        return self.stack.config.tenant_host(self.stack.instance_id)

    @property
    def csp(self) -> str:
        return self.stack.relay.pages.csp

    async def raw(self, sni: str, request: str, *, host: str | None = None) -> RawResponse:
        """``request`` (request line + extra header lines) with Host and CRLFs added."""
        port = self.stack.config.listen_port
        line, *rest = request.split("\n")
        head = [line, f"Host: {host or sni}:{port}", *rest]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        return await exchange(port, sni, self.stack.ca_path, data)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def edge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Edge]:
    runner, url = await start_header_backend()
    try:
        async with (
            start_stack(tmp_path_factory.mktemp("headers"), ha_url=url) as stack,
            stack.browser() as browser,
        ):
            await browser.sign_in("/")
            jar = {c.key: c.value for c in browser.session.cookie_jar}
            yield Edge(stack, browser, jar[SESSION_COOKIE])
    finally:
        await runner.cleanup()


# ------------------------------------------------------------ relay pages


async def test_relay_pages_carry_the_full_page_set(edge: Edge) -> None:
    cases = {
        "sign-in page": (edge.account, "GET /signin HTTP/1.1", 200),
        "account 404": (edge.account, "GET /no/such/page HTTP/1.1", 404),
        "account /.git/HEAD": (edge.account, "GET /.git/HEAD HTTP/1.1", 404),
        "tenant notice 404": (edge.tenant, "GET /.homeport/nothing HTTP/1.1", 404),
        "tenant sign-in redirect": (
            edge.tenant,
            "GET / HTTP/1.1\nAccept: text/html\nSec-Fetch-Mode: navigate",
            303,
        ),
        "tenant bad hand-off": (edge.tenant, "GET /.homeport/handoff?code=x HTTP/1.1", 400),
    }
    for what, (sni, request, status) in cases.items():
        answer = await edge.raw(sni, request)
        assert answer.status == status, (what, answer.status)
        assert_relay_page(answer.headers, edge.csp, what=what)
        if answer.body:
            assert one(answer.headers, "content-type") == "text/html; charset=utf-8", what
            assert b"Traceback" not in answer.body


async def test_account_csp_is_strict() -> None:
    from homeport.relay.config import RelayConfig
    from homeport.relay.pages import account_csp

    csp = account_csp(RelayConfig(data_dir=Path("/nonexistent"), listen_port=443))
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert directives["base-uri"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["form-action"] == "'self' https://*.home.localhost"
    assert "unsafe" not in csp


# --------------------------------------------------- relay answers, not pages


async def test_relay_refusals_and_errors_carry_the_baseline(edge: Edge) -> None:
    cases: dict[str, tuple[str, str, str | None, set[int]]] = {
        "unknown host": (edge.account, "GET / HTTP/1.1", "unknown.example", {421}),
        "host is not the SNI": (edge.account, "GET / HTTP/1.1", edge.tenant, {421}),
        "parser: bad method": (edge.account, "G@T / HTTP/1.1", None, {400}),
        "parser: space in name": (edge.account, "GET / HTTP/1.1\nBad Name: x", None, {400}),
        "parser: obs-fold": (edge.tenant, "GET / HTTP/1.1\nX-A: a\n b", None, {400}),
        "parser: huge header": (edge.tenant, "GET / HTTP/1.1\nX-A: " + BIG, None, {400, 431}),
        "TRACE": (edge.account, "TRACE / HTTP/1.1", None, {405}),
        "unknown coding": (
            edge.tenant,
            "POST / HTTP/1.1\nTransfer-Encoding: gzip, chunked",
            None,
            {501},
        ),
        "tenant API without session": (edge.tenant, "GET /api/ HTTP/1.1", None, {401}),
        "account home redirect": (edge.account, "GET / HTTP/1.1", None, {303}),
        "health check": (edge.account, "GET /healthz HTTP/1.1", None, {200}),
    }
    for what, (sni, request, host, statuses) in cases.items():
        answer = await edge.raw(sni, request, host=host)
        assert answer.status in statuses, (what, answer.status)
        assert_relay_baseline(answer.headers, what=what)
        assert b"aiohttp" not in answer.body, what
        assert b"Python" not in answer.body, what


async def test_security_txt_carries_hsts_and_may_be_cached(edge: Edge) -> None:
    answer = await edge.raw(edge.account, "GET /.well-known/security.txt HTTP/1.1")
    assert answer.status == 200
    assert_relay_baseline(answer.headers, what="security.txt", cacheable=True)
    assert one(answer.headers, "cache-control") == "max-age=86400"


async def test_no_cors_headers_even_when_a_foreign_origin_asks(edge: Edge) -> None:
    preflight = (
        "OPTIONS /signin HTTP/1.1\nOrigin: https://evil.example\n"
        "Access-Control-Request-Method: POST\nAccess-Control-Request-Headers: content-type"
    )
    cases = {
        "account preflight": (edge.account, preflight),
        "account GET with Origin": (edge.account, "GET /signin HTTP/1.1\nOrigin: null"),
        "tenant preflight": (edge.tenant, preflight.replace("/signin", "/api/states")),
        "tenant GET with Origin": (
            edge.tenant,
            "GET /api/ HTTP/1.1\nOrigin: https://evil.example",
        ),
    }
    for what, (sni, request) in cases.items():
        answer = await edge.raw(sni, request)
        assert answer.status < 500, what
        assert_https_basics(answer.headers, what=what)
        assert_no_cors(answer.headers, what=what)
        assert (
            one(answer.headers, "vary") is None
            or "origin" not in (one(answer.headers, "vary") or "").lower()
        )


# ------------------------------------------------------------ proxied answers


async def proxied(edge: Edge, *header_lines: str) -> Pairs:
    query = urlencode([("h", line) for line in header_lines])
    async with edge.browser.request("GET", f"{edge.stack.tenant_origin}/headers?{query}") as r:
        assert r.status == 200
        await r.read()
        return pairs(r.raw_headers)


async def test_proxied_answer_gets_only_harmless_headers(edge: Edge) -> None:
    headers = await proxied(edge)
    assert_https_basics(headers, what="proxied")
    assert one(headers, "referrer-policy") == TENANT_REFERRER
    assert values(headers, "content-security-policy") == [TENANT_FRAMING]
    # Nothing that could break Home Assistant's frontend, cast, Assist or caching.
    for name in (
        "permissions-policy",
        "cross-origin-opener-policy",
        "cross-origin-resource-policy",
        "cache-control",
        "x-frame-options",
    ):
        assert one(headers, name) is None, name


async def test_proxied_answer_never_weakens_what_home_assistant_sent(edge: Edge) -> None:
    # HA's own HSTS (even a weaker one) is replaced: exactly one, ours.
    headers = await proxied(edge, "Strict-Transport-Security:max-age=0")
    assert_https_basics(headers, what="HA HSTS")
    # A framing policy from HA: kept, nothing added (frame-ancestors would override DENY).
    headers = await proxied(edge, "X-Frame-Options:DENY")
    assert values(headers, "x-frame-options") == ["DENY"]
    assert values(headers, "content-security-policy") == []
    headers = await proxied(edge, "Content-Security-Policy:frame-ancestors 'none'")
    assert values(headers, "content-security-policy") == ["frame-ancestors 'none'"]
    # A CSP without framing rules: kept as is; the framing rule goes in its own policy.
    headers = await proxied(edge, "Content-Security-Policy:default-src 'self'")
    assert values(headers, "content-security-policy") == ["default-src 'self'", TENANT_FRAMING]
    # A stricter Referrer-Policy and HA's own caching and CORS choices pass unchanged.
    headers = await proxied(
        edge,
        "Referrer-Policy:no-referrer",
        "Cache-Control:public, max-age=31536000",
        "Access-Control-Allow-Origin:https://cast.home-assistant.io",
    )
    assert values(headers, "referrer-policy") == ["no-referrer"]
    assert values(headers, "cache-control") == ["public, max-age=31536000"]
    assert values(headers, "access-control-allow-origin") == ["https://cast.home-assistant.io"]
    # Banners from HA never reach the browser.
    headers = await proxied(edge, "Server:HomeAssistant/2025.4", "X-Powered-By:Python")
    assert_https_basics(headers, what="HA banners")


async def test_proxied_pages_errors_and_websocket_upgrades_carry_hsts(edge: Edge) -> None:
    for path, status in (("/", 200), ("/status/404", 404), ("/status/500", 500)):
        async with edge.browser.request("GET", edge.stack.tenant_origin + path) as r:
            assert r.status == status, path
            await r.read()
            assert_https_basics(pairs(r.raw_headers), what=path)
    upgrade = (
        "GET /ws/echo HTTP/1.1\nUpgrade: websocket\nConnection: Upgrade\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13\n"
        f"Origin: {edge.stack.tenant_origin}\nCookie: {SESSION_COOKIE}={edge.token}"
    )
    answer = await edge.raw(edge.tenant, upgrade)
    assert answer.status == 101
    assert_https_basics(answer.headers, what="WebSocket upgrade")


async def test_offline_and_unreachable_homes_get_pages_with_the_page_set(
    edge: Edge, tmp_path: Path
) -> None:
    stack = edge.stack
    # A linked home whose add-on is not connected: 503.
    _key, instance_id = await linked_key(stack, "offline@example.com")
    user = await stack.relay.accounts.get_user_by_email("offline@example.com")
    assert user is not None
    token, _ = await stack.relay.accounts.create_session(
        user, "tenant", instance_id=instance_id, user_agent="test", ip="127.0.0.1"
    )
    host = stack.config.tenant_host(instance_id)
    answer = await edge.raw(host, f"GET / HTTP/1.1\nCookie: {SESSION_COOKIE}={token}")
    assert answer.status == 503
    assert b"offline" in answer.body
    assert_relay_page(answer.headers, edge.csp, what="offline 503")
    # A connected add-on whose Home Assistant does not answer: 502.
    dead = f"http://127.0.0.1:{reserve_port()}"
    async with (
        extra_tenant(stack, tmp_path, email="down@example.com", ha_url=dead) as other,
        other.browser() as browser,
    ):
        page = await browser.sign_in("/")
        assert page.status == 502
        assert_relay_page(pairs(page.raw_headers), edge.csp, what="HA down 502")
