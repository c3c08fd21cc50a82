"""Exceptions raised by :mod:`homeport.accounts`.

Messages are safe to show to the person who caused them: they never carry
a password, token or code.
"""

from __future__ import annotations

from homeport.accounts.passwords import PasswordPolicyError

__all__ = [
    "AccessDenied",
    "AccountExists",
    "AccountsError",
    "AlreadyLinked",
    "InvalidEmail",
    "LinkCodeInvalid",
    "NotOwner",
    "PasswordPolicyError",
    "UnknownInstance",
    "UnknownUser",
]


class AccountsError(Exception):
    """Base class of the accounts service's own errors."""


class AccountExists(AccountsError):
    """An account with this email address already exists."""


class InvalidEmail(AccountsError, ValueError):
    """The text given is not a usable email address."""


class UnknownUser(AccountsError):
    """No (enabled) account has this email address or id."""


class UnknownInstance(AccountsError):
    """No instance has this id."""


class AccessDenied(AccountsError):
    """The account may not do this (disabled, or not allowed on the instance)."""


class NotOwner(AccountsError):
    """The account may open this home but not manage it (the *member* role).

    Only said to an account that can open the home, which therefore knows it
    exists; anyone else gets :class:`UnknownInstance`.
    """

    def __init__(self, message: str = "Only the owner of this home can do this.") -> None:
        super().__init__(message)


class LinkCodeInvalid(AccountsError):
    """The link code is wrong, expired, superseded or already used."""

    def __init__(
        self, message: str = "This link code is not valid; get a new one from the add-on."
    ) -> None:
        super().__init__(message)


class AlreadyLinked(AccountsError):
    """This add-on key is already linked to an instance; unlink it first."""
