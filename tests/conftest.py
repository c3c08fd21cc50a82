"""Shared fixtures for Homeport's tests."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from ha_core import HomeAssistant, PythonNotFoundError, ensure_ha_venv
from postgres import PostgresNotFoundError, PostgresServer

from homeport.tls.devca import DevCA, ensure_dev_ca


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


@pytest.fixture(scope="session")
def postgres_template(postgres: PostgresServer) -> PostgresServer:
    """The server, with a migrated template database that tests clone."""
    # Requested from inside async fixtures, so run the set-up on a loop of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, postgres.ensure_template()).result()
    return postgres
