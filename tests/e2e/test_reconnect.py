"""Resilience: the tunnel comes back by itself, and nothing hangs.

The relay runs as its own process so it can be stopped (SIGTERM: GOAWAY and
drain), killed (SIGKILL), paused (SIGSTOP) and restarted on the same port
and data dir; the add-on runs in this process so its state and log can be
watched.  Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import signal
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from ports import reserve_port
from reflect_backend import Seen, start_reflecting_backend
from relay_process import RecordLogs, start_home
from stack import start_stack

from homeport.addon import client as addon_client
from homeport.addon.client import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    AddonClient,
    AddonConfig,
    State,
    backoff_delay,
)
from homeport.standin import CHUNK, pattern_chunk

pytestmark = pytest.mark.timeout(90)

SESSION_COOKIE = "__Host-homeport_session"
#: Dial, TLS and the tunnel handshake on loopback, with room for a busy machine.
CONNECT_SLACK = 1.5


@pytest.fixture
async def backend() -> AsyncIterator[tuple[str, Seen]]:
    runner, url, seen = await start_reflecting_backend()
    try:
        yield url, seen
    finally:
        await runner.cleanup()


def session_cookie(browser: object) -> str:
    jar = browser.session.cookie_jar  # type: ignore[attr-defined]
    return next(c.value for c in jar if c.key == SESSION_COOKIE)


def reconnect_deadline(logs: RecordLogs, listening_at: float) -> float:
    """When the add-on must be back: the end of the backoff wait that was running
    when the relay started listening (or that moment itself), plus dial time."""
    pending_end = listening_at
    for at, fields in logs.events("addon.retry"):
        if at <= listening_at:
            pending_end = max(listening_at, at + float(fields["seconds"]))  # type: ignore[arg-type]
    return pending_end + CONNECT_SLACK


async def wait_for(predicate: object, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def fetch(browser: object, url: str) -> tuple[int, bytes]:
    async with browser.request("GET", url) as r:  # type: ignore[attr-defined]
        return r.status, await r.read()


async def fetch_with(browser: object, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    async with browser.request("GET", url, headers=headers) as r:  # type: ignore[attr-defined]
        return r.status, await r.read()


# ------------------------------------------------------------ (a) restart


async def test_graceful_restart_keeps_sessions_and_finishes_requests_in_flight(
    tmp_path: Path, backend: tuple[str, Seen]
) -> None:
    backend_url, seen = backend
    with RecordLogs("homeport.addon.client") as logs:
        async with start_home(tmp_path, backend_url) as home:
            origin = home.tenant_origin
            async with home.browser() as browser:  # type: ignore[attr-defined]
                await browser.sign_in("/")
                cookie = session_cookie(browser)
                cookie_header = f"{SESSION_COOKIE}={cookie}"
                assert (await fetch(browser, origin + "/echo"))[0] == 200

                # A request in flight when the relay is told to stop ...
                inflight = asyncio.create_task(fetch(browser, origin + "/slow?seconds=1"))
                await wait_for(lambda: "GET /slow?seconds=1" in seen.targets(), 5)
                home.relay.signal(signal.SIGTERM)
                # ... still completes (GOAWAY, then the relay drains open streams).
                assert await asyncio.wait_for(inflight, 10) == (200, b"slow done")
                assert await home.relay.wait_exit(15) == 0
                assert logs.events("addon.goaway"), "the add-on never saw the GOAWAY"

                listening_at = await home.relay.start()
                back_at = await home.wait_state(State.CONNECTED, 35, connects=2)
                took = back_at - listening_at
                print(f"add-on back {took:.2f} s after the relay listened again")
                assert back_at <= reconnect_deadline(logs, listening_at), (
                    took,
                    logs.events("addon.retry"),
                )

                # The same browser session works on the new relay process (SQLite).
                status, body = await fetch(browser, origin + "/echo")
                assert status == 200, body[:200]
                assert session_cookie(browser) == cookie

            # And the cookie alone, in a brand-new browser, is enough.
            async with home.browser() as fresh:  # type: ignore[attr-defined]
                status, _ = await fetch_with(fresh, origin + "/echo", {"Cookie": cookie_header})
                assert status == 200


# -------------------------------------------------------------- (b) kill -9

DOWNLOAD = 256 * 1024 * 1024


async def test_relay_killed_mid_transfer_fails_cleanly_then_comes_back(
    tmp_path: Path, backend: tuple[str, Seen]
) -> None:
    backend_url, _seen = backend
    with RecordLogs("homeport.addon.client") as logs:
        async with start_home(tmp_path, backend_url) as home:
            origin = home.tenant_origin
            async with home.browser() as browser:  # type: ignore[attr-defined]
                await browser.sign_in("/")
                progress = {"got": 0.0, "killed_at": 0.0}

                async def download_and_kill() -> None:
                    async with browser.request("GET", f"{origin}/bytes/{DOWNLOAD}") as r:
                        assert r.status == 200
                        async for chunk in r.content.iter_chunked(64 * 1024):
                            progress["got"] += len(chunk)
                            if progress["got"] >= 2 * 1024 * 1024 and not progress["killed_at"]:
                                await home.relay.kill()
                                progress["killed_at"] = time.monotonic()

                # A clean failure, never a hang (a TimeoutError here fails the test).
                with pytest.raises(
                    (
                        aiohttp.ClientPayloadError,
                        aiohttp.ServerDisconnectedError,
                        aiohttp.ClientOSError,
                    )
                ):
                    await asyncio.wait_for(download_and_kill(), 20)
                failed_at = time.monotonic()
                got, killed_at = progress["got"], progress["killed_at"]
                assert killed_at, "the download never got going"
                assert got < DOWNLOAD  # truncated, never passed off as complete
                print(f"browser saw the failure {failed_at - killed_at:.2f} s after kill -9")
                assert failed_at - killed_at < 5

                # The add-on notices at once (the kernel closed the relay's sockets).
                down_at = await home.wait_state(State.DISCONNECTED, 5)
                assert down_at - killed_at < 3

                listening_at = await home.relay.start()
                back_at = await home.wait_state(State.CONNECTED, 35, connects=2)
                print(f"add-on back {back_at - listening_at:.2f} s after restart")
                assert back_at <= reconnect_deadline(logs, listening_at)

                status, body = await fetch(browser, f"{origin}/bytes/{4 * CHUNK}")
                assert status == 200
                assert (
                    hashlib.sha256(body).digest()
                    == hashlib.sha256(pattern_chunk(CHUNK) * 4).digest()
                )


# ------------------------------------------------------- (c) dead link


async def test_paused_relay_is_declared_dead_then_reconnected(
    tmp_path: Path, backend: tuple[str, Seen]
) -> None:
    backend_url, _seen = backend
    interval, timeout = 0.5, 1.0
    with RecordLogs("homeport.addon.client") as logs:
        async with start_home(
            tmp_path, backend_url, ping_interval=interval, ping_timeout=timeout
        ) as home:
            await asyncio.sleep(2 * interval)  # a few pings answered: the link is live
            assert home.addon.status.state is State.CONNECTED
            home.relay.pause()
            paused_at = time.monotonic()
            # The last pong came at most one interval before the pause; the pinger
            # checks once per interval: dead after (interval + timeout) without pongs.
            down_at = await home.wait_state(State.DISCONNECTED, 10)
            took = down_at - paused_at
            print(f"dead link declared {took:.2f} s after SIGSTOP")
            assert 0.5 <= took <= interval + timeout + interval + 0.5
            assert home.addon.status.last_error == "keepalive timeout"

            await asyncio.sleep(1.0)  # still paused: dial attempts stall in TLS
            home.relay.resume()
            resumed_at = time.monotonic()
            back_at = await home.wait_state(State.CONNECTED, 35, connects=2)
            print(f"add-on back {back_at - resumed_at:.2f} s after SIGCONT")
            assert back_at <= reconnect_deadline(logs, resumed_at) + addon_client.HANDSHAKE_TIMEOUT
            async with home.browser() as browser:  # type: ignore[attr-defined]
                page = await browser.sign_in("/")
                assert page.status == 200


async def test_stalled_relay_attempt_gives_up_and_backs_off(tmp_path: Path) -> None:
    """A relay that accepts TCP and then says nothing (hung, or a black hole) must
    not hold the add-on: each attempt ends after the handshake timeout."""
    accepted: list[float] = []
    held: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.append(time.monotonic())
        held.append(w)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = AddonConfig(
        relay_url=f"wss://homeport.localhost:{port}/v1/tunnel",
        ha_url="http://127.0.0.1:9",
        state_dir=tmp_path / "addon",
        pinned_keys=(),
        relay_ca=None,
        handshake_timeout=1.0,
    )
    try:
        with RecordLogs("homeport.addon.client") as logs:
            async with AddonClient(config) as addon:
                task = asyncio.create_task(addon.run_forever())
                try:
                    await wait_for(lambda: len(accepted) >= 2, 8)
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        failures = logs.events("addon.connect_failed")
        assert failures, "the first attempt never gave up"
        assert "TimeoutError" in str(failures[0][1]["error"])
        first_gave_up = failures[0][0] - accepted[0]
        assert 0.8 <= first_gave_up <= 2.5, first_gave_up
    finally:
        for w in held:
            w.close()
        server.close()


# ---------------------------------------------------------------- (d) backoff


def test_backoff_delay_is_full_jitter_doubling_to_the_cap() -> None:
    assert (BACKOFF_BASE, BACKOFF_CAP) == (1.0, 30.0)
    rng_state = random.getstate()
    try:
        for attempt in range(12):
            bound = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)
            samples = [backoff_delay(attempt) for _ in range(2000)]
            assert all(0 <= s <= bound for s in samples), attempt
            # Full jitter: uniform over the whole [0, bound], not "bound/2 + jitter".
            assert min(samples) < 0.05 * bound
            assert max(samples) > 0.95 * bound
            assert abs(statistics.fmean(samples) - bound / 2) < 0.05 * bound
        assert max(backoff_delay(10_000) for _ in range(500)) <= BACKOFF_CAP
    finally:
        random.setstate(rng_state)


async def test_attempts_against_a_closed_port_follow_the_backoff(tmp_path: Path) -> None:
    port = reserve_port()  # nothing listens here: every dial is refused at once
    attempts: list[float] = []
    config = AddonConfig(
        relay_url=f"wss://homeport.localhost:{port}/v1/tunnel",
        ha_url="http://127.0.0.1:9",
        state_dir=tmp_path / "addon",
        pinned_keys=(),
        relay_ca=None,
    )

    def on_status(status: addon_client.AddonStatus) -> None:
        if status.state is State.CONNECTING:
            attempts.append(time.monotonic())

    with RecordLogs("homeport.addon.client") as logs:
        async with AddonClient(config, on_status=on_status) as addon:
            task = asyncio.create_task(addon.run_forever())
            try:
                # Retries 0, 1, 2 wait at most 1 + 2 + 4 s; stop after 4 attempts or 8 s.
                with contextlib.suppress(TimeoutError):
                    await wait_for(lambda: len(attempts) >= 4, 8)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    retries = [float(fields["seconds"]) for _, fields in logs.events("addon.retry")]  # type: ignore[arg-type]
    failures = logs.events("addon.connect_failed")
    assert len(attempts) >= 3, attempts
    assert len(failures) >= len(attempts) - 1
    for n, delay in enumerate(retries):
        assert 0 <= delay <= min(BACKOFF_CAP, BACKOFF_BASE * 2**n), (n, retries)
    # The add-on really waited what it logged between two attempts.
    for n in range(len(attempts) - 1):
        gap = attempts[n + 1] - attempts[n]
        assert retries[n] - 0.05 <= gap <= retries[n] + 0.5, (n, gap, retries)


# ------------------------------------------------------------ (e) replaced


def assert_backed_off_after_replacement(logs: RecordLogs, run_task: object) -> int:
    """Each time this add-on was replaced it waited a logged backoff before dialling."""
    seq = logs.sequence(run_task)
    replaced = [i for i, (_, event, _) in enumerate(seq) if event == "addon.replaced"]
    for i in replaced:
        assert i + 1 < len(seq), seq[i:]
        assert seq[i + 1][1] == "addon.retry", seq[i:]
        waited_from, delay = seq[i + 1][0], float(seq[i + 1][2]["seconds"])  # type: ignore[arg-type]
        later = [t for t, event, _ in seq[i + 2 :] if event in ("addon.connected", "addon.retry")]
        if later:
            assert later[0] - waited_from >= delay - 0.05, (delay, later[0] - waited_from)
    return len(replaced)


async def test_second_connection_of_the_same_addon_replaces_the_first(tmp_path: Path) -> None:
    with RecordLogs("homeport.addon.client") as logs:
        async with start_stack(tmp_path) as stack:
            hub = stack.relay.hub
            first_tunnel = hub.tunnel_for(stack.instance_id)
            assert first_tunnel is not None
            async with stack.browser() as browser:
                await browser.sign_in("/")
                origin = stack.tenant_origin
                inflight = asyncio.create_task(fetch(browser, origin + "/slow?seconds=1"))
                await wait_for(lambda: first_tunnel.connection.open_streams > 0, 5)

                # The same add-on (same key) connects a second time.
                second = AddonClient(
                    AddonConfig(
                        relay_url=stack.addon.config.relay_url,
                        ha_url=stack.backend_url,
                        state_dir=tmp_path / "addon",
                        pinned_keys=stack.addon.config.pinned_keys,
                        relay_ca=stack.addon.config.relay_ca,
                        ping_interval=2.0,
                        ping_timeout=3.0,
                    )
                )
                async with second:
                    task = asyncio.create_task(second.run_forever())
                    try:
                        await wait_for(lambda: second.status.state is State.CONNECTED, 10)
                        # Newest wins: the hub routes new requests to the new tunnel at
                        # once, while the old one drains ...
                        newest = hub.tunnel_for(stack.instance_id)
                        assert newest is not None
                        assert newest is not first_tunnel
                        assert not first_tunnel.connection.accepting_streams
                        assert (await fetch(browser, origin + "/echo"))[0] == 200
                        # ... and its request in flight completes before it closes.
                        assert await asyncio.wait_for(inflight, 10) == (200, b"slow done")
                        await asyncio.wait_for(first_tunnel.closed.wait(), 5)

                        # The replaced add-on says so, and does not dial straight back
                        # (it would take over again, and the two would flap forever).
                        await wait_for(
                            lambda: any(
                                event == "addon.replaced"
                                for _, event, _ in logs.sequence(stack.addon_task)
                            ),
                            5,
                        )
                        assert any("replaced" in (s.last_error or "") for s in stack.statuses), (
                            stack.statuses[-3:]
                        )
                        # Let the two copies take turns for a while: every replaced one
                        # backs off first, so the turns are few and slow.
                        await asyncio.sleep(3)
                        turns = assert_backed_off_after_replacement(logs, stack.addon_task)
                        turns += assert_backed_off_after_replacement(logs, task)
                        total = stack.addon.status.connects + second.status.connects
                        print(f"{total} connections, {turns} replacements in about 4.5 s")
                        # Every connection but the first replaced one, and each replaced
                        # one says so once its tunnel has drained: the latest may still be
                        # draining (up to drain_seconds) when we count.
                        assert turns + 1 <= total <= turns + 2, (total, turns)
                        assert total <= 8
                        assert hub.tunnel_for(stack.instance_id) is not None
                        assert (await fetch(browser, origin + "/echo"))[0] == 200
                    finally:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
