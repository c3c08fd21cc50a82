"""Fixtures for the accounts tests: a real, migrated database per test.

Every test that uses ``db`` (or ``accounts``) runs twice: on a SQLite file and on a
real PostgreSQL server (``tests/support/postgres.py``). Tests of SQLite-only behaviour
(file modes, locking) carry ``@pytest.mark.sqlite_only``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from accounts_support import PASSWORD, Clock
from postgres import PostgresServer

from homeport.accounts import Accounts, Database, User, default_sqlite_url

BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        only_sqlite = metafunc.definition.get_closest_marker("sqlite_only") is not None
        metafunc.parametrize("backend", ["sqlite"] if only_sqlite else list(BACKENDS))


@pytest_asyncio.fixture
async def database_url(
    backend: str, data_dir: Path, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    """The URL of a fresh, migrated database on ``backend``."""
    if backend == "sqlite":
        yield default_sqlite_url(data_dir)
        return
    server: PostgresServer = request.getfixturevalue("postgres_template")
    name = await server.create_database(template="homeport_template")
    try:
        yield server.database_url(name)
    finally:
        await server.drop_database(name)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest_asyncio.fixture
async def empty_database_url(
    backend: str, data_dir: Path, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    """The URL of a fresh database on ``backend`` that no migration has touched."""
    if backend == "sqlite":
        yield default_sqlite_url(data_dir)
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    name = await server.create_database()
    try:
        yield server.database_url(name)
    finally:
        await server.drop_database(name)


@pytest_asyncio.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.migrate()
    await database.connect()
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def accounts(db: Database, clock: Clock) -> Accounts:
    return Accounts(db, now=clock)


@pytest_asyncio.fixture
async def alice(accounts: Accounts) -> User:
    return await accounts.create_user("alice@example.com", PASSWORD)


@pytest_asyncio.fixture
async def bob(accounts: Accounts) -> User:
    return await accounts.create_user("bob@example.com", PASSWORD)
