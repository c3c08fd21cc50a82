"""Ed25519 identity keys: the relay's server key and each add-on's own key.

The relay proves itself with its server key (add-ons pin its public half);
each add-on authenticates with its own key, so the relay stores public keys
only and no bearer secret ever crosses the wire.

Text form of a public key, used for pinning, printing and storage::

    ed25519:<base64url, no padding, of the 32 raw bytes>

Private keys live in PEM PKCS#8 files readable by their owner only.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = [
    "PUBLIC_KEY_PREFIX",
    "InsecureKeyFileError",
    "KeyFileError",
    "b64url_decode",
    "b64url_encode",
    "key_id",
    "load_or_create_private_key",
    "parse_pinned_keys",
    "parse_public_key",
    "public_key_raw",
    "public_key_text",
    "read_secret_file",
    "write_secret_file",
]

PUBLIC_KEY_PREFIX = "ed25519:"
RAW_PUBLIC_KEY_SIZE = 32
MAX_SECRET_FILE_SIZE = 64 * 1024

_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")
_PINNED_SEPARATOR_RE = re.compile(r"[,\s]+")
# Permission bits nobody but the owner may hold on a secret file.
_FOREIGN_ACCESS_BITS = stat.S_IRWXG | stat.S_IRWXO


class KeyFileError(Exception):
    """A key file is missing, unreadable, or does not hold the expected key."""


class InsecureKeyFileError(KeyFileError):
    """A secret file grants access to users other than its owner.

    Stops key theft (or key substitution) by other local users: we refuse to
    use a key that someone else may already have copied or replaced.
    """


# -- strict base64url -------------------------------------------------------


def b64url_encode(data: bytes) -> str:
    """Encode as base64url without padding (RFC 4648 §5)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, *, length: int) -> bytes:
    """Decode unpadded base64url that must yield exactly ``length`` bytes.

    Strict on purpose: no padding, no whitespace, no foreign characters and
    only the canonical encoding (unused trailing bits zero), so one value has
    exactly one spelling and nothing smuggles through a lenient decoder.
    """
    if not isinstance(text, str):
        raise ValueError("expected base64url text")
    if len(text) != (length * 4 + 2) // 3 or not _B64URL_RE.fullmatch(text):
        raise ValueError(f"expected {length} bytes as unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - regex guards it
        raise ValueError("invalid base64url") from exc
    if len(data) != length or b64url_encode(data) != text:
        raise ValueError("non-canonical base64url")
    return data


# -- public keys --------------------------------------------------------------


def public_key_raw(pub: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(pub: Ed25519PublicKey) -> str:
    """Text form for pinning and printing: ``ed25519:<base64url>``."""
    return PUBLIC_KEY_PREFIX + b64url_encode(public_key_raw(pub))


def parse_public_key(text: str) -> Ed25519PublicKey:
    """Parse the text form made by :func:`public_key_text`.

    Surrounding whitespace is ignored; anything else that is not exactly
    ``ed25519:`` plus 43 canonical base64url characters raises ``ValueError``.
    """
    if not isinstance(text, str):
        raise ValueError("public key must be text")
    text = text.strip()
    if not text.startswith(PUBLIC_KEY_PREFIX):
        raise ValueError(f"public key must start with {PUBLIC_KEY_PREFIX!r}")
    try:
        raw = b64url_decode(text[len(PUBLIC_KEY_PREFIX) :], length=RAW_PUBLIC_KEY_SIZE)
    except ValueError as exc:
        raise ValueError(f"malformed Ed25519 public key: {exc}") from None
    return Ed25519PublicKey.from_public_bytes(raw)


def parse_pinned_keys(text: str) -> list[Ed25519PublicKey]:
    """Parse a comma and/or whitespace separated set of pinned public keys.

    A set, so the relay key can rotate: pin current + next, ship an add-on
    update that drops the old one. Duplicates collapse; an empty set is an
    error (pinning nothing would trust nothing, which is never intended).
    """
    keys: list[Ed25519PublicKey] = []
    seen: set[bytes] = set()
    for position, item in enumerate(p for p in _PINNED_SEPARATOR_RE.split(text) if p):
        try:
            key = parse_public_key(item)
        except ValueError as exc:
            raise ValueError(f"pinned key #{position + 1}: {exc}") from None
        raw = public_key_raw(key)
        if raw not in seen:
            seen.add(raw)
            keys.append(key)
    if not keys:
        raise ValueError("no pinned keys given")
    return keys


def key_id(pub: Ed25519PublicKey) -> str:
    """Short public identifier of a key: first 16 hex chars of SHA-256(raw)."""
    return hashlib.sha256(public_key_raw(pub)).hexdigest()[:16]


# -- secret files ---------------------------------------------------------------


def read_secret_file(path: Path) -> bytes:
    """Read a secret file, refusing one that other users could read or write.

    Opened without following symlinks and checked on the open descriptor, so
    the file checked is the file read. Raises :class:`InsecureKeyFileError`
    on group/world permission bits (threat: key theft or substitution by
    another local user), :class:`KeyFileError` on anything else unusable;
    ``FileNotFoundError`` passes through so callers can create the file.
    """
    # O_NONBLOCK: a FIFO planted at the path must not hang us in open().
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise KeyFileError(f"cannot open secret file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"secret file {path} is not a regular file")
        if info.st_mode & _FOREIGN_ACCESS_BITS:
            raise InsecureKeyFileError(
                f"secret file {path} has mode {stat.S_IMODE(info.st_mode):04o}; other users "
                f"may have read it. Run `chmod 600 {path}` (and consider the key "
                "compromised if anyone else had access)"
            )
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_SECRET_FILE_SIZE + 1)
    if len(data) > MAX_SECRET_FILE_SIZE:
        raise KeyFileError(f"secret file {path} is too large")
    return data


def write_secret_file(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600 from the first byte.

    The bytes go to a fresh temporary file (``O_CREAT|O_EXCL``, 0600, so no
    window where another user can open it), are fsynced, then appear under
    ``path`` in one step: a crash never leaves a half-written key. Without
    ``replace`` an existing file is never overwritten (``FileExistsError``),
    so two processes racing to create a key cannot silently swap identities.
    A missing parent directory is created with mode 0700.
    """
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic and fails if path exists, unlike rename
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    # Makes the new directory entry durable; not possible on every platform.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# -- private keys -------------------------------------------------------------


def load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    """Load the Ed25519 private key at ``path``, creating it on first use.

    The file is PEM PKCS#8, unencrypted (it is protected by file permissions;
    a passphrase would have to sit beside it for an unattended service). It
    is created atomically with mode 0600 in a directory created 0700, and an
    existing file readable by group or others is refused
    (:class:`InsecureKeyFileError`) - threat: key theft by other local users.
    """
    try:
        data = read_secret_file(path)
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            write_secret_file(path, pem)
        except FileExistsError:
            # Another process created it first: use theirs, one identity only.
            data = read_secret_file(path)
        else:
            return key
    return _parse_private_key(data, path)


def _parse_private_key(data: bytes, path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # Never echo the file content: it is (or resembles) a secret.
        raise KeyFileError(f"{path} is not an unencrypted PEM PKCS#8 private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key
