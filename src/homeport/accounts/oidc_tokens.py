"""Strict checks of an OpenID Connect ID token (R-OIDC-02), with joserfc.

Threats this stops:

* **Forged tokens**: the signature must verify with a key from the provider's
  JWKS, chosen by ``kid``; the algorithm must be on :data:`ALLOWED_ALGORITHMS`
  (RS256, ES256), so ``alg: none`` and HS256 "signed" with the public key as
  an HMAC secret (the classic key-confusion attack) are refused before any
  key is used.
* **Tokens for someone else**: ``iss`` must equal the pinned issuer exactly,
  ``aud`` must contain our client id, and with several audiences ``azp`` must
  be our client id (OIDC Core 3.1.3.7).
* **Old or replayed tokens**: ``exp`` and ``iat`` are required with a 60 s skew,
  ``iat`` may not be older than the flow lifetime, and ``nonce`` must equal the
  flow's (compared as SHA-256 digests in constant time).
* **Unverified addresses**: ``email_verified`` is read strictly: ``true`` or
  Apple's string ``"true"``; anything else is "not verified".

``amr``/``acr`` are deliberately not read: Google does not promise them, and
our own second factor is asked for anyway (R-OIDC-05).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Final

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

__all__ = [
    "ALLOWED_ALGORITHMS",
    "LEEWAY_SECONDS",
    "MAX_AGE_SECONDS",
    "IdTokenError",
    "VerifiedIdentity",
    "is_private_relay_email",
    "read_email_verified",
    "unverified_kid",
    "verify_id_token",
]

ALLOWED_ALGORITHMS: Final = ("RS256", "ES256")
LEEWAY_SECONDS: Final = 60
#: An ID token is minted for this sign-in; one older than a flow can live is suspect.
MAX_AGE_SECONDS: Final = 10 * 60
MAX_TOKEN_CHARS: Final = 16 * 1024
_APPLE_RELAY_DOMAIN: Final = "privaterelay.appleid.com"


class IdTokenError(Exception):
    """The ID token failed a check; the message names the check, never the token."""


@dataclass(frozen=True, slots=True)
class VerifiedIdentity:
    issuer: str
    subject: str
    email: str | None
    email_verified: bool


def read_email_verified(value: object) -> bool:
    """``email_verified`` as a boolean: only ``true`` or the string ``"true"`` count (Apple)."""
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() == "true"


def is_private_relay_email(email: str) -> bool:
    """Apple's "Hide My Email" forwarding addresses (``…@privaterelay.appleid.com``)."""
    return email.rsplit("@", 1)[-1].lower() == _APPLE_RELAY_DOMAIN


def unverified_kid(token: str) -> str | None:
    """The ``kid`` the token's header names (unverified), to pick or refresh keys."""
    from joserfc.jws import extract_compact

    try:
        kid = extract_compact(token.encode("ascii")).headers().get("kid")
    except (JoseError, ValueError, UnicodeError):
        return None
    return kid if isinstance(kid, str) else None


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def verify_id_token(
    token: str,
    keys: KeySet,
    *,
    issuers: tuple[str, ...],
    client_id: str,
    nonce_hash: str,
    now: int,
) -> VerifiedIdentity:
    """Verify ``token`` and return who it names; :class:`IdTokenError` for any failure.

    ``issuers[0]`` is the pinned issuer (what the identity is stored under);
    further entries are other spellings the provider uses (Google).
    """
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise IdTokenError("missing or oversized ID token")
    try:
        decoded = jwt.decode(token, keys, algorithms=list(ALLOWED_ALGORITHMS))
    except JoseError as exc:
        raise IdTokenError(f"signature check failed: {type(exc).__name__}") from exc
    except ValueError as exc:  # malformed input below joserfc's own errors
        raise IdTokenError("malformed ID token") from exc
    if decoded.header.get("alg") not in ALLOWED_ALGORITHMS:  # belt and braces
        raise IdTokenError("algorithm not allowed")
    claims: dict[str, Any] = dict(decoded.claims)
    registry = jwt.JWTClaimsRegistry(
        now=now,
        leeway=LEEWAY_SECONDS,
        iss={"essential": True, "values": list(issuers)},
        sub={"essential": True},
        aud={"essential": True, "value": client_id},
        exp={"essential": True},
        iat={"essential": True},
        nonce={"essential": True},
    )
    try:
        registry.validate(claims)
    except JoseError as exc:
        raise IdTokenError(f"claim check failed: {exc}") from exc
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    azp = claims.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != client_id:
        raise IdTokenError("claim check failed: azp is not our client id")
    if claims["iat"] < now - MAX_AGE_SECONDS - LEEWAY_SECONDS:
        raise IdTokenError("claim check failed: the token was issued too long ago")
    nonce = claims["nonce"]
    if not isinstance(nonce, str) or not hmac.compare_digest(_digest(nonce), nonce_hash):
        raise IdTokenError("claim check failed: nonce does not match this sign-in")
    subject = claims["sub"]
    if not subject or len(subject) > 255:
        raise IdTokenError("claim check failed: bad subject")
    email = claims.get("email")
    return VerifiedIdentity(
        issuer=issuers[0],
        subject=subject,
        email=email if isinstance(email, str) and 0 < len(email) <= 320 else None,
        email_verified=read_email_verified(claims.get("email_verified")),
    )
