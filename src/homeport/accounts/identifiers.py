"""Pure helpers for the identifiers, secrets and user input the service handles.

Everything random here comes from :mod:`secrets` (the OS CSPRNG).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import unicodedata
from typing import Final

from homeport.accounts.errors import InvalidEmail, LinkCodeInvalid
from homeport.accounts.models import EMAIL_MAX

__all__ = [
    "LINK_CODE_ALPHABET",
    "LINK_CODE_LENGTH",
    "canonical_public_key",
    "format_link_code",
    "is_instance_id",
    "new_instance_id",
    "new_link_code",
    "new_token",
    "normalise_email",
    "normalise_link_code",
    "public_key_text",
    "sha256_hex",
]

PUBLIC_KEY_PREFIX: Final = "ed25519:"
_B64URL_32_BYTES = re.compile(r"[A-Za-z0-9_-]{43}=?")
_INSTANCE_ID = re.compile(r"[a-z2-7]{26}")

# Crockford's base32 alphabet: digits and upper-case letters without I, L, O
# and U, so a code read aloud or copied from a screen is not ambiguous.
LINK_CODE_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
LINK_CODE_LENGTH: Final = 10  # 50 bits
# Crockford decoding of look-alikes: what people type for 0 and 1.
_LOOKALIKES: Final = str.maketrans({"O": "0", "I": "1", "L": "1"})
_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u2212]+")

TOKEN_BYTES: Final = 32


def sha256_hex(text: str) -> str:
    """SHA-256 of the UTF-8 text, hex: how tokens and codes are stored.

    A plain hash (no salt, no stretching) is enough for 256-bit tokens and
    for codes that live 60 s / 10 min: a database reader cannot reverse it
    within the code's lifetime, and lookups stay a single index probe.
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A 256-bit random bearer token, base64url without padding (43 chars)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def new_instance_id() -> str:
    """A tenant host label: 128 random bits, lower-case base32, 26 chars.

    Unguessable, so tenant hosts cannot be enumerated, and a valid DNS label.
    """
    raw = secrets.token_bytes(16)
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


#: Characters of a host label that choose its node in a cluster (HAProxy hashes only
#: these, ``cluster_local/haproxy.py``): an app link's label starts with its home's
#: first characters, so both names land on the node holding the home's tunnel.
ROUTING_PREFIX: Final = 8


def is_instance_id(text: str) -> bool:
    """Whether ``text`` has the shape of an instance id (cheap pre-check)."""
    return _INSTANCE_ID.fullmatch(text) is not None


def normalise_email(email: str) -> str:
    """NFKC, strip and case-fold an address; reject what cannot be one.

    One normal form per address stops duplicate accounts that differ only
    in case or Unicode form (and the account confusion that follows).
    """
    if len(email) > EMAIL_MAX:
        raise InvalidEmail("Email address is too long.")
    normal = unicodedata.normalize("NFKC", email).strip().casefold()
    local, at, domain = normal.rpartition("@")
    if (
        not at
        or not local
        or not domain
        or len(normal) > 254
        or any(ch.isspace() or not ch.isprintable() for ch in normal)
        or domain.startswith(".")
        or domain.endswith(".")
        or "@" in domain
    ):
        raise InvalidEmail("Enter an email address like name@example.com.")
    return normal


def public_key_text(raw: bytes) -> str:
    """Canonical text form of a raw 32-byte Ed25519 public key."""
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return PUBLIC_KEY_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def canonical_public_key(text: str) -> str:
    """Validate ``ed25519:<base64url>`` and return its one canonical spelling.

    Stops one key being linked twice under two spellings (with and without
    padding, or with non-zero trailing bits), which would defeat the
    one-key-one-instance uniqueness rule. Raises :class:`ValueError`.
    """
    if not text.startswith(PUBLIC_KEY_PREFIX):
        raise ValueError("public key must start with 'ed25519:'")
    body = text[len(PUBLIC_KEY_PREFIX) :]
    if _B64URL_32_BYTES.fullmatch(body) is None:
        raise ValueError("public key must be 32 bytes in base64url")
    try:
        raw = base64.urlsafe_b64decode(body.rstrip("=") + "=")
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - regex guards this
        raise ValueError("public key is not valid base64url") from exc
    return public_key_text(raw)


def new_link_code() -> str:
    """A fresh link code in normal form (10 chars of :data:`LINK_CODE_ALPHABET`)."""
    return "".join(secrets.choice(LINK_CODE_ALPHABET) for _ in range(LINK_CODE_LENGTH))


def format_link_code(code: str) -> str:
    """``ABCDE12345`` → ``ABCDE-12345`` for display."""
    half = LINK_CODE_LENGTH // 2
    return f"{code[:half]}-{code[half:]}"


def normalise_link_code(typed: str) -> str:
    """Turn what a person typed into the code's normal form.

    Accepts lower case, spaces and dashes anywhere, and Crockford's
    look-alikes (O for 0, I and L for 1). Raises :class:`LinkCodeInvalid`
    if the result cannot be a code.
    """
    if len(typed) > 64:
        raise LinkCodeInvalid()
    text = _SEPARATORS.sub("", unicodedata.normalize("NFKC", typed)).upper()
    text = text.translate(_LOOKALIKES)
    if len(text) != LINK_CODE_LENGTH or any(ch not in LINK_CODE_ALPHABET for ch in text):
        raise LinkCodeInvalid()
    return text
