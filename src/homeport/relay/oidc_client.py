"""Talking to one OpenID provider: discovery, its keys, the authorization URL, the code.

Authlib's OAuth 2.0 client builds the authorization URL (with the PKCE S256
challenge) and redeems the code at the token endpoint; joserfc mints Apple's
client secret JWT. Threats this stops:

* **Provider mix-up / a swapped discovery document**: the document's
  ``issuer`` must equal the configured issuer exactly (OIDC Discovery 4.3),
  and every endpoint in it must be HTTPS (plain HTTP only on loopback, for
  test providers), so a document cannot point our code exchange elsewhere.
* **Key confusion and stale keys**: keys come only from the discovered
  ``jwks_uri``; an unknown ``kid`` refetches the set at most once per
  :data:`JWKS_REFRESH_SECONDS`, so forged ``kid`` values cannot make the relay
  hammer the provider.
* **Oversized or slow answers**: bodies are capped at :data:`MAX_BODY`, every
  request has a timeout and redirects are not followed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Final

import httpx2
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from homeport.relay.oidc_settings import OidcProvider, OidcSettingsError, check_provider_url

__all__ = [
    "JWKS_REFRESH_SECONDS",
    "METADATA_TTL_SECONDS",
    "ProviderClient",
    "ProviderError",
    "ProviderMetadata",
    "apple_client_secret",
]

_log = logging.getLogger(__name__)

MAX_BODY: Final = 256 * 1024
TIMEOUT: Final = httpx2.Timeout(10.0)
METADATA_TTL_SECONDS: Final = 3600.0
JWKS_REFRESH_SECONDS: Final = 60.0
#: Apple allows up to six months; one minted per token request needs only minutes.
APPLE_SECRET_LIFETIME: Final = 300


class ProviderError(Exception):
    """The provider could not be used (unreachable, wrong document, refused the code)."""


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


def apple_client_secret(provider: OidcProvider, now: int) -> str:
    """Apple's client secret: an ES256 JWT by our team, for our Services ID, to Apple."""
    if provider.apple is None:
        raise ProviderError("not an Apple provider")
    key = ECKey.import_key(provider.apple.private_key_pem)
    header = {"alg": "ES256", "kid": provider.apple.key_id}
    claims = {
        "iss": provider.apple.team_id,
        "iat": now,
        "exp": now + APPLE_SECRET_LIFETIME,
        "aud": provider.issuer,
        "sub": provider.client_id,
    }
    return jwt.encode(header, claims, key, algorithms=["ES256"])


async def _get_json(url: str) -> dict[str, Any]:
    try:
        async with (
            httpx2.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as http,
            http.stream("GET", url, headers={"Accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise ProviderError(f"{url} answered {response.status_code}")
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_BODY:
                    raise ProviderError(f"{url} sent too much")
    except httpx2.HTTPError as exc:
        raise ProviderError(f"{url} unreachable: {type(exc).__name__}") from exc
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise ProviderError(f"{url} sent no JSON") from exc
    if not isinstance(document, dict):
        raise ProviderError(f"{url} sent no JSON object")
    return document


class ProviderClient:
    """One provider's discovery document and keys (cached), and its code exchange."""

    def __init__(self, provider: OidcProvider) -> None:
        self.provider = provider
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None
        self._keys_at = 0.0
        self._lock = asyncio.Lock()

    async def metadata(self) -> ProviderMetadata:
        async with self._lock:
            if (
                self._metadata is None
                or time.monotonic() - self._metadata_at > METADATA_TTL_SECONDS
            ):
                self._metadata = await self._discover()
                self._metadata_at = time.monotonic()
            return self._metadata

    async def _discover(self) -> ProviderMetadata:
        document = await _get_json(self.provider.metadata_url)
        issuer = document.get("issuer")
        if issuer != self.provider.issuer:
            _log.warning("oidc.discovery_issuer_mismatch", extra={"provider": self.provider.name})
            raise ProviderError("the discovery document names another issuer")
        endpoints: dict[str, str] = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = document.get(name)
            if not isinstance(value, str):
                raise ProviderError(f"the discovery document has no {name}")
            try:
                check_provider_url(name, value)
            except OidcSettingsError as exc:
                raise ProviderError(str(exc)) from exc
            endpoints[name] = value
        return ProviderMetadata(issuer=issuer, **endpoints)

    async def keys(self, kid: str | None) -> KeySet:
        """The provider's keys; refetched when ``kid`` is unknown (rate limited)."""
        metadata = await self.metadata()
        async with self._lock:
            age = time.monotonic() - self._keys_at
            known = self._keys is not None and any(k.kid == kid for k in self._keys.keys)
            # Unknown kid: the provider may have rotated (bounded, see above). Known
            # keys are refreshed hourly too, so a key the provider withdrew stops working.
            if (
                self._keys is None
                or (not known and age >= JWKS_REFRESH_SECONDS)
                or age >= METADATA_TTL_SECONDS
            ):
                document = await _get_json(metadata.jwks_uri)
                try:
                    self._keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
                except (ValueError, TypeError, KeyError) as exc:
                    raise ProviderError("the provider's JWKS cannot be read") from exc
                self._keys_at = time.monotonic()
            return self._keys

    def _oauth(self, redirect_uri: str) -> AsyncOAuth2Client:
        provider = self.provider
        secret = provider.client_secret
        if provider.apple is not None:
            secret = apple_client_secret(provider, int(time.time()))
        return AsyncOAuth2Client(
            client_id=provider.client_id,
            client_secret=secret,
            scope=" ".join(provider.scopes),
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            # Apple accepts only the secret in the body; use it everywhere for one code path.
            token_endpoint_auth_method="client_secret_post",  # noqa: S106 (a method name)
            timeout=TIMEOUT,
            follow_redirects=False,
        )

    async def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, code_verifier: str
    ) -> str:
        metadata = await self.metadata()
        extra: dict[str, str] = {"nonce": nonce}
        if self.provider.response_mode != "query":
            extra["response_mode"] = self.provider.response_mode
        async with self._oauth(redirect_uri) as client:
            url, _state = client.create_authorization_url(
                metadata.authorization_endpoint, state=state, code_verifier=code_verifier, **extra
            )
        return str(url)

    async def exchange(self, *, code: str, code_verifier: str, redirect_uri: str) -> str:
        """Redeem ``code`` (with the PKCE verifier); the raw ID token."""
        metadata = await self.metadata()
        try:
            async with self._oauth(redirect_uri) as client:
                token = await client.fetch_token(
                    metadata.token_endpoint,
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=code_verifier,
                )
        except httpx2.HTTPError as exc:
            raise ProviderError(f"token endpoint unreachable: {type(exc).__name__}") from exc
        except Exception as exc:  # Authlib's OAuthError and JSON errors: refused code
            raise ProviderError(f"the provider refused the code: {type(exc).__name__}") from exc
        id_token = token.get("id_token") if isinstance(token, dict) else None
        if not isinstance(id_token, str):
            raise ProviderError("the token response has no ID token")
        return id_token
