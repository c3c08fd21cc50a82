"""Fixtures for the accounts tests: a real, migrated SQLite file per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from accounts_support import PASSWORD, Clock

from homeport.accounts import Accounts, Database, User, default_sqlite_url


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest_asyncio.fixture
async def db(data_dir: Path) -> AsyncIterator[Database]:
    database = Database(default_sqlite_url(data_dir))
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
