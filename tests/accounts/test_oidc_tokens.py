"""ID-token checks (R-OIDC-02): every rule has a token that breaks only it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, RSAKey

from homeport.accounts.oidc_tokens import (
    IdTokenError,
    is_private_relay_email,
    read_email_verified,
    unverified_kid,
    verify_id_token,
)

ISSUER = "https://idp.example"
CLIENT = "homeport-client"
NONCE = "n-0123456789abcdef"
RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa1"})
EC = ECKey.generate_key("P-256", parameters={"kid": "ec1"})
OTHER = RSAKey.generate_key(2048, parameters={"kid": "rsa1"})  # same kid, other key
PUBLIC = KeySet.import_key_set(KeySet([RSA, EC]).as_dict(private=False))


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": CLIENT,
        "iat": now,
        "exp": now + 300,
        "nonce": NONCE,
        "email": "a@example.com",
        "email_verified": True,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(claims: dict[str, Any], key: Any = RSA, alg: str = "RS256", kid: str = "rsa1") -> str:
    return jwt.encode({"alg": alg, "kid": kid}, claims, key, algorithms=[alg])


def _verify(token: str, **kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "issuers": (ISSUER,),
        "client_id": CLIENT,
        "nonce_hash": hashlib.sha256(NONCE.encode()).hexdigest(),
        "now": int(time.time()),
    }
    options.update(kwargs)
    return verify_id_token(token, PUBLIC, **options)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def test_good_rs256_and_es256_tokens_pass() -> None:
    identity = _verify(_sign(_claims()))
    assert (identity.issuer, identity.subject) == (ISSUER, "user-1")
    assert identity.email == "a@example.com"
    assert identity.email_verified is True
    assert _verify(_sign(_claims(), EC, "ES256", "ec1")).subject == "user-1"


def test_google_alternative_issuer_spelling_is_stored_as_the_pinned_one() -> None:
    token = _sign(_claims(iss="accounts.google.com"))
    identity = _verify(token, issuers=("https://accounts.google.com", "accounts.google.com"))
    assert identity.issuer == "https://accounts.google.com"
    with pytest.raises(IdTokenError):
        _verify(token, issuers=("https://accounts.google.com",))


@pytest.mark.parametrize(
    ("name", "claims"),
    [
        ("wrong aud", _claims(aud="someone-else")),
        ("wrong iss", _claims(iss="https://evil.example")),
        ("iss with a trailing slash", _claims(iss=ISSUER + "/")),
        ("expired", _claims(exp=int(time.time()) - 120)),
        ("no exp", _claims(exp=None)),
        ("no iat", _claims(iat=None)),
        ("issued in the future", _claims(iat=int(time.time()) + 600)),
        ("issued too long ago", _claims(iat=int(time.time()) - 3600, exp=int(time.time()) + 60)),
        ("nonce mismatch", _claims(nonce="another-nonce")),
        ("no nonce", _claims(nonce=None)),
        ("no sub", _claims(sub=None)),
        ("several audiences, no azp", _claims(aud=[CLIENT, "other"])),
        ("azp of another client", _claims(aud=[CLIENT, "other"], azp="other")),
    ],
)
def test_claim_checks(name: str, claims: dict[str, Any]) -> None:
    with pytest.raises(IdTokenError):
        _verify(_sign(claims))


def test_several_audiences_with_our_azp_pass() -> None:
    assert _verify(_sign(_claims(aud=[CLIENT, "other"], azp=CLIENT))).subject == "user-1"


def test_skew_of_under_a_minute_is_tolerated() -> None:
    now = int(time.time())
    assert _verify(_sign(_claims(exp=now - 30, iat=now - 200))).subject == "user-1"
    assert _verify(_sign(_claims(iat=now + 30))).subject == "user-1"


def test_alg_none_is_refused() -> None:
    header = _b64(json.dumps({"alg": "none", "kid": "rsa1"}).encode())
    body = _b64(json.dumps(_claims()).encode())
    with pytest.raises(IdTokenError):
        _verify(f"{header}.{body}.")


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    """Key confusion: the RSA public key (as published) used as an HMAC secret."""
    public_pem = RSA.as_pem(private=False)
    header = _b64(json.dumps({"alg": "HS256", "kid": "rsa1", "typ": "JWT"}).encode())
    body = _b64(json.dumps(_claims()).encode())
    mac = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    with pytest.raises(IdTokenError):
        _verify(f"{header}.{body}.{_b64(mac)}")
    # HS256 is off the allowlist even if a JWKS carried a symmetric key.
    oct_key = OctKey.generate_key(256, parameters={"kid": "oct"})
    token = _sign(_claims(), oct_key, "HS256", "oct")
    keys = KeySet([*PUBLIC.keys, oct_key])
    with pytest.raises(IdTokenError):
        verify_id_token(
            token,
            keys,
            issuers=(ISSUER,),
            client_id=CLIENT,
            nonce_hash=hashlib.sha256(NONCE.encode()).hexdigest(),
            now=int(time.time()),
        )


def test_bad_signature_is_refused() -> None:
    with pytest.raises(IdTokenError):
        _verify(_sign(_claims(), OTHER))  # right kid, wrong key
    token = _sign(_claims())
    head, _body, sig = token.split(".")
    tampered = _b64(json.dumps(_claims(sub="admin")).encode())
    with pytest.raises(IdTokenError):
        _verify(f"{head}.{tampered}.{sig}")


def test_unknown_kid_is_refused() -> None:
    stranger = RSAKey.generate_key(2048, parameters={"kid": "stranger"})
    token = _sign(_claims(), stranger, kid="stranger")
    assert unverified_kid(token) == "stranger"
    with pytest.raises(IdTokenError):
        _verify(token)


@pytest.mark.parametrize("junk", ["", "a.b", "not a token", "x" * 20000, "....", "e30.e30.e30"])
def test_garbage_is_refused(junk: str) -> None:
    with pytest.raises(IdTokenError):
        _verify(junk)
    assert unverified_kid(junk) is None or isinstance(unverified_kid(junk), str)


def test_email_verified_strings_and_private_relay() -> None:
    for value in (True, "true", "TRUE"):
        assert read_email_verified(value)
    for value in (False, "false", "", None, 1, "yes"):
        assert not read_email_verified(value)
    relay = "abc123@privaterelay.appleid.com"
    identity = _verify(_sign(_claims(email=relay, email_verified="true")))
    assert identity.email_verified
    assert is_private_relay_email(identity.email)
    assert not _verify(_sign(_claims(email_verified="false"))).email_verified
    assert not is_private_relay_email("me@example.com")


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(st.text(max_size=60), st.binary(max_size=60).map(_b64)), min_size=1, max_size=4
    )
)
def test_any_junk_gives_id_token_error_and_nothing_else(parts: list[str]) -> None:
    token = ".".join(parts)
    with pytest.raises(IdTokenError):
        _verify(token)
    kid = unverified_kid(token)
    assert kid is None or isinstance(kid, str)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=4))
def test_any_header_on_a_signed_token_gives_id_token_error_and_nothing_else(
    header: dict[str, object],
) -> None:
    head = _b64(json.dumps(header).encode())
    _h, body, sig = _sign(_claims()).split(".")
    with pytest.raises(IdTokenError):
        _verify(f"{head}.{body}.{sig}")
