"""Writes must be visible to other processes at once (the admin CLI reads what the relay wrote).

Regression: opening and closing a descriptor of the database file while an
engine had it open dropped this process's POSIX locks, so another process
believed it was the last user, reset the WAL, and our later commits stayed
invisible until we exited.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from homeport.accounts.db import Database, default_sqlite_url
from homeport.accounts.service import Accounts
from homeport.keys import public_key_text

PASSWORD = "a long enough passphrase"
READ = "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])"


def _cli(*args: str, stdin: str = "") -> None:
    subprocess.run(
        [sys.executable, "-m", "homeport.cli", *args],
        input=stdin,
        text=True,
        capture_output=True,
        check=True,
        timeout=60,
    )


def _read_elsewhere(db: Path, sql: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", READ, str(db), sql], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


async def test_relay_writes_are_visible_to_admin_commands(tmp_path: Path) -> None:
    _cli("admin", "user", "create", "ana@example.com", "--data-dir", str(tmp_path), stdin=PASSWORD)
    database = Database(default_sqlite_url(tmp_path))
    await database.connect()
    await database.migrate()  # a second engine on the open file, as the relay starts
    accounts = Accounts(database)
    try:
        key = public_key_text(Ed25519PrivateKey.generate().public_key())
        code, _ = await accounts.create_link_code(key)
        _cli("admin", "link", code, "ana@example.com", "--data-dir", str(tmp_path))
        instance = await accounts.instance_for_key(key)
        assert instance is not None
        await accounts.mark_connected(instance.id)
        seen = _read_elsewhere(tmp_path / "homeport.db", "select last_connected_at from instances")
        assert seen not in ("", "None")
    finally:
        await database.close()


async def test_symlinked_database_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.db"
    real.write_bytes(b"")
    (tmp_path / "homeport.db").symlink_to(real)
    database = Database(default_sqlite_url(tmp_path))
    with pytest.raises(OSError, match="symlink"):
        await database.connect()
