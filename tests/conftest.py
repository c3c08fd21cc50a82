"""Shared fixtures for Homeport's tests."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from ha_core import HomeAssistant, PythonNotFoundError, ensure_ha_venv
from postgres import PostgresNotFoundError, PostgresServer
from redis_server import RedisNotFoundError, RedisServer

from homeport.tls.devca import DevCA, ensure_dev_ca


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of the real Home Assistant in one xdist group (``--dist loadgroup``).

    So one worker runs them all, one after another, against the session's one
    instance (a minute to start, and shared: one test at a time).  That group and
    the ``slow`` tests go first."""

    def start_early(item: pytest.Item) -> int:
        # The longest work first, so no worker is left with it while the others idle.
        uses_ha = "home_assistant" in getattr(item, "fixturenames", ())
        if uses_ha or item.get_closest_marker("homeassistant") is not None:
            item.add_marker(pytest.mark.xdist_group("home_assistant"))
            return 0
        return 1 if item.get_closest_marker("slow") is not None else 2

    items.sort(key=start_early)  # stable: the order within each kind stays


class _XdistGroupIds:
    """pytest-xdist (3.8) tells its scheduler a test's group by appending ``@group`` to
    ``item._nodeid``, which pytest 9.2 no longer reads: its node ids are structured
    (pytest-xdist issue #1386).  Carry the suffix over, so the groups hold."""

    @pytest.hookimpl(trylast=True)  # after pytest-xdist's own hook
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        try:
            from _pytest.nodeid import coerce_node_id
        except ImportError:  # an older pytest reads _nodeid itself
            return
        for item in items:
            legacy = item.__dict__.get("_nodeid")
            if isinstance(legacy, str) and legacy != item.nodeid and hasattr(item, "_id"):
                item._id = coerce_node_id(legacy)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_XdistGroupIds(), "homeport-xdist-group-ids")


@pytest.fixture(scope="session")
def dev_ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    """One development CA for the session (per xdist worker).

    Relays seeded with it (``start_stack(ca=dev_ca)``, ``RelayProcess(ca=...)``, the
    e2e ``stack`` fixture) issue their server certificates from it, so the one
    Chromium of the session (tests/support/browser.py) trusts them all.  Each relay
    still has a data dir, database and server certificate of its own.
    """
    return ensure_dev_ca(tmp_path_factory.mktemp("dev-ca"))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def home_assistant(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[HomeAssistant]:
    """One real, onboarded Home Assistant Core for the whole session (see ha_core.py).

    Tests using it carry ``@pytest.mark.homeassistant``. Run
    ``python tests/support/ha_core.py install`` first to keep the one-time install
    (about a minute) out of the tests' timeout.
    """
    missing_python = ""
    try:
        venv = await asyncio.to_thread(ensure_ha_venv)
    except PythonNotFoundError as exc:
        missing_python = str(exc)
    if missing_python:
        pytest.fail(missing_python, pytrace=False)  # a failure, never a skip
    ha = await HomeAssistant.start(tmp_path_factory.mktemp("home-assistant"), venv=venv)
    try:
        yield ha
    finally:
        await ha.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server on 127.0.0.1 for the whole session (see postgres.py)."""
    try:
        server = PostgresServer.start()
    except PostgresNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)  # a failure, never a skip
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real Redis on 127.0.0.1 for one test (tests stop and restart it; see redis_server.py)."""
    try:
        server = RedisServer.create()
    except RedisNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)  # a failure, never a skip
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres_template(postgres: PostgresServer) -> PostgresServer:
    """The server, with a migrated template database that tests clone."""
    # Requested from inside async fixtures, so run the set-up on a loop of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, postgres.ensure_template()).result()
    return postgres
