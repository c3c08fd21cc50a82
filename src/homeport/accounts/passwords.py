"""Password policy and Argon2id hashing.

Threats and what stops them:

* **Offline cracking of a stolen database** — passwords are stored only as
  Argon2id hashes (memory-hard, per-hash 16-byte random salt). Parameters:
  ``m = 47104 KiB`` (46 MiB), ``t = 2``, ``p = 1``: above the OWASP minimum
  (m = 19 MiB, t = 2, p = 1) and one of OWASP's recommended settings with an
  extra pass; it takes about 70 ms per hash on the development machine
  (measured: m=19456,t=2 → 18 ms; m=47104,t=2 → 69 ms; m=65536,t=2 →
  105 ms). Parameters live in each hash string, so they can be raised later
  and old hashes upgraded on the next successful login (:func:`needs_rehash`).
* **Guessable passwords** — a minimum of 15 code points (NIST SP 800-63B-4
  §3.1.1.2 for single-factor passwords). No composition rules, no maximum
  below 1024; common passwords, and common words with trivial changes, are
  refused (:mod:`homeport.accounts.blocklist`).
* **Denial of service through huge passwords or hash floods** — input is
  capped at 1024 characters before any normalisation or hashing, and async
  callers hash on a dedicated, bounded thread pool so a login flood can
  neither block the event loop nor exhaust memory (each hash holds 46 MiB
  while it runs).
* **Unicode ambiguity** — the same passphrase typed on two keyboards may
  arrive in different Unicode forms; NFKC normalisation makes them hash the
  same. Length is counted in code points after normalisation.
"""

from __future__ import annotations

import asyncio
import os
import unicodedata
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from homeport.accounts.blocklist import blocked_reason

__all__ = [
    "ARGON2_MEMORY_COST_KIB",
    "ARGON2_PARALLELISM",
    "ARGON2_TIME_COST",
    "MAX_PASSWORD_CHARS",
    "MIN_PASSWORD_CHARS",
    "PasswordPolicyError",
    "check_new_password",
    "hash_password",
    "hash_password_async",
    "needs_rehash",
    "normalise_password",
    "verify_password",
    "verify_password_async",
]

MIN_PASSWORD_CHARS: Final = 15
MAX_PASSWORD_CHARS: Final = 1024

ARGON2_MEMORY_COST_KIB: Final = 47104
ARGON2_TIME_COST: Final = 2
ARGON2_PARALLELISM: Final = 1

_HASHER: Final = PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_COST_KIB,
    parallelism=ARGON2_PARALLELISM,
    hash_len=32,
    salt_len=16,
    type=Type.ID,
)

# Bounded pool for the CPU- and memory-heavy work. ``asyncio.to_thread``
# would use the loop's default executor (up to 32 threads, shared with DNS
# lookups and file I/O); a flood of logins there would hold 32 x 46 MiB and
# starve everything else that needs a thread.
_HASH_WORKERS: Final = max(1, min(4, os.cpu_count() or 1))
_EXECUTOR: Final = ThreadPoolExecutor(max_workers=_HASH_WORKERS, thread_name_prefix="argon2")

_T = TypeVar("_T")


class PasswordPolicyError(ValueError):
    """A new password does not meet the policy; ``str(exc)`` is the reason."""


def normalise_password(password: str) -> str:
    """Return the NFKC form of ``password`` that is hashed and measured.

    Raises :class:`ValueError` for input longer than
    :data:`MAX_PASSWORD_CHARS` *before* normalising, so oversized input
    costs nothing.
    """
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValueError(f"password longer than {MAX_PASSWORD_CHARS} characters")
    return unicodedata.normalize("NFKC", password)


def check_new_password(password: str, *, context: Iterable[str] = ()) -> None:
    """Check a password being set or changed against the policy.

    Stops weak passwords: fewer than 15 code points (after NFKC) are
    refused, as is a password containing one of the ``context`` words
    (pass the account's email address; its local part is checked too).
    Raises :class:`PasswordPolicyError` with a reason that can be shown to
    the user.
    """
    if len(password) > MAX_PASSWORD_CHARS:
        raise PasswordPolicyError(f"Use at most {MAX_PASSWORD_CHARS} characters.")
    normalised = normalise_password(password)
    if len(normalised) < MIN_PASSWORD_CHARS:
        raise PasswordPolicyError(
            f"Use at least {MIN_PASSWORD_CHARS} characters; a few words make a good passphrase."
        )
    reason = blocked_reason(normalised)
    if reason is not None:
        raise PasswordPolicyError(reason)
    folded = normalised.casefold()
    for word in context:
        candidates = {word.casefold()}
        if "@" in word:
            candidates.add(word.casefold().rpartition("@")[0])
        for candidate in candidates:
            if len(candidate) >= 4 and candidate in folded:
                raise PasswordPolicyError("Do not use your email address in your password.")


def hash_password(password: str) -> str:
    """Hash a password with Argon2id (blocking, ~70 ms; see the module docs).

    Raises :class:`ValueError` for input over 1024 characters.
    """
    return _HASHER.hash(normalise_password(password))


def verify_password(password_hash: str, password: str) -> bool:
    """Return whether ``password`` matches ``password_hash`` (blocking).

    Never raises for a wrong, oversized or malformed input: every failure
    is ``False``. An oversized password is rejected without hashing; callers
    that must not leak timing (login) check the length themselves first.
    """
    if len(password) > MAX_PASSWORD_CHARS:
        return False
    try:
        return _HASHER.verify(password_hash, normalise_password(password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Return whether a stored hash uses other parameters than the current ones."""
    try:
        return _HASHER.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


async def _run(func: Callable[..., _T], *args: str) -> _T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_EXECUTOR, func, *args)


async def hash_password_async(password: str) -> str:
    """:func:`hash_password` on the bounded hashing pool (event loop stays free)."""
    return await _run(hash_password, password)


async def verify_password_async(password_hash: str, password: str) -> bool:
    """:func:`verify_password` on the bounded hashing pool (event loop stays free)."""
    return await _run(verify_password, password_hash, password)
