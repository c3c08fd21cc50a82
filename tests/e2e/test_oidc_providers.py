"""End to end with provider-specific behaviour: Apple's form_post and client secret JWT,
and a third-party provider implementation (PyPI ``oidc-provider-mock``, Authlib-based).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from oidc_idp import AppleTeam, StandInIdp, mock_provider, stand_in_idp, walk
from ports import listening_socket
from stack import Stack, start_stack
from yarl import URL

from homeport.relay.oidc_settings import AppleKey, OidcProvider, apple_provider
from homeport.relay.site.signin_flow import ACCOUNT_COOKIE
from homeport.tls.devca import DevCA

pytestmark = pytest.mark.timeout(180)

SERVICES_ID = "com.example.homeport.web"


@contextlib.asynccontextmanager
async def apple_stack(
    tmp_path: Path,
    idp: StandInIdp,
    team: AppleTeam,
    *,
    signing_key: ECKey | None = None,
    ca: DevCA | None = None,
) -> AsyncIterator[Stack]:
    sock = listening_socket()
    port = sock.getsockname()[1]
    idp.redirect_uri = f"https://homeport.localhost:{port}/signin/oidc/apple/callback"
    pem = (signing_key or team.key).as_pem(private=True).decode()
    provider = apple_provider(
        SERVICES_ID, AppleKey(team.team_id, team.key_id, pem), issuer=idp.issuer
    )
    async with start_stack(tmp_path, sock=sock, ca=ca, oidc_providers=(provider,)) as stack:
        yield stack


def _has_cookie(session: aiohttp.ClientSession, name: str) -> bool:
    return any(c.key == name for c in session.cookie_jar)


async def test_apple_form_post_private_relay_and_client_secret_jwt(tmp_path: Path) -> None:
    team = AppleTeam()
    async with stand_in_idp(client_id=SERVICES_ID, apple=team, form_post=True) as idp:
        idp.user.email = "q7x2k9@privaterelay.appleid.com"
        idp.user.email_verified = "true"  # Apple sends a string
        async with apple_stack(tmp_path, idp, team) as stack, stack.browser() as browser:
            async with browser.request("GET", stack.account_origin + "/signin") as r:
                assert "Sign in with Apple" in await r.text()
            page = await walk(browser.session, stack.account_origin + "/signin/oidc/apple")
            assert page.status == 200, page.text
            assert page.url.path == "/"
            assert "q7x2k9@privaterelay.appleid.com" in page.text
            assert _has_cookie(browser.session, ACCOUNT_COOKIE)
            # The callback was a POST sent without the browser's cookies (cross-site).
            callback = [u for u in page.visited if u.path.endswith("/callback")]
            assert len(callback) == 1
            assert callback[0].query == {}
            # The provider checked the ES256 client secret; look at it ourselves too.
            assert idp.token_errors == []
            [request] = idp.token_requests
            secret = jwt.decode(request["client_secret"], team.key, algorithms=["ES256"])
            assert secret.header["kid"] == team.key_id
            assert secret.claims["iss"] == team.team_id
            assert secret.claims["sub"] == SERVICES_ID
            assert secret.claims["aud"] == idp.issuer
            assert secret.claims["exp"] - secret.claims["iat"] <= 600
            user = await stack.relay.accounts.get_user_by_email(idp.user.email)
            assert user is not None
            assert not user.has_password
            # A GET callback is not what Apple sends: refused.
            bogus = stack.account_origin + "/signin/oidc/apple/callback?state=a&code=b"
            async with browser.request("GET", bogus) as r:
                assert r.status == 400


async def test_apple_refuses_a_client_secret_signed_with_another_key(tmp_path: Path) -> None:
    team = AppleTeam()
    async with (
        stand_in_idp(client_id=SERVICES_ID, apple=team, form_post=True) as idp,
        apple_stack(tmp_path, idp, team, signing_key=ECKey.generate_key("P-256")) as stack,
        stack.browser() as browser,
    ):
        page = await walk(browser.session, stack.account_origin + "/signin/oidc/apple")
        assert page.status == 400
        assert not _has_cookie(browser.session, ACCOUNT_COOKIE)
        assert idp.token_errors == ["client authentication"]


def _register(issuer: str, redirect_uri: str) -> dict[str, str]:
    import httpx2

    answer = httpx2.post(
        issuer + "/oauth2/clients",
        json={"redirect_uris": [redirect_uri], "token_endpoint_auth_method": "client_secret_post"},
        timeout=30,
    )
    answer.raise_for_status()
    client: dict[str, str] = answer.json()
    return client


def _set_user(issuer: str, sub: str, email: str) -> None:
    import httpx2

    answer = httpx2.put(
        f"{issuer}/users/{quote(sub, safe='')}",
        json={"email": email, "email_verified": True},
        timeout=30,
    )
    assert answer.status_code == 204


async def test_signin_with_oidc_provider_mock(tmp_path: Path) -> None:
    sock = listening_socket()
    port = sock.getsockname()[1]
    redirect_uri = f"https://homeport.localhost:{port}/signin/oidc/mock/callback"
    with mock_provider(require_client_registration=True, require_nonce=True) as issuer:
        client = await asyncio.to_thread(_register, issuer, redirect_uri)
        await asyncio.to_thread(_set_user, issuer, "mock-subject-1", "mocked@example.com")
        provider = OidcProvider(
            name="mock",
            label="Mock IdP",
            issuer=issuer,
            client_id=client["client_id"],
            client_secret=client["client_secret"],
        )
        async with (
            start_stack(tmp_path, sock=sock, oidc_providers=(provider,)) as stack,
            stack.browser() as browser,
        ):
            start = stack.account_origin + "/signin/oidc/mock"
            page = await walk(browser.session, start)
            # The provider's own login page: pick the subject, as a person would.
            assert page.status == 200
            assert page.url.path == "/oauth2/authorize"
            async with browser.session.post(
                page.url, data={"sub": "mock-subject-1"}, allow_redirects=False
            ) as r:
                assert r.status == 302
                location = URL(r.headers["Location"])
            assert str(location.with_query(None)) == redirect_uri
            page = await walk(browser.session, str(location))
            assert page.status == 200, page.text
            assert page.url.path == "/"
            assert "mocked@example.com" in page.text
            [identity] = await stack.relay.accounts.oidc.identities(
                (await stack.relay.accounts.get_user_by_email("mocked@example.com")).id  # type: ignore[union-attr]
            )
            assert (identity.issuer, identity.subject) == (issuer, "mock-subject-1")
