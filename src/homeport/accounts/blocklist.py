"""The common-password blocklist (R-PWD-03, NIST SP 800-63B-4 §3.1.1.2).

Threat this stops: online guessing and credential stuffing with the
passwords everybody tries first. A long minimum length alone does not stop
"password1234567" or "qwertyuiop12345".

What is refused, with the reason shown to the person:

* a password in zxcvbn's list of the 30 000 most common passwords
  (``zxcvbn.frequency_lists.FREQUENCY_LISTS["passwords"]``, bundled with the
  package: no network, loaded once on first use);
* a password that is *only* a common password, a common English word (the
  30 000 most frequent on Wikipedia, same package) or the service's own name
  plus trivial changes: letter case, spaces and separators, "l33t"
  substitutions (``p@ssw0rd``), digits or symbols stuck on either end, or the
  same thing typed twice or more (``iloveyouiloveyou``).

Everything else is allowed: passphrases of several words, any script, no
composition rules. Breached-password checks against a k-anonymity API are a
separate, online step (see docs/security.md).
"""

from __future__ import annotations

import functools
import re
from typing import Final

from zxcvbn.frequency_lists import FREQUENCY_LISTS

__all__ = ["blocked_reason"]

#: The service's own names, never a password on their own (context words).
SERVICE_WORDS: Final = frozenset({"homeport", "homeassistant", "hass", "homeportrelay"})

_LEET: Final = str.maketrans(
    {"0": "o", "1": "i", "!": "i", "3": "e", "4": "a", "@": "a", "5": "s", "$": "s", "7": "t"}
)
_SEPARATORS: Final = re.compile(r"[\s._\-+*/\\|,;:'\"`~]+")
_EDGES: Final = re.compile(r"^[\W\d_]+|[\W\d_]+$")
#: Words shorter than this from the English list are not "a word" on their own here.
_MIN_WORD: Final = 4


@functools.cache
def _common() -> frozenset[str]:
    return frozenset(FREQUENCY_LISTS["passwords"])


@functools.cache
def _words() -> frozenset[str]:
    return frozenset(w for w in FREQUENCY_LISTS["english_wikipedia"] if len(w) >= _MIN_WORD)


def _unrepeated(text: str) -> str:
    """``"abcabcabc"`` -> ``"abc"``; anything else unchanged."""
    for size in range(1, len(text) // 2 + 1):
        if len(text) % size == 0 and text[:size] * (len(text) // size) == text:
            return text[:size]
    return text


def _cores(password: str) -> set[str]:
    """What is left of a password after the trivial changes are undone."""
    folded = _SEPARATORS.sub("", password.casefold())
    cores = set()
    for variant in (folded, folded.translate(_LEET)):
        for candidate in (variant, _EDGES.sub("", variant)):
            if candidate:
                cores.add(candidate)
                cores.add(_unrepeated(candidate))
                cores.add(_EDGES.sub("", _unrepeated(candidate)))
    cores.discard("")
    return cores


def blocked_reason(password: str) -> str | None:
    """Why ``password`` (already NFKC-normalised) is too common, or ``None``."""
    folded = password.casefold()
    if folded in _common():
        return "This is one of the most common passwords. Choose something less predictable."
    for core in _cores(password):
        if core in SERVICE_WORDS:
            return "Do not build your password from the name of this service."
        if core in _common() or core in _words():
            return (
                "This is a common word or password with small changes (digits, symbols, "
                "repetition or look-alike letters). A few unrelated words work better."
            )
    return None
