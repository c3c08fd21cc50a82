"""PostgreSQL briefly down under a running relay: what carries on, what says "try later".

Real parts only: a PostgreSQL server of this test's own (so stopping it harms no
other test), the relay on it, the add-on and its home, browsers over TLS. The
server is stopped as a crash would (``pg_ctl stop -m immediate``) and started
again on the same port; the relay is never restarted.

What the relay promises (docs/operations.md, "PostgreSQL briefly down"):

* open tunnels, WebSockets and streams carry on: nothing on them needs the
  database;
* a signed-in person's new requests pass while their session is in the gate's
  cache (up to its 5 s lifetime), then get a clean ``503`` with ``Retry-After``;
* the account site answers a clean ``503`` (sign-in, every page that needs the
  database), never a stack trace;
* an add-on that dials meanwhile is told ``1013`` (try later) and comes back;
* once the server is back, everything works again without restarting the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres import PostgresServer
from stack import Browser, make_addon, start_stack
from traffic import OpenTraffic

from homeport.addon.client import AddonClient
from homeport.relay.gate import CACHE_TTL
from homeport.relay.housekeeping import SWEEP_SECONDS
from homeport.tls.devca import DevCA

pytestmark = pytest.mark.timeout(240)

#: Back within this many seconds of the server answering again.
RECOVERY = 10.0


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    # Durable: halt() is a crash, and a crash must not take committed sessions with it
    # (the session server's speed settings would: synchronous_commit=off).
    server = PostgresServer.start(durable=True)
    try:
        yield server
    finally:
        server.stop()


async def _tenant_get(browser: Browser) -> tuple[int, str, str | None]:
    async with browser.request("GET", browser.stack.tenant_origin + "/") as r:
        return r.status, await r.text(), r.headers.get("Retry-After")


async def _sign_in_on_site(browser: Browser) -> tuple[int, str, str | None]:
    stack = browser.stack
    async with browser.request(
        "POST",
        stack.account_origin + "/signin",
        data={"email": stack.email, "password": stack.password, "next": "/"},
        headers={"Origin": stack.account_origin},
    ) as r:
        return r.status, await r.text(), r.headers.get("Retry-After")


async def test_a_brief_postgres_outage_is_ridden_out_without_restarting_the_relay(
    tmp_path: Path,
    dev_ca: DevCA,
    own_postgres: PostgresServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    database = await own_postgres.create_database()
    async with start_stack(
        tmp_path, ca=dev_ca, database_url=own_postgres.database_url(database)
    ) as stack:
        hub = stack.relay.hub
        async with stack.browser() as phone, stack.browser() as laptop:
            assert (await phone.sign_in("/")).status == 200
            traffic = OpenTraffic(phone)
            newcomer: AddonClient | None = None
            try:
                await traffic.open()
                with caplog.at_level(logging.WARNING):
                    own_postgres.halt()
                    down_at = time.monotonic()

                    # Within the session cache's lifetime the person's requests still pass.
                    status, _, _ = await _tenant_get(phone)
                    assert status == 200
                    assert time.monotonic() - down_at < CACHE_TTL

                    # Past it: a clean 503 with Retry-After, on the home and the account site.
                    await asyncio.sleep(max(0.0, down_at + CACHE_TTL + 0.3 - time.monotonic()))
                    status, body, retry = await _tenant_get(phone)
                    assert (status, retry) == (503, "5"), body
                    assert "Traceback" not in body
                    status, body, retry = await _sign_in_on_site(laptop)
                    assert (status, retry) == (503, "5"), body
                    assert "Traceback" not in body

                    # A sweep has come and gone: the open WebSocket and stream carry on,
                    # and so does the home's tunnel.
                    await asyncio.sleep(max(0.0, down_at + SWEEP_SECONDS + 1 - time.monotonic()))
                    assert traffic.still_open()
                    assert hub.tunnel_for(stack.instance_id) is not None

                    # An add-on that dials now is told to try later (1013) and dials again.
                    newcomer = make_addon(
                        stack.config, stack.relay, stack.backend_url, tmp_path / "newcomer", []
                    )
                    await newcomer.__aenter__()
                    newcomer.config = dataclasses.replace(
                        newcomer.config, backoff_base=0.05, backoff_cap=0.5
                    )
                    dialing = asyncio.create_task(newcomer.run_forever())
                    async with asyncio.timeout(10):
                        while newcomer.status.last_error is None:
                            await asyncio.sleep(0.02)
                    assert newcomer.status.link_code is None
                    assert "(1013)" in newcomer.status.last_error

                own_postgres.restart()
                back_at = time.monotonic()
                async with asyncio.timeout(RECOVERY):
                    while (await _tenant_get(phone))[0] != 200:
                        await asyncio.sleep(0.2)
                    while (await _sign_in_on_site(laptop))[0] != 303:
                        await asyncio.sleep(0.2)
                    while newcomer.status.link_code is None:  # it got through this time
                        await asyncio.sleep(0.05)
                print(f"recovered {time.monotonic() - back_at:.2f} s after PostgreSQL came back")
                # The WebSocket and stream opened before the outage lived through all of it.
                assert traffic.still_open()
                assert hub.tunnel_for(stack.instance_id) is not None
            finally:
                await traffic.close()
                if newcomer is not None:
                    dialing.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await dialing
                    await newcomer.__aexit__(None, None, None)
        # Clean answers, not crashes: no request logged a stack trace meanwhile.
        crashed = {"relay.unhandled_error", "tenant.admission_failed"}
        assert not [r for r in caplog.records if r.getMessage() in crashed]
