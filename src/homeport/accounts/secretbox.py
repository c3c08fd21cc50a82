"""Encryption of secrets at rest (TOTP seeds) with a key kept outside the database.

Threat: a leaked database file or backup. Secrets the relay must read back
in clear (a TOTP seed cannot be hashed) are sealed with AES-256-GCM under a
256-bit key that lives in a separate file in the relay's data directory
(mode 0600), never in the database. The row's identity is the associated
data, so a sealed value copied into another row (another account) does not
open there.

Sealed format: ``b"\\x01" || 96-bit random nonce || ciphertext+tag``.
Losing or replacing the key file makes every sealed secret unreadable:
:class:`SecretBoxError` says so plainly instead of returning garbage.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KEY_FILE_NAME", "SecretBox", "SecretBoxError"]

KEY_FILE_NAME: Final = "secret-box.key"
_VERSION: Final = b"\x01"
_NONCE_LEN: Final = 12
_KEY_LEN: Final = 32


class SecretBoxError(Exception):
    """A sealed secret cannot be opened, or the key file is unusable."""


class SecretBox:
    """AES-256-GCM sealing with associated data; the key never touches the database."""

    def __init__(self, key: bytes) -> None:
        if len(key) != _KEY_LEN:
            raise SecretBoxError("the secret-box key must be 32 bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:  # never show the key
        return "SecretBox(<key hidden>)"

    @classmethod
    def load_or_create(cls, path: Path) -> SecretBox:
        """Read the key file, or create it (32 random bytes, mode 0600) if missing.

        Refuses a key file that others can read or that has the wrong size.
        """
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(_KEY_LEN))
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise SecretBoxError(f"key file {path} is readable by others (mode {mode:o})")
        key = path.read_bytes()
        if len(key) != _KEY_LEN:
            raise SecretBoxError(f"key file {path} does not hold a 32-byte key")
        return cls(key)

    def seal(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE_LEN)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, associated)

    def open(self, sealed: bytes, associated: bytes) -> bytes:
        if len(sealed) < 1 + _NONCE_LEN + 16 or sealed[:1] != _VERSION:
            raise SecretBoxError("sealed secret is malformed")
        nonce = sealed[1 : 1 + _NONCE_LEN]
        try:
            return self._aead.decrypt(nonce, sealed[1 + _NONCE_LEN :], associated)
        except InvalidTag as exc:
            raise SecretBoxError(
                "cannot decrypt a stored secret: wrong secret-box key file, "
                "or the data was altered or moved to another row"
            ) from exc
