"""Database engine, sessions, SQLite hardening and migrations.

One :class:`Database` per process wraps a SQLAlchemy async engine. SQLite is
the embedded default (``sqlite+aiosqlite``); a ``postgresql+asyncpg`` URL
works the same way, minus the SQLite-specific parts below.

SQLite specifics, and why:

* ``journal_mode=WAL`` so readers (every request resolves a session) never
  wait for a writer; ``busy_timeout`` so concurrent writers queue instead of
  failing with "database is locked"; ``foreign_keys=ON`` so deleting a user
  or an instance really removes its sessions and codes (SQLite ships with
  foreign keys off); ``synchronous=FULL`` so a committed revocation
  survives a power cut.
* SQLAlchemy, not the ``sqlite3`` module, emits ``BEGIN``: the module's
  legacy mode starts no transaction for ``SELECT``, which would let a
  check-then-act sequence read outside its transaction. Write sessions
  (``session(write=True)``) use ``BEGIN IMMEDIATE``, taking the write lock
  up front, so two transactions cannot both read a state and then race to
  change it (e.g. two requests consuming one single-use code), and a
  read-then-write transaction never dies with ``SQLITE_BUSY_SNAPSHOT``.
* The database file (and its ``-wal``/``-shm`` companions, which SQLite
  creates with the main file's mode) is ``0600`` and a directory created
  for it ``0700``: it holds password hashes and session hashes that other
  local users must not read.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

__all__ = ["Database", "MigrationError", "default_sqlite_url"]

_log = logging.getLogger(__name__)

DB_FILENAME: Final = "homeport.db"
SQLITE_BUSY_TIMEOUT_MS: Final = 5000
#: What a database that is down, restarting or overloaded raises through the stores
#: (SQLAlchemy wraps driver errors; a refused or reset connection may surface as OSError).
DATABASE_ERRORS: Final = (SQLAlchemyError, OSError)
_MIGRATIONS_DIR: Final = Path(__file__).parent / "migrations"
_BEGIN_OPTION: Final = "homeport_sqlite_begin"


class MigrationError(RuntimeError):
    """A migration left the database inconsistent (it was rolled back)."""


def default_sqlite_url(data_dir: Path) -> str:
    """Return the URL of the embedded database inside ``data_dir``."""
    return f"sqlite+aiosqlite:///{(Path(data_dir).absolute() / DB_FILENAME).as_posix()}"


def _sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL, or ``None`` (memory, URI, other backend)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or parsed.query.get("uri") in ("true", "1"):
        return None
    return Path(database)


def _secure_sqlite_file(path: Path) -> None:
    """Create the database directory (0700) and file (0600) before SQLite does.

    Stops other local users from reading password and session hashes.
    SQLite itself would create the file with the process umask (usually
    0644). A directory that already exists is tightened only when it
    belongs to us and is not a shared sticky directory such as ``/tmp``;
    otherwise a warning is logged (the file stays 0600 regardless).
    """
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
    else:
        st = directory.stat()
        if st.st_mode & 0o077:
            if st.st_uid == os.geteuid() and not st.st_mode & stat.S_ISVTX:
                directory.chmod(0o700)
            else:
                _log.warning(
                    "database directory %s is accessible to other users; "
                    "use a private data directory",
                    directory,
                )
    if path.is_symlink():
        raise OSError(f"refusing a symlinked database file: {path}")
    if not path.exists():
        # Only when the file is new: closing any descriptor of an open SQLite
        # file drops this process's POSIX locks on it (a second engine, e.g.
        # for migrations, would silently break WAL visibility for others).
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        os.close(fd)
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        if candidate.exists() and stat.S_IMODE(candidate.stat().st_mode) != 0o600:
            candidate.chmod(0o600)


def install_sqlite_hooks(engine: AsyncEngine, *, foreign_keys: bool = True) -> None:
    """Pragmas on every new connection, and SQLAlchemy-controlled BEGIN."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module (see module docs).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {'IMMEDIATE' if mode == 'IMMEDIATE' else 'DEFERRED'}")


class Database:
    """The accounts database: engine lifecycle, sessions and migrations.

    Usage::

        db = Database(default_sqlite_url(data_dir))
        await db.migrate()
        await db.connect()
        async with db.session() as s:             # reads
            ...
        async with db.session(write=True) as s, s.begin():
            ...                                   # read-modify-write
        await db.close()
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._is_sqlite = make_url(url).get_backend_name() == "sqlite"
        self._engine: AsyncEngine | None = None
        self._reader: async_sessionmaker[AsyncSession] | None = None
        self._writer: async_sessionmaker[AsyncSession] | None = None

    @property
    def is_sqlite(self) -> bool:
        """Whether the backend is SQLite."""
        return self._is_sqlite

    @property
    def engine(self) -> AsyncEngine:
        """The connected engine (raises if :meth:`connect` was not called)."""
        if self._engine is None:
            raise RuntimeError("Database.connect() has not been called")
        return self._engine

    def _create_engine(self) -> AsyncEngine:
        path = _sqlite_file(self.url)
        if path is not None:
            _secure_sqlite_file(path)
        engine = create_async_engine(self.url)
        if self._is_sqlite:
            install_sqlite_hooks(engine)
        return engine

    async def connect(self) -> None:
        """Open the engine and check that the database answers."""
        if self._engine is not None:
            return
        engine = self._create_engine()
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        self._reader = async_sessionmaker(engine, expire_on_commit=False)
        self._writer = async_sessionmaker(
            engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"}), expire_on_commit=False
        )
        _log.info("accounts database connected (%s)", make_url(self.url).get_backend_name())

    async def close(self) -> None:
        """Dispose of the engine and its pooled connections."""
        engine, self._engine = self._engine, None
        self._reader = self._writer = None
        if engine is not None:
            await engine.dispose()

    def session(self, *, write: bool = False) -> AsyncSession:
        """A new :class:`AsyncSession`, to be used as ``async with db.session() as s``.

        ``write=True`` makes SQLite take the write lock at ``BEGIN`` (see the
        module docs); use it for every transaction that changes data after
        reading it. On other backends it is the same as a plain session.
        """
        maker = self._writer if write else self._reader
        if maker is None:
            raise RuntimeError("Database.connect() has not been called")
        return maker()

    async def migrate(self) -> None:
        """Upgrade the schema to the newest Alembic revision (idempotent).

        Uses its own short-lived connection, so it works before or after
        :meth:`connect`. On SQLite, foreign keys are switched off for the
        migration (table-rebuilding ``ALTER``s would otherwise cascade
        deletes into child tables) and ``PRAGMA foreign_key_check`` must be
        clean before the transaction commits.
        """
        if self._is_sqlite:
            path = _sqlite_file(self.url)
            if path is not None:
                _secure_sqlite_file(path)
            engine = create_async_engine(self.url, poolclass=NullPool)
            install_sqlite_hooks(engine, foreign_keys=False)
            engine = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        else:
            engine = create_async_engine(self.url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_upgrade_to_head)
                if self._is_sqlite:
                    problems = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
                    if problems:
                        raise MigrationError(f"foreign key violations after migration: {problems}")
        finally:
            await engine.dispose()


def alembic_config(url: str | None = None) -> Config:
    """An Alembic :class:`Config` for the packaged migrations (no ini file)."""
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS_DIR).replace("%", "%%"))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _upgrade_to_head(connection: Connection) -> None:
    config = alembic_config()
    # env.py sees this connection and migrates on it instead of connecting.
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
