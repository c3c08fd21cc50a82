"""Database: migrations, SQLite hardening, file modes, UTC timestamps."""

from __future__ import annotations

import sqlite3
import stat
from datetime import datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text

from homeport.accounts import Database, default_sqlite_url
from homeport.accounts.models import Base, User


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_default_sqlite_url(tmp_path: Path) -> None:
    url = default_sqlite_url(tmp_path / "d")
    assert url == f"sqlite+aiosqlite:///{tmp_path}/d/homeport.db"


async def test_file_modes(db: Database, data_dir: Path) -> None:
    async with db.session(write=True) as s, s.begin():
        await s.execute(text("SELECT 1"))
    assert _mode(data_dir) == 0o700
    files = list(data_dir.iterdir())
    assert data_dir / "homeport.db" in files
    for path in files:  # including -wal / -shm while open
        assert _mode(path) == 0o600, path


async def test_existing_open_directory_is_tightened(tmp_path: Path) -> None:
    data_dir = tmp_path / "shared"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    (data_dir / "homeport.db").touch()
    (data_dir / "homeport.db").chmod(0o644)
    database = Database(default_sqlite_url(data_dir))
    await database.migrate()
    assert _mode(data_dir) == 0o700
    assert _mode(data_dir / "homeport.db") == 0o600


async def test_migrate_is_idempotent_and_matches_models(tmp_path: Path) -> None:
    database = Database(default_sqlite_url(tmp_path / "d"))
    await database.migrate()
    await database.migrate()
    await database.connect()
    try:
        async with database.engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            assert version == [("0004_email",)]

            def diff(sync_conn: Connection) -> list[object]:
                context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
                return list(compare_metadata(context, Base.metadata))

            assert await conn.run_sync(diff) == []
    finally:
        await database.close()


async def test_sqlite_pragmas(db: Database) -> None:
    async with db.session() as s:
        assert (await s.execute(text("PRAGMA foreign_keys"))).scalar() == 1
        assert (await s.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        assert (await s.execute(text("PRAGMA busy_timeout"))).scalar() == 5000


async def test_write_session_takes_the_write_lock_at_begin(db: Database, data_dir: Path) -> None:
    other = sqlite3.connect(data_dir / "homeport.db", timeout=0, isolation_level=None)
    try:
        async with db.session() as s, s.begin():
            await s.execute(text("SELECT 1"))
            other.execute("BEGIN IMMEDIATE")  # a reader does not block writers
            other.execute("ROLLBACK")
        async with db.session(write=True) as s, s.begin():
            await s.execute(text("SELECT 1"))
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
    finally:
        other.close()


async def test_naive_datetimes_are_refused(db: Database) -> None:
    with pytest.raises(Exception, match="naive"):
        async with db.session(write=True) as s, s.begin():
            s.add(User(email="n@example.com", password_hash="x", created_at=datetime(2030, 1, 1)))


async def test_session_before_connect_is_an_error(tmp_path: Path) -> None:
    database = Database(default_sqlite_url(tmp_path))
    with pytest.raises(RuntimeError, match="connect"):
        database.session()
