"""The incident behind R-MT-14, replayed: trickling POSTs from one address against the
relay's file descriptors, with a real ``homeport relay`` process.

The relay's descriptor limit is lowered (``prlimit`` on the child, the way a
small VPS or a systemd ``LimitNOFILE`` would have it) to a little above what it
uses at rest, so a few dozen held connections are what ~580 were in the field.
One address then opens many more form POSTs than that and trickles their
bodies; a visitor from another address must still get the sign-in page, and
the trickling requests must end at the body deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import ssl
import time
from pathlib import Path

import aiohttp
import pytest
from relay_process import RelayProcess
from trickle import Trickled, open_tls, post_head, trickle

from homeport.addon.client import LocalhostResolver

pytestmark = pytest.mark.timeout(120)

ACCOUNT = "homeport.localhost"
#: Descriptors the relay may open beyond those it holds at rest.
SPARE = 40
#: Trickling POSTs from the one address: well beyond SPARE.
ATTACKERS = 3 * SPARE
DEADLINE = 6.0
SHARE = 8


async def _attack(relay: RelayProcess, ca: Path) -> Trickled | None:
    head = post_head(ACCOUNT, relay.port, "/signin", 200, f"Origin: https://{ACCOUNT}:{relay.port}")
    try:
        async with asyncio.timeout(3):
            reader, writer = await open_tls(relay.port, ACCOUNT, ca)
    except (TimeoutError, OSError):
        return None  # the relay could not take the connection any more
    return await trickle(reader, writer, head, length=200, interval=1.0, give_up=20)


async def _visit(relay: RelayProcess, ca: Path) -> int | None:
    """A visitor from another address opens the sign-in page; its status, or None."""

    context = ssl.create_default_context(cafile=str(ca))
    connector = aiohttp.TCPConnector(
        ssl=context, resolver=LocalhostResolver(), local_addr=("127.0.0.2", 0)
    )
    async with aiohttp.ClientSession(connector=connector) as session:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(
                f"https://{ACCOUNT}:{relay.port}/signin",
                timeout=aiohttp.ClientTimeout(total=5),
            ) as r:
                await r.read()
                return r.status
    return None


async def test_trickling_posts_from_one_address_leave_others_a_working_site(
    tmp_path: Path,
) -> None:
    relay = RelayProcess(
        tmp_path / "relay",
        extra_args=[
            "--account-body-timeout",
            str(DEADLINE),
            "--account-max-requests",
            str(SHARE),
        ],
    )
    await relay.start()
    try:
        assert relay.proc is not None
        pid = relay.proc.pid
        assert await _visit(relay, relay.ca_path) == 200  # at rest, before the limit
        at_rest = len(os.listdir(f"/proc/{pid}/fd"))
        _soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (at_rest + SPARE, hard))

        started = time.monotonic()
        attackers = []
        for _ in range(ATTACKERS):
            attackers.append(asyncio.create_task(_attack(relay, relay.ca_path)))
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)  # every one of them is in, or refused
        assert time.monotonic() - started < DEADLINE, "the machine is too slow for this test"
        visitor = await _visit(relay, relay.ca_path)
        results = await asyncio.gather(*attackers)

        assert visitor == 200, "a visitor from another address is kept off the site"
        answered = [r for r in results if r is not None]
        statuses = sorted(r.status or 0 for r in answered)
        assert len(answered) == ATTACKERS, f"{ATTACKERS - len(answered)} could not connect"
        assert statuses.count(408) <= SHARE, statuses
        assert statuses.count(408) + statuses.count(429) == ATTACKERS, statuses
        # The held ones end at the body deadline, far before their bodies would.
        assert all(r.after < DEADLINE + 5 for r in answered), [r.after for r in answered]
        assert all(r.sent < 20 for r in answered)
    finally:
        await relay.close()
