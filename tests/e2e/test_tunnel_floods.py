"""A linked but hostile add-on cannot exhaust the relay or slow another home (R-ADD-07, #9.2).

The relay runs as its own process, with a well-behaved home on it.  A second
account links a hand-driven add-on that completes the real handshake and
then floods, never reading a byte: PINGs (each costs an answer), pongs that
answer nothing (they must not keep a deaf peer alive), CONTROL requests
(malformed ones cost an answer each) and window updates.  When the relay
drops it, it dials again and floods again, for a bounded time.  Throughout,
the relay's memory stays within bounds, it lets go of the attacker, and the
other home's requests keep answering within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from relay_process import Home, RelayProcess, start_home
from test_memory import status_kib

from homeport.addon.client import LocalhostResolver
from homeport.protocol.connection import Role, TunnelConnection
from homeport.protocol.frames import Flags, FrameType, encode_frame
from homeport.protocol.handshake import AddonHandshake, RelayRefused, Unlinked, Welcome
from homeport.standin import start_standin
from homeport.tls.context import client_context, peer_certificate_sha256
from homeport.tunnel.pipes import MAX_MESSAGE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MiB = 1024 * 1024
ATTACKER = "attacker@example.com"
#: How long each kind of flood goes on (reconnecting whenever the relay hangs up).
FLOOD_SECONDS = 6.0
#: What the relay may grow by while all of it goes on (issue #9.2 asks under 100 MB;
#: before the budgets it grew 58 to 66 MiB in these 24 s, now under 10).
RSS_BOUND = 48 * MiB
#: Another home's request during the flood (issue #9.2: under a second).
LATENCY_BOUND = 1.0
#: ...and no single one of them over this: the suite shares two CPUs with another
#: pytest-xdist worker, and one sample in fifty may meet its burst (before the
#: budgets another home waited 15 to 26 s).
STALL_BOUND = 2.5


def _settings() -> bytes:
    """The attacker's SETTINGS: the first frame any add-on must send."""
    return TunnelConnection(Role.ADDON).data_to_send()


def _pings(n: int) -> bytes:
    return b"".join(encode_frame(FrameType.PING, 0, struct.pack(">Q", i)) for i in range(n))


def _pongs(n: int) -> bytes:
    return b"".join(
        encode_frame(FrameType.PING, 0, struct.pack(">Q", i), Flags.ACK) for i in range(n)
    )


def _controls(n: int) -> bytes:
    return b"".join(
        encode_frame(FrameType.CONTROL, 0, struct.pack(">I", i + 1) + b"not json") for i in range(n)
    )


def _window_updates(n: int) -> bytes:
    return b"".join(
        encode_frame(FrameType.WINDOW_UPDATE, 0, struct.pack(">I", 1)) for _ in range(n)
    )


#: Floods the relay ends with FLOOD: the home's next tunnels are refused for a while.
PENALISED = {"ping", "control", "window update"}
#: Frames in one batch: one WebSocket message just under the tunnel's limit.
BATCH = MAX_MESSAGE // 20
FLOODS: dict[str, Callable[[], bytes]] = {
    "ping": lambda: _pings(BATCH),
    "unsolicited pong": lambda: _pongs(BATCH),
    "control": lambda: _controls(BATCH // 2),
    "window update": lambda: _window_updates(BATCH),
}


@contextlib.asynccontextmanager
async def dial(
    relay: RelayProcess, key: Ed25519PrivateKey
) -> AsyncIterator[tuple[aiohttp.ClientWebSocketResponse, Welcome | Unlinked | RelayRefused]]:
    """The real handshake with ``key``; then the bare WebSocket."""
    pinned = await relay.pinned_key()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            ssl=client_context(relay.ca_path), resolver=LocalhostResolver()
        )
    ) as session:
        ws = await session.ws_connect(relay.relay_url, max_msg_size=MAX_MESSAGE, compress=0)
        ssl_object = ws.get_extra_info("ssl_object")
        handshake = AddonHandshake(
            relay.config.account_host, (pinned,), key, peer_certificate_sha256(ssl_object)
        )
        async with asyncio.timeout(10):
            await ws.send_str(handshake.hello())
            await ws.send_str(handshake.receive_server_proof(await ws.receive_str()))
            result = handshake.receive_result(await ws.receive_str())
        yield ws, result


async def linked_attacker(home: Home, email: str = ATTACKER) -> Ed25519PrivateKey:
    """A new account with a hand-driven add-on key linked to it."""
    relay = home.relay
    await relay.admin("admin", "user", "create", email, stdin=home.password + "\n")
    key = Ed25519PrivateKey.generate()
    async with dial(relay, key) as (ws, result):
        assert isinstance(result, Unlinked)
        await relay.admin("admin", "link", result.link_code, email)
        await ws.close()
    return key


async def flood_once(
    relay: RelayProcess, key: Ed25519PrivateKey, batch: bytes, until: float
) -> bool:
    """One attacker connection: flood without ever reading, until the relay hangs up.

    False if the relay refused the tunnel outright (the home is in its penalty box).
    """
    with contextlib.suppress(aiohttp.ClientError, ConnectionError, asyncio.TimeoutError):
        async with dial(relay, key) as (ws, result):
            if isinstance(result, RelayRefused):
                assert result.code == "rate_limited", result
                return False
            assert isinstance(result, Welcome)
            await ws.send_bytes(_settings())
            while time.monotonic() < until and not ws.closed:
                async with asyncio.timeout(5):
                    await ws.send_bytes(batch)
    return True


class Sampler:
    """Samples the relay's RSS and the other home's request latency while the flood runs."""

    def __init__(self, home: Home, pid: int) -> None:
        self.home = home
        self.pid = pid
        self.rss: list[int] = []
        self.latencies: list[float] = []

    async def run(self, browser: object, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.rss.append(status_kib(self.pid, "VmRSS"))
            started = time.monotonic()
            async with browser.request(
                "GET", self.home.tenant_origin + "/manifest.json"
            ) as response:  # type: ignore[attr-defined]
                assert response.status == 200
                await response.read()
            self.latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.1)


async def test_floods_from_a_linked_addon_leave_the_relay_and_other_homes_alone(
    tmp_path: Path,
) -> None:
    runner, url = await start_standin()
    try:
        async with start_home(tmp_path, url) as home:
            assert home.relay.proc is not None
            pid = home.relay.proc.pid
            async with home.browser() as browser:  # type: ignore[attr-defined]
                await browser.sign_in("/")
                baseline = status_kib(pid, "VmRSS")
                sampler = Sampler(home, pid)
                for name, make in FLOODS.items():
                    batch = make()
                    # A fresh home per flood: the penalty of one must not spare the next.
                    key = await linked_attacker(
                        home, f"attacker-{name.replace(' ', '-')}@x.example"
                    )
                    stop = asyncio.Event()
                    watch = asyncio.create_task(sampler.run(browser, stop))
                    until = time.monotonic() + FLOOD_SECONDS
                    served = refused = 0
                    # A penalised flood goes on (bounded) until the relay has dropped it and
                    # refused its next dial: on a loaded machine the first drop may take
                    # most of FLOOD_SECONDS.
                    cap = until + (10.0 if name in PENALISED else 0.0)
                    while time.monotonic() < until or (
                        name in PENALISED and not refused and time.monotonic() < cap
                    ):
                        if await flood_once(home.relay, key, batch, max(until, time.monotonic())):
                            served += 1
                        else:
                            refused += 1
                    stop.set()
                    await watch
                    assert served >= 1, name
                    if name in PENALISED:
                        # Dropped for flooding, it may not dial straight back in (R-ADD-07).
                        assert refused >= 1, f"{name}: {served} tunnels, none refused"
                    ordered = sorted(sampler.latencies)
                    p90, worst = ordered[int(0.9 * (len(ordered) - 1))], ordered[-1]
                    assert p90 < LATENCY_BOUND, f"{name}: another home's p90 was {p90:.2f} s"
                    assert worst < STALL_BOUND, f"{name}: another home waited {worst:.2f} s"
                    grown = max(sampler.rss) - baseline
                    assert grown < RSS_BOUND, f"{name}: relay grew by {grown / MiB:.0f} MiB"
                # The flooder is gone; the relay let go of it and the home is still served.
                await asyncio.sleep(1)
                after = status_kib(pid, "VmRSS")
                assert after - baseline < RSS_BOUND / 2, f"kept {(after - baseline) / MiB:.0f} MiB"
                async with browser.request(
                    "GET", home.tenant_origin + "/manifest.json"
                ) as response:
                    assert response.status == 200
            log = home.relay.log_text()
            assert "tunnel.terminated" in log or "tunnel.keepalive_timeout" in log
    finally:
        await runner.cleanup()
