"""The provider client refuses discovery documents and key sets it must not trust."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey

from homeport.relay.oidc_client import MAX_BODY, ProviderClient, ProviderError, apple_client_secret
from homeport.relay.oidc_settings import AppleKey, OidcProvider, apple_provider

Handler = Callable[[web.Request], Any]


@contextlib.asynccontextmanager
async def serve(routes: dict[str, Handler]) -> AsyncIterator[str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _provider(issuer: str) -> OidcProvider:
    return OidcProvider(name="t", label="T", issuer=issuer, client_id="c", client_secret="s")


def _document(base: str, **changes: Any) -> dict[str, Any]:
    doc = {
        "issuer": base,
        "authorization_endpoint": base + "/authorize",
        "token_endpoint": base + "/token",
        "jwks_uri": base + "/jwks",
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


@pytest.mark.parametrize(
    ("name", "changes"),
    [
        ("issuer of someone else", {"issuer": "http://127.0.0.1:1"}),
        ("token endpoint over plain HTTP elsewhere", {"token_endpoint": "http://evil.example/t"}),
        ("jwks on another scheme", {"jwks_uri": "ftp://127.0.0.1/jwks"}),
        ("no authorization endpoint", {"authorization_endpoint": None}),
        ("jwks_uri not a string", {"jwks_uri": ["x"]}),
    ],
)
async def test_bad_discovery_documents_are_refused(name: str, changes: dict[str, Any]) -> None:
    base: list[str] = []

    async def discovery(request: web.Request) -> web.Response:
        return web.json_response(_document(base[0], **changes))

    async with serve({"/.well-known/openid-configuration": discovery}) as url:
        base.append(url)
        with pytest.raises(ProviderError):
            await ProviderClient(_provider(url)).metadata()


@pytest.mark.parametrize("answer", ["not json", "huge", "array", "500", "redirect"])
async def test_unusable_answers_are_refused(answer: str) -> None:
    base: list[str] = []

    async def good(request: web.Request) -> web.Response:
        return web.json_response(_document(base[0]))

    async def discovery(request: web.Request) -> web.StreamResponse:
        if answer == "not json":
            return web.Response(text="<html>hello</html>")
        if answer == "huge":
            return web.Response(body=b'{"a": "' + b"x" * (MAX_BODY + 10) + b'"}')
        if answer == "array":
            return web.json_response([_document(base[0])])
        if answer == "500":
            return web.Response(status=500)
        raise web.HTTPFound(location="/good")  # redirects are not followed

    routes = {"/.well-known/openid-configuration": discovery, "/good": good}
    async with serve(routes) as url:
        base.append(url)
        with pytest.raises(ProviderError):
            await ProviderClient(_provider(url)).metadata()


async def test_unreachable_provider_is_a_provider_error() -> None:
    async with serve({}) as url:
        pass  # closed again: nothing listens there now
    with pytest.raises(ProviderError):
        await ProviderClient(_provider(url)).metadata()


async def test_unreadable_jwks_is_refused() -> None:
    base: list[str] = []

    async def discovery(request: web.Request) -> web.Response:
        return web.json_response(_document(base[0]))

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]})

    async with serve({"/.well-known/openid-configuration": discovery, "/jwks": jwks}) as url:
        base.append(url)
        with pytest.raises(ProviderError):
            await ProviderClient(_provider(url)).keys("k")


def test_apple_client_secret_is_a_short_es256_jwt_from_the_team() -> None:
    key = ECKey.generate_key("P-256")
    provider = apple_provider(
        "net.example.web", AppleKey("TEAM", "KID", key.as_pem(private=True).decode())
    )
    now = int(time.time())
    token = jwt.decode(apple_client_secret(provider, now), key, algorithms=["ES256"])
    assert token.header == {"alg": "ES256", "kid": "KID", "typ": "JWT"}
    assert token.claims == {
        "iss": "TEAM",
        "sub": "net.example.web",
        "aud": "https://appleid.apple.com",
        "iat": now,
        "exp": now + 300,
    }
    with pytest.raises(ProviderError):
        apple_client_secret(_provider("https://idp.example"), now)
