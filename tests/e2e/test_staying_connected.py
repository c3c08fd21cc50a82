"""Staying connected: a paused add-on, a black-holed network, Home Assistant restarting.

The relay runs in this process with a short tunnel keepalive (1 s ping, 2 s
timeout) so dead links are found in seconds.  Every wait is bounded, with room
for a loaded two-core machine; the bounds come from the keepalive and backoff
constants, not from measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from ha_core import HomeAssistant
from ports import listening_socket, reserve_port
from stack import PASSWORD, Browser, start_stack

from homeport.addon.client import (
    BACKOFF_BASE,
    HANDSHAKE_TIMEOUT,
    AddonClient,
    AddonConfig,
    AddonStatus,
    State,
)
from homeport.addon.gate import RemoteAccessGate
from homeport.addon.ha_trust import Trust, TrustMonitor
from homeport.addon.panel import Panel, PanelSources
from homeport.keys import public_key_text
from homeport.relay.app import Relay
from homeport.relay.config import RelayConfig
from homeport.standin import start_standin

pytestmark = pytest.mark.timeout(150)

EMAIL = "owner@example.com"
PING, PONG_TIMEOUT = 1.0, 2.0
#: Longest time to find a dead link: the last pong just before the cut, then a
#: check once per interval, plus room for a busy machine.
DEAD_WITHIN = PING + PONG_TIMEOUT + PING + 4.0
#: Back after the network (or the process) returns: a dial after at most one
#: backoff step from a fresh start, plus the TLS and tunnel handshakes.
BACK_WITHIN = 2 * BACKOFF_BASE + 8.0
HOMEPORT = Path(sys.executable).with_name("homeport")


@dataclass
class Site:
    """What :class:`stack.Browser` needs (duck-types ``stack.Stack``)."""

    relay: Relay
    instance_id: str = ""
    email: str = EMAIL
    password: str = PASSWORD

    @property
    def config(self) -> RelayConfig:
        return self.relay.config

    @property
    def ca_path(self) -> Path:
        return self.relay.config.data_dir / "tls" / "dev-ca.pem"

    @property
    def tenant_origin(self) -> str:
        return self.config.tenant_origin(self.instance_id)

    @property
    def account_origin(self) -> str:
        return self.config.account_origin

    def browser(self) -> Browser:
        return Browser(self)  # type: ignore[arg-type]

    def tunnel_up(self) -> bool:
        return self.relay.hub.tunnel_for(self.instance_id) is not None


@contextlib.asynccontextmanager
async def short_keepalive_relay(tmp_path: Path) -> AsyncIterator[Site]:
    sock = listening_socket()
    config = RelayConfig(
        data_dir=tmp_path / "relay",
        listen_port=sock.getsockname()[1],
        drain_seconds=1.0,
        tunnel_ping_interval=PING,
        tunnel_ping_timeout=PONG_TIMEOUT,
    )
    relay = Relay(config)
    await relay.start(sock=sock)
    try:
        await relay.accounts.create_user(EMAIL, PASSWORD)
        yield Site(relay)
    finally:
        await relay.stop()


async def until(predicate: object, timeout: float, what: str) -> float:
    """Wait for ``predicate()``; returns when it became true (``time.monotonic()``)."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # type: ignore[operator]
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {timeout:.1f} s: {what}") from None
    return time.monotonic()


async def panel_state(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        assert r.status == 200
        found = re.search(r'class="state state-(\w+)"', await r.text())
        assert found
        return found[1]


async def answer_status(browser: Browser, url: str) -> int:
    """A request must be answered, never left hanging."""
    async with asyncio.timeout(15), browser.request("GET", url) as r:
        await r.read()
        return r.status


# ---------------------------------------------------------------- paused add-on


async def test_paused_addon_is_declared_dead_and_comes_back(tmp_path: Path) -> None:
    """SIGSTOP the add-on process past the keepalive; SIGCONT: it reconnects at once."""
    standin, ha_url = await start_standin()
    proc: asyncio.subprocess.Process | None = None
    try:
        async with short_keepalive_relay(tmp_path) as site:
            panel_port = reserve_port()
            config = site.config
            proc = await asyncio.create_subprocess_exec(
                str(HOMEPORT),
                "addon",
                "--relay",
                f"wss://{config.account_host}{config.port_suffix}/v1/tunnel",
                "--server-pubkey",
                public_key_text(site.relay.server_key.public_key()),
                "--ha-url",
                ha_url,
                "--state-dir",
                str(tmp_path / "addon"),
                "--relay-ca",
                str(site.ca_path),
                "--panel-listen",
                f"127.0.0.1:{panel_port}",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
            )
            assert proc.stdout is not None
            code = None
            async with asyncio.timeout(30):
                while code is None:
                    line = (await proc.stdout.readline()).decode()
                    assert line, "add-on exited"
                    if found := re.search(r"Link code: (\S+)", line):
                        code = found[1]
            drain = asyncio.create_task(proc.stdout.read())  # keep the pipe flowing
            panel = f"http://127.0.0.1:{panel_port}/"
            assert await panel_state(panel) == "unlinked"
            site.instance_id = (await site.relay.accounts.link_instance(code, EMAIL)).id
            await until(site.tunnel_up, 20, "add-on connected after linking")
            assert await panel_state(panel) == "connected"

            async with site.browser() as browser:
                assert (await browser.sign_in("/bytes/10")).status == 200
                proc.send_signal(signal.SIGSTOP)
                stopped = time.monotonic()
                dead = await until(lambda: not site.tunnel_up(), DEAD_WITHIN, "relay saw it dead")
                print(f"relay declared the paused add-on dead after {dead - stopped:.2f} s")
                assert dead - stopped >= PONG_TIMEOUT  # not before the keepalive allows
                # The person gets a clean "offline" page at once, no hang.
                assert await answer_status(browser, site.tenant_origin + "/bytes/10") == 503
                await asyncio.sleep(PING)

                proc.send_signal(signal.SIGCONT)
                resumed = time.monotonic()
                back = await until(site.tunnel_up, BACK_WITHIN, "add-on back after SIGCONT")
                print(f"add-on reconnected {back - resumed:.2f} s after SIGCONT")
                assert await panel_state(panel) == "connected"
                assert await answer_status(browser, site.tenant_origin + "/bytes/10") == 200
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
            await drain
    finally:
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            await proc.wait()
        await standin.cleanup()


# ------------------------------------------------------------ black-holed network


@dataclass
class BlackHole:
    """A loopback TCP proxy that can stop carrying bytes (held, not dropped), like a
    network path that silently loses every packet until it comes back."""

    target_port: int
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> None:
        self.flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.flowing.wait()  # a new connection stalls too, as SYNs would
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:  # the relay is gone (test teardown)
            writer.close()
            return
        self._writers |= {writer, up_writer}
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while True:
                await self.flowing.wait()
                data = await reader.read(65536)
                if not data:
                    return
                await self.flowing.wait()  # bytes read just before the cut are held
                writer.write(data)
                await writer.drain()

    async def close(self) -> None:
        self.flowing.set()
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.close()


async def test_black_holed_link_is_detected_and_recovers(tmp_path: Path) -> None:
    standin, ha_url = await start_standin()
    try:
        async with short_keepalive_relay(tmp_path) as site:
            hole = BlackHole(site.config.listen_port)
            await hole.start()
            statuses: list[AddonStatus] = []
            addon = AddonClient(
                AddonConfig(
                    relay_url=f"wss://{site.config.account_host}:{hole.port}/v1/tunnel",
                    ha_url=ha_url,
                    state_dir=tmp_path / "addon",
                    pinned_keys=(site.relay.server_key.public_key(),),
                    relay_ca=site.ca_path,
                    ping_interval=PING,
                    ping_timeout=PONG_TIMEOUT,
                ),
                on_status=lambda s: statuses.append(AddonStatus(**vars(s))),
            )
            panel = Panel(
                PanelSources(
                    status=lambda: addon.status,
                    gate=RemoteAccessGate(tmp_path / "addon"),
                    trust=None,
                    ha_how=f"Home Assistant at {ha_url} (configured)",
                    account_origin=site.account_origin,
                ),
                allowed_peers=("127.0.0.1",),
            )
            await panel.start("127.0.0.1", 0)
            panel_url = f"http://127.0.0.1:{panel.port}/"
            try:
                async with addon:
                    runner = asyncio.create_task(addon.run_forever())
                    await until(lambda: addon.status.link_code is not None, 20, "link code")
                    assert addon.status.link_code is not None
                    linked = await site.relay.accounts.link_instance(addon.status.link_code, EMAIL)
                    site.instance_id = linked.id
                    await until(site.tunnel_up, 20, "connected through the proxy")
                    assert await panel_state(panel_url) == "connected"
                    async with site.browser() as browser:
                        assert (await browser.sign_in("/bytes/10")).status == 200

                        hole.flowing.clear()
                        cut = time.monotonic()
                        await until(
                            lambda: addon.status.state is not State.CONNECTED,
                            DEAD_WITHIN,
                            "add-on saw the dead link",
                        )
                        print(f"add-on declared the link dead after {time.monotonic() - cut:.2f} s")
                        assert "keepalive timeout" in [s.last_error for s in statuses]
                        await until(lambda: not site.tunnel_up(), DEAD_WITHIN, "relay too")
                        assert await panel_state(panel_url) in ("error", "connecting")
                        assert await answer_status(browser, site.tenant_origin + "/") == 503
                        await asyncio.sleep(PING)  # a dial attempt now stalls in the hole

                        hole.flowing.set()
                        restored = time.monotonic()
                        back = await until(site.tunnel_up, BACK_WITHIN + HANDSHAKE_TIMEOUT, "back")
                        print(f"add-on back {back - restored:.2f} s after the network returned")
                        # The relay registers the tunnel a moment before the add-on's own
                        # handshake step marks it connected: wait for the add-on's view too.
                        await until(
                            lambda: (
                                addon.status.connects == 2 and addon.status.state is State.CONNECTED
                            ),
                            5,
                            "add-on connected again",
                        )
                        assert await panel_state(panel_url) == "connected"
                        assert await answer_status(browser, site.tenant_origin + "/bytes/10") == 200
                    runner.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await runner
            finally:
                await panel.stop()
                await hole.close()
    finally:
        await standin.cleanup()


# ----------------------------------------------------- Home Assistant restarting


@pytest.mark.homeassistant
async def test_home_assistant_restart_under_an_open_session(
    tmp_path: Path, home_assistant: HomeAssistant
) -> None:
    """Requests during the outage get a clean 502 page; the tunnel and session stay;
    the panel shows Home Assistant not answering, then trusted again."""
    ha = home_assistant
    monitor = TrustMonitor(ha.url, supervised=False, interval=1.0, retry_interval=0.5)
    async with (
        start_stack(tmp_path, ha_url=ha.url, addon_kwargs={"trust": monitor}) as stack,
        stack.browser() as browser,
        aiohttp.ClientSession() as probes,
    ):
        watching = asyncio.create_task(monitor.run(probes))
        panel = Panel(
            PanelSources(
                status=lambda: stack.addon.status,
                gate=RemoteAccessGate(tmp_path / "gate"),
                trust=monitor,
                ha_how=f"Home Assistant at {ha.url} (configured)",
                account_origin=stack.account_origin,
            ),
            allowed_peers=("127.0.0.1",),
        )
        await panel.start("127.0.0.1", 0)
        panel_url = f"http://127.0.0.1:{panel.port}/"
        try:
            await until(lambda: monitor.report.trust is Trust.TRUSTED, 30, "trust checked")
            assert (await browser.sign_in("/")).status == 200
            origin = stack.tenant_origin
            ws = await browser.session.ws_connect(
                origin.replace("https://", "wss://") + "/api/websocket", origin=origin
            )
            assert (await ws.receive_json(timeout=10))["type"] == "auth_required"
            await ws.send_json({"type": "auth", "access_token": ha.long_lived_token})
            assert (await ws.receive_json(timeout=10))["type"] == "auth_ok"
            connects = stack.addon.status.connects

            restart = asyncio.create_task(ha.restart())
            # The open WebSocket is closed, not left hanging.
            closing = await ws.receive(timeout=30)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            seen: list[int] = []
            panel_said_down = False
            while not restart.done():
                status = await answer_status(browser, origin + "/manifest.json")
                seen.append(status)
                if status == 502:
                    async with browser.request("GET", origin + "/manifest.json") as r:
                        if r.status == 502:
                            assert "Home Assistant is not answering" in await r.text()
                    page = await _panel_html(panel_url)
                    assert "state state-connected" in page  # the tunnel itself is fine
                    panel_said_down = panel_said_down or "did not answer" in page
                await asyncio.sleep(0.3)
            await restart
            print(f"statuses during the restart: {sorted(set(seen))}")
            assert 502 in seen
            assert set(seen) <= {200, 502, 503, 504}
            assert panel_said_down, "the panel never showed Home Assistant down"
            assert monitor.send_forwarded()  # the verdict held through the restart

            assert stack.addon.status.state is State.CONNECTED
            assert stack.addon.status.connects == connects  # the tunnel never dropped
            assert await answer_status(browser, origin + "/manifest.json") == 200
            async with browser.session.ws_connect(
                origin.replace("https://", "wss://") + "/api/websocket", origin=origin
            ) as again:
                assert (await again.receive_json(timeout=10))["type"] == "auth_required"
                await again.send_json({"type": "auth", "access_token": ha.long_lived_token})
                assert (await again.receive_json(timeout=10))["type"] == "auth_ok"
            await until(lambda: monitor.report.trust is Trust.TRUSTED, 30, "trusted again")
            assert "trusts the add-on" in await _panel_html(panel_url)
        finally:
            watching.cancel()
            await panel.stop()


async def _panel_html(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        return await r.text()
