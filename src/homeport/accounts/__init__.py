"""Accounts store of the relay: users, sessions, hand-off codes, instances, linking.

The public surface is :class:`Accounts` (the service) over a :class:`Database`
(engine, sessions, migrations); see :mod:`homeport.accounts.service`.
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
from homeport.accounts.models import Instance, User, WebSession
from homeport.accounts.service import Accounts, InstanceRow, SessionInfo, SessionKind

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
