"""Which commands need the ``relay`` extra, and the one line that says so when it is missing.

``pip install homeport`` installs what the add-on needs and no more; the
relay's dependencies (database, password hashing, ACME, mail, OpenID,
passkeys, metrics) come with ``pip install 'homeport[relay]'``. This module
imports none of them, so the command line can check before it loads the relay.
"""

from __future__ import annotations

import importlib.util
from typing import Final

__all__ = ["RELAY_COMMANDS", "RELAY_MODULES", "missing_relay_modules", "relay_extra_error"]

#: Commands that run the relay or open its database.
RELAY_COMMANDS: Final = frozenset({"relay", "admin", "dev"})
#: One top-level module per dependency of the ``relay`` extra (pyproject.toml).
RELAY_MODULES: Final = (
    "sqlalchemy",
    "alembic",
    "aiosqlite",
    "argon2",
    "acme",
    "pyotp",
    "webauthn",
    "authlib",
    "joserfc",
    "httpx2",
    "zxcvbn",
    "aiosmtplib",
    "ua_parser",
    "dns",
    "prometheus_client",
    "redis",
)


def missing_relay_modules() -> list[str]:
    """The relay's dependencies that are not installed."""
    return [name for name in RELAY_MODULES if importlib.util.find_spec(name) is None]


def relay_extra_error(command: str) -> str | None:
    """The one-line error for ``homeport <command>`` without the extra, or ``None``."""
    if command not in RELAY_COMMANDS:
        return None
    missing = missing_relay_modules()
    if not missing:
        return None
    return (
        f"homeport {command} needs the relay's dependencies, which this installation "
        f"lacks ({', '.join(missing)}): pip install 'homeport[relay]'"
    )
