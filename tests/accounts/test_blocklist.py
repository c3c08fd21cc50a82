"""The common-password blocklist (R-PWD-03) and its place in the password policy."""

from __future__ import annotations

import random

import pytest
from zxcvbn.frequency_lists import FREQUENCY_LISTS

from homeport.accounts.blocklist import blocked_reason
from homeport.accounts.passwords import PasswordPolicyError, check_new_password

COMMON = FREQUENCY_LISTS["passwords"]


def test_whole_list_is_loaded() -> None:
    assert len(COMMON) >= 30_000
    sample = random.Random(3).sample(COMMON, 500)
    assert all(blocked_reason(pw) is not None for pw in sample + COMMON[:3000])


@pytest.mark.parametrize(
    "password",
    [
        "qwertyuiop12345",  # in the list as is, and 15 characters long
        "1qaz2wsx3edc4rfv",
        "password1234567",  # common password + digits
        "Password!!!!!!!!",
        "P@ssw0rd2024!!!!",  # look-alike letters
        "iloveyouiloveyou",  # typed twice
        "dragon dragon dragon",
        "Monkey_Monkey_Monkey",
        "international2024",  # one common English word + digits
        "HOMEPORT12345678",  # the service's own name
        "homeassistant!!!",
    ],
)
def test_common_and_trivially_changed_passwords_are_refused(password: str) -> None:
    reason = blocked_reason(password)
    assert reason is not None
    with pytest.raises(PasswordPolicyError) as raised:
        check_new_password(password)
    assert str(raised.value) == reason  # the person is told why


@pytest.mark.parametrize(
    "password",
    [
        "correct horse battery staple",
        "a long enough passphrase for tests",
        "Tafel Brücke Ofen Wolke",
        "кот любит молоко утром",
        "purple-otter-under-17-bridges",
        "mB7#qL2!vX9$wR4z",
    ],
)
def test_passphrases_and_random_strings_pass(password: str) -> None:
    assert blocked_reason(password) is None
    check_new_password(password)


def test_length_rule_still_comes_first() -> None:
    with pytest.raises(PasswordPolicyError, match="at least 15"):
        check_new_password("password")
