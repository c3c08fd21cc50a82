"""Ed25519 identity keys: file handling, text form, pinning."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from homeport.keys import (
    InsecureKeyFileError,
    KeyFileError,
    b64url_decode,
    b64url_encode,
    key_id,
    load_or_create_private_key,
    parse_pinned_keys,
    parse_public_key,
    public_key_raw,
    public_key_text,
    read_secret_file,
    write_secret_file,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    # Creation must not depend on the caller's umask being strict.
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


# -- key files ------------------------------------------------------------------


@pytest.mark.usefixtures("permissive_umask")
def test_created_key_is_0600_pkcs8_in_0700_dir(tmp_path: Path) -> None:
    path = tmp_path / "state" / "addon.key"
    key = load_or_create_private_key(path)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    again = load_or_create_private_key(path)
    assert _raw(again) == _raw(key)


def test_existing_directory_mode_is_left_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    load_or_create_private_key(tmp_path / "k.pem")
    assert _mode(tmp_path) == 0o755


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_refuses_key_file_other_users_can_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "addon.key"
    load_or_create_private_key(path)
    secret = path.read_bytes()
    path.chmod(mode)
    with pytest.raises(InsecureKeyFileError, match="chmod 600") as caught:
        load_or_create_private_key(path)
    assert secret.decode() not in str(caught.value)
    assert path.read_bytes() == secret  # refused, not "repaired" by replacing the key


def test_refuses_symlinked_key_file(tmp_path: Path) -> None:
    target = tmp_path / "real.key"
    load_or_create_private_key(target)
    link = tmp_path / "link.key"
    link.symlink_to(target)
    with pytest.raises(KeyFileError):
        load_or_create_private_key(link)


def test_refuses_garbage_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "addon.key"
    write_secret_file(path, b"supersecret-not-a-pem")
    with pytest.raises(KeyFileError) as caught:
        load_or_create_private_key(path)
    assert "supersecret" not in str(caught.value)


def test_refuses_non_ed25519_key(tmp_path: Path) -> None:
    path = tmp_path / "ec.key"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_secret_file(path, pem)
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_or_create_private_key(path)


def test_refuses_encrypted_key(tmp_path: Path) -> None:
    path = tmp_path / "enc.key"
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    write_secret_file(path, pem)
    with pytest.raises(KeyFileError):
        load_or_create_private_key(path)


def test_write_secret_file_never_clobbers_without_replace(tmp_path: Path) -> None:
    path = tmp_path / "s"
    write_secret_file(path, b"one")
    with pytest.raises(FileExistsError):
        write_secret_file(path, b"two")
    assert read_secret_file(path) == b"one"
    write_secret_file(path, b"three", replace=True)
    assert read_secret_file(path) == b"three"
    assert _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_read_secret_file_refuses_directories(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError):
        read_secret_file(tmp_path)


# -- text form ------------------------------------------------------------------


def test_public_key_text_round_trip() -> None:
    pub = Ed25519PrivateKey.generate().public_key()
    text = public_key_text(pub)
    assert text.startswith("ed25519:")
    assert len(text) == len("ed25519:") + 43
    assert "=" not in text
    assert public_key_raw(parse_public_key(text)) == public_key_raw(pub)
    assert public_key_raw(parse_public_key(f"  {text}\n")) == public_key_raw(pub)


def _body(text: str) -> str:
    return text.removeprefix("ed25519:")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.replace("ed25519:", "ED25519:"),
        lambda t: t.replace("ed25519:", "x25519:"),
        lambda t: _body(t),  # no prefix
        lambda t: t + "=",  # padding
        lambda t: t[:-1],  # 31.x bytes
        lambda t: t + "A",  # too long
        lambda t: t[:-2] + "+/",  # standard base64 alphabet
        lambda t: t[:-1] + "!",
        lambda t: t[:20] + " " + t[20:],
        lambda t: "ed25519:" + b64url_encode(b"\x00" * 33),
        lambda t: "",
    ],
)
def test_parse_public_key_is_strict(mangle: object) -> None:
    text = public_key_text(Ed25519PrivateKey.generate().public_key())
    assert callable(mangle)
    with pytest.raises(ValueError, match=r"public key"):
        parse_public_key(mangle(text))


def test_parse_public_key_rejects_non_canonical_trailing_bits() -> None:
    # 32 bytes use 256 of the 258 bits in 43 characters: the last character
    # has two spare bits, which must be zero so each key has one spelling.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    text = public_key_text(Ed25519PrivateKey.generate().public_key())
    last = alphabet.index(text[-1])
    assert last & 3 == 0
    with pytest.raises(ValueError, match="non-canonical"):
        parse_public_key(text[:-1] + alphabet[last | 1])


def test_b64url_decode_exact_length() -> None:
    data = os.urandom(32)
    assert b64url_decode(b64url_encode(data), length=32) == data
    with pytest.raises(ValueError, match="31 bytes"):
        b64url_decode(b64url_encode(data), length=31)
    with pytest.raises(ValueError, match="32 bytes"):
        b64url_decode(b64url_encode(data) + "=", length=32)


def test_parse_pinned_keys_accepts_separated_set_and_dedupes() -> None:
    a, b = (public_key_text(Ed25519PrivateKey.generate().public_key()) for _ in range(2))
    keys = parse_pinned_keys(f" {a},{b}\n {a} ,\t")
    assert [public_key_text(k) for k in keys] == [a, b]


@pytest.mark.parametrize("text", ["", " , \n", "ed25519:nope"])
def test_parse_pinned_keys_rejects_empty_or_bad(text: str) -> None:
    with pytest.raises(ValueError, match=r"pinned key|no pinned keys"):
        parse_pinned_keys(text)


def test_parse_pinned_keys_names_the_bad_entry() -> None:
    good = public_key_text(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(ValueError, match="#2"):
        parse_pinned_keys(f"{good} {good[:-1]}")


def test_key_id_is_sha256_prefix() -> None:
    pub = Ed25519PrivateKey.generate().public_key()
    assert key_id(pub) == hashlib.sha256(public_key_raw(pub)).hexdigest()[:16]
    assert key_id(pub) != key_id(Ed25519PrivateKey.generate().public_key())
