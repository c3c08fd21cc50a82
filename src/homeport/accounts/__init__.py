"""Accounts store of the relay: users, sessions, hand-off codes, instances, linking.

The public surface is :class:`Accounts` (a facade over stores with one job
each: ``users``, ``sessions``, ``instances``, ``totp``, ``passkeys``,
``sharing``, ...) over a :class:`Database` (engine, sessions, migrations); see
:mod:`homeport.accounts.service`.
"""

from homeport.accounts.db import Database, MigrationError, default_sqlite_url
from homeport.accounts.errors import (
    AccessDenied,
    AccountExists,
    AccountsError,
    AlreadyLinked,
    InvalidEmail,
    LinkCodeInvalid,
    PasswordPolicyError,
    UnknownInstance,
    UnknownUser,
)
from homeport.accounts.instances import InstanceRow
from homeport.accounts.models import Instance, User, WebSession
from homeport.accounts.service import Accounts
from homeport.accounts.sessions import SessionInfo, SessionKind

__all__ = [
    "AccessDenied",
    "AccountExists",
    "Accounts",
    "AccountsError",
    "AlreadyLinked",
    "Database",
    "Instance",
    "InstanceRow",
    "InvalidEmail",
    "LinkCodeInvalid",
    "MigrationError",
    "PasswordPolicyError",
    "SessionInfo",
    "SessionKind",
    "UnknownInstance",
    "UnknownUser",
    "User",
    "WebSession",
    "default_sqlite_url",
]
