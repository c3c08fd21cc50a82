"""Password policy and Argon2id hashing (R-PWD-01, R-PWD-04)."""

from __future__ import annotations

import asyncio
import re
import time
import unicodedata

import pytest
from argon2 import PasswordHasher

from homeport.accounts.passwords import (
    PasswordPolicyError,
    check_new_password,
    hash_password,
    hash_password_async,
    needs_rehash,
    verify_password,
    verify_password_async,
)


def test_hash_is_argon2id_with_at_least_owasp_parameters() -> None:
    encoded = hash_password("a perfectly fine passphrase")
    match = re.fullmatch(r"\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$[^$]+\$[^$]+", encoded)
    assert match is not None, encoded
    memory, time_cost, parallelism = map(int, match.groups())
    assert memory >= 19456
    assert time_cost >= 2
    assert parallelism == 1


def test_hashes_are_salted() -> None:
    assert hash_password("the same passphrase!") != hash_password("the same passphrase!")


def test_verify_right_and_wrong() -> None:
    encoded = hash_password("a perfectly fine passphrase")
    assert verify_password(encoded, "a perfectly fine passphrase")
    assert not verify_password(encoded, "a perfectly fine passphrasE")
    assert not verify_password("not a hash", "a perfectly fine passphrase")


def test_minimum_length_is_15_code_points() -> None:
    with pytest.raises(PasswordPolicyError, match="at least 15"):
        check_new_password("x" * 14)
    check_new_password("x" * 15)


def test_length_counts_code_points_not_bytes() -> None:
    with pytest.raises(PasswordPolicyError):
        check_new_password("🏠" * 14)  # 56 UTF-8 bytes, still 14 characters
    check_new_password("🏠" * 15)


def test_over_1024_characters_rejected() -> None:
    check_new_password("y" * 1024)
    with pytest.raises(PasswordPolicyError):
        check_new_password("y" * 1025)
    with pytest.raises(ValueError, match="1024"):
        hash_password("y" * 1025)
    encoded = hash_password("y" * 1024)
    assert not verify_password(encoded, "y" * 1025)


def test_long_password_is_not_truncated() -> None:
    password = "z" * 1000
    encoded = hash_password(password)
    assert verify_password(encoded, password)
    assert not verify_password(encoded, password[:-1] + "Z")
    assert not verify_password(encoded, password[:72])


def test_unicode_passphrase_nfkc() -> None:
    passphrase = "Çà et là, 日本語のパスフレーズ 🔐"
    check_new_password(passphrase)
    encoded = hash_password(unicodedata.normalize("NFC", passphrase))
    # Another keyboard may send the decomposed form: same password.
    assert verify_password(encoded, unicodedata.normalize("NFD", passphrase))
    # Compatibility forms fold too (full-width letters, ligatures).
    ligature = hash_password("ﬁsh and chips forever")
    assert verify_password(ligature, "fish and chips forever")
    assert not verify_password(encoded, "Ca et la, 日本語のパスフレーズ 🔐")


def test_email_in_password_rejected() -> None:
    with pytest.raises(PasswordPolicyError, match="email"):
        check_new_password("alice.smith@example.com!!", context=["alice.smith@example.com"])
    with pytest.raises(PasswordPolicyError, match="email"):
        check_new_password("my name is ALICE.SMITH ok", context=["alice.smith@example.com"])
    check_new_password("a passphrase unrelated to me", context=["alice.smith@example.com"])


def test_needs_rehash_for_weaker_parameters() -> None:
    weak = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1).hash("whatever it is!!")
    assert needs_rehash(weak)
    assert not needs_rehash(hash_password("whatever it is!!"))
    assert needs_rehash("garbage")


async def test_async_hashing_keeps_event_loop_responsive() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    encoded = await hash_password_async("a perfectly fine passphrase")
    assert await verify_password_async(encoded, "a perfectly fine passphrase")
    elapsed = time.perf_counter() - started
    task.cancel()
    # The loop kept running while two hashes were computed off-loop.
    assert ticks >= max(1, int(elapsed / 0.005) // 4)
