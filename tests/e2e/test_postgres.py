"""The relay on PostgreSQL: the whole path works with ``--database-url postgresql+asyncpg://``.

The accounts unit tests already run on both databases (``tests/accounts/conftest.py``);
this proves the processes agree on one: the relay and the admin commands share a real
PostgreSQL server on loopback, a person signs in and reaches the home through the
tunnel, and after a relay restart the session and the link are still there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from postgres import PostgresServer
from reflect_backend import Seen, start_reflecting_backend
from relay_process import start_home

from homeport.addon.client import State

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def backend() -> AsyncIterator[tuple[str, Seen]]:
    runner, url, seen = await start_reflecting_backend()
    try:
        yield url, seen
    finally:
        await runner.cleanup()


@pytest.fixture
async def database_url(postgres_template: PostgresServer) -> AsyncIterator[str]:
    name = await postgres_template.create_database()  # empty: the relay migrates it
    try:
        yield postgres_template.database_url(name)
    finally:
        await postgres_template.drop_database(name)


async def test_relay_and_admin_commands_share_postgres(
    tmp_path: Path, backend: tuple[str, Seen], database_url: str
) -> None:
    backend_url, seen = backend
    async with start_home(tmp_path, backend_url, database_url=database_url) as home:
        # Nothing of the accounts went to the data dir: no SQLite file was made.
        assert not (home.relay.data_dir / "homeport.db").exists()
        listed = await home.relay.admin("admin", "instance", "list", "--json")
        assert home.instance_id in listed
        assert '"connected": true' in listed

        async with home.browser() as browser:  # type: ignore[attr-defined]
            await browser.sign_in("/")
            async with browser.request("GET", home.tenant_origin + "/echo?pg=1") as r:
                assert r.status == 200
            assert "GET /echo?pg=1" in seen.targets()

            # The session and the link live in PostgreSQL: a restarted relay knows both.
            assert await home.relay.stop() == 0
            await home.relay.start()
            await home.wait_state(State.CONNECTED, 35, connects=2)
            async with browser.request("GET", home.tenant_origin + "/echo?pg=2") as r:
                assert r.status == 200
            assert "GET /echo?pg=2" in seen.targets()
