"""OpenID providers on loopback for the sign-in tests.

``StandInIdp`` is a small but complete provider (aiohttp, 127.0.0.1): discovery,
JWKS, an authorization endpoint that answers at once for its one user (query or
``form_post`` response mode), and a token endpoint that enforces what real ones
do: single-use codes, the exact redirect URI, PKCE S256, and client
authentication, either a shared secret or (``apple=``) Apple's ES256 client
secret JWT checked against the team's public key. Tests tamper with what it
signs (``claims_patch``, ``signer``) or says (``discovery_issuer``) to drive
every ID-token check through the relay.

``mock_provider`` runs PyPI's ``oidc-provider-mock`` (Authlib's provider, with
its login form) in a thread on 127.0.0.1, for the happy path against a third
party implementation.

``walk`` follows a sign-in through relay and provider the way a browser does,
including the one thing aiohttp's cookie jar does not do: a ``form_post``
answer is a cross-site POST, on which browsers do not send SameSite=Lax
cookies, so it is sent without any.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey
from yarl import URL


@dataclass
class AppleTeam:
    """An Apple developer team's key for the client secret JWT (ES256)."""

    team_id: str = "TEAM123456"
    key_id: str = "KEY1234567"
    key: ECKey = field(default_factory=lambda: ECKey.generate_key("P-256"))

    @property
    def private_pem(self) -> str:
        return self.key.as_pem(private=True).decode()


@dataclass
class IdpUser:
    sub: str = "idp-user-1"
    email: str | None = "person@example.com"
    email_verified: Any = True


class StandInIdp:
    def __init__(
        self,
        *,
        client_id: str = "homeport",
        client_secret: str = "s3cret-for-tests",
        redirect_uri: str = "",
        apple: AppleTeam | None = None,
        form_post: bool = False,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.apple = apple
        self.form_post = form_post
        self.key = RSAKey.generate_key(2048, parameters={"kid": "idp-key-1", "use": "sig"})
        self.user = IdpUser()
        #: Claims to change in the next ID tokens (a value of None removes the claim).
        self.claims_patch: dict[str, Any] = {}
        #: Replaces the signing step: (header, claims) -> compact token.
        self.signer: Callable[[dict[str, Any], dict[str, Any]], str] | None = None
        self.discovery_issuer: str | None = None
        self.codes: dict[str, dict[str, str]] = {}
        self.token_requests: list[dict[str, str]] = []
        self.token_errors: list[str] = []
        #: Every ID token handed out, so tests can look for it where it must not be.
        self.issued: list[str] = []
        self.discovery_hits = 0
        self.jwks_hits = 0
        self._runner: web.AppRunner | None = None
        self.issuer = ""

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> StandInIdp:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.issuer = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --------------------------------------------------------------- tokens

    def id_token(self, nonce: str) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": self.user.sub,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 600,
            "nonce": nonce,
            "email": self.user.email,
            "email_verified": self.user.email_verified,
        }
        claims.update(self.claims_patch)
        claims = {k: v for k, v in claims.items() if v is not None}
        header = {"alg": "RS256", "kid": "idp-key-1"}
        if self.signer is not None:
            token = self.signer(header, claims)
        else:
            token = jwt.encode(header, claims, self.key, algorithms=["RS256"])
        self.issued.append(token)
        return token

    # --------------------------------------------------------------- routes

    async def _discovery(self, request: web.Request) -> web.Response:
        self.discovery_hits += 1
        return web.json_response(
            {
                "issuer": self.discovery_issuer or self.issuer,
                "authorization_endpoint": self.issuer + "/authorize",
                "token_endpoint": self.issuer + "/token",
                "jwks_uri": self.issuer + "/jwks",
                "response_types_supported": ["code"],
                "response_modes_supported": ["query", "form_post"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_hits += 1
        return web.json_response(KeySet([self.key]).as_dict(private=False))

    async def _authorize(self, request: web.Request) -> web.Response:
        q = request.query
        problems = []
        if q.get("client_id") != self.client_id:
            problems.append("client_id")
        if self.redirect_uri and q.get("redirect_uri") != self.redirect_uri:
            problems.append("redirect_uri")
        if q.get("response_type") != "code" or "openid" not in q.get("scope", "").split():
            problems.append("response_type/scope")
        if q.get("code_challenge_method") != "S256" or len(q.get("code_challenge", "")) != 43:
            problems.append("pkce")
        if not q.get("state") or not q.get("nonce"):
            problems.append("state/nonce")
        if (q.get("response_mode") == "form_post") != self.form_post:
            problems.append("response_mode")
        if problems:
            return web.Response(
                status=400, text="bad authorization request: " + ", ".join(problems)
            )
        code = secrets.token_urlsafe(24)
        self.codes[code] = {
            "redirect_uri": q["redirect_uri"],
            "challenge": q["code_challenge"],
            "nonce": q["nonce"],
        }
        if self.form_post:
            fields = "".join(
                f'<input type="hidden" name="{name}" value="{html.escape(value)}">'
                for name, value in (("code", code), ("state", q["state"]))
            )
            page = (
                "<!doctype html><title>Continue</title>"
                f'<form method="post" action="{html.escape(q["redirect_uri"])}">{fields}'
                '<button type="submit">Continue</button></form>'
            )
            return web.Response(text=page, content_type="text/html")
        location = URL(q["redirect_uri"]).update_query(code=code, state=q["state"])
        raise web.HTTPSeeOther(location=str(location))

    def _client_ok(self, form: dict[str, str]) -> bool:
        if form.get("client_id") != self.client_id:
            return False
        secret = form.get("client_secret", "")
        if self.apple is None:
            return secrets.compare_digest(secret, self.client_secret)
        try:
            token = jwt.decode(secret, self.apple.key, algorithms=["ES256"])
        except Exception:
            return False
        claims, now = token.claims, time.time()
        return (
            token.header.get("kid") == self.apple.key_id
            and claims.get("iss") == self.apple.team_id
            and claims.get("sub") == self.client_id
            and claims.get("aud") == self.issuer
            and isinstance(claims.get("exp"), int)
            and now < claims["exp"] <= now + 15777000
            and claims.get("iat", now + 1) <= now + 5
        )

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.token_requests.append(form)

        def refuse(error: str, why: str) -> web.Response:
            self.token_errors.append(why)
            return web.json_response({"error": error}, status=400)

        if not self._client_ok(form):
            return refuse("invalid_client", "client authentication")
        grant = self.codes.pop(form.get("code", ""), None)  # single use
        if form.get("grant_type") != "authorization_code" or grant is None:
            return refuse("invalid_grant", "unknown or used code")
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return refuse("invalid_grant", "redirect_uri")
        digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        if base64.urlsafe_b64encode(digest).decode().rstrip("=") != grant["challenge"]:
            return refuse("invalid_grant", "pkce")
        return web.json_response(
            {
                "access_token": secrets.token_urlsafe(16),
                "token_type": "Bearer",
                "expires_in": 3600,
                "id_token": self.id_token(grant["nonce"]),
            }
        )


@contextlib.asynccontextmanager
async def stand_in_idp(**kwargs: Any) -> AsyncIterator[StandInIdp]:
    idp = await StandInIdp(**kwargs).start()
    try:
        yield idp
    finally:
        await idp.stop()


@contextlib.contextmanager
def mock_provider(**options: Any) -> Iterator[str]:
    """``oidc-provider-mock`` on 127.0.0.1 in a thread; yields its issuer URL."""
    import oidc_provider_mock
    import werkzeug.serving

    server = werkzeug.serving.make_server(
        "127.0.0.1", 0, oidc_provider_mock.app(**options), threaded=True
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


# ------------------------------------------------------------------ walking

_FORM = re.compile(r'<form method="post" action="([^"]+)">(.*?)</form>', re.S)
_FIELD = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


@dataclass
class Walk:
    """Where a walk ended, and every URL it passed."""

    status: int
    url: URL
    text: str
    visited: list[URL]


async def walk(
    session: aiohttp.ClientSession,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    limit: int = 12,
    stop: Callable[[URL], bool] | None = None,
) -> Walk:
    """GET ``url`` and follow 3xx and ``form_post`` pages until a page is shown."""
    visited: list[URL] = []
    target, method, data = URL(url), "GET", None
    plain = aiohttp.ClientSession(connector=session.connector, connector_owner=False)
    try:
        for _ in range(limit):
            visited.append(target)
            if stop is not None and stop(target):
                return Walk(0, target, "", visited)
            if method == "POST":
                # A cross-site form POST: Lax cookies stay home (see the module docstring).
                origin = f"{visited[-2].scheme}://{visited[-2].raw_authority}"
                request = plain.post(
                    target, data=data, headers={"Origin": origin}, allow_redirects=False
                )
            else:
                request = session.get(target, headers=headers, allow_redirects=False)
            async with request as response:
                text = await response.text()
                if response.status in (301, 302, 303, 307, 308):
                    target = response.url.join(URL(response.headers["Location"]))
                    method, data = "GET", None
                    continue
                form = _FORM.search(text) if response.status == 200 else None
                if form is not None and "/signin/oidc/" in form.group(1):
                    target = URL(html.unescape(form.group(1)))
                    data = {k: html.unescape(v) for k, v in _FIELD.findall(form.group(2))}
                    method = "POST"
                    continue
                return Walk(response.status, response.url, text, visited)
    finally:
        await plain.close()
    raise AssertionError(f"no page after {limit} steps: {visited}")
