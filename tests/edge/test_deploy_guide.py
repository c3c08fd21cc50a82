"""docs/deploy.md's quick start, followed command by command, so the guide cannot rot.

The test reads the "Quick start" section and, in order, runs every ``sh`` block
line by line and writes every file block (a fenced block whose first line is
``# /path``), with only these replaced:

* the example names by loopback ones (``homeport.example.com`` →
  ``homeport.localhost``, ``example-homes.net`` → ``home.localhost``), the DNS
  server by a real BIND on loopback holding the records of section 2 and a TSIG
  key allowed to write only ``_acme-challenge``, Let's Encrypt by pebble;
* ``/opt``, ``/etc`` and ``/var/lib`` paths by directories under the test's,
  ports 443 and 80 by free loopback ports, ``pip install 'homeport[relay]'`` by
  the wheel of this checkout with the same extra (the release does not exist on
  PyPI yet);
* what needs root and systemd: ``sudo`` and ``-u``/``-o homeport`` are dropped,
  ``useradd`` is skipped, and ``systemctl enable --now homeport-relay`` starts
  the unit's own ``ExecStart`` with its ``Environment``;
* the link code of step 6 by the code the test's add-on shows.

Step 2 (records at the DNS provider) is the one manual step; the test plays the
DNS provider.  Then a person signs in to the home the guide linked, through the
wildcard certificate the relay obtained by DNS-01, and reaches Home Assistant.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from bind import Zone, named_available, start_named
from guide_walk import (
    Block,
    Translation,
    as_root_would,
    blocks,
    build_wheel,
    commands,
    section,
    sh,
    unit_command,
)
from pebble import pebble_available, start_pebble
from ports import reserve_port
from stack import PASSWORD, Browser

from homeport.addon.client import AddonClient, AddonConfig, State
from homeport.keys import parse_pinned_keys
from homeport.relay.config import RelayConfig
from homeport.standin import start_standin

pytestmark = [
    pytest.mark.skipif(not pebble_available(), reason="scripts/system-deps: pebble"),
    pytest.mark.skipif(not named_available(), reason="scripts/system-deps: bind9"),
    pytest.mark.timeout(900),
]

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "deploy.md"
UNIT = REPO / "packaging" / "homeport-relay.service"
ACCOUNT_HOST = "homeport.localhost"
TENANT_DOMAIN = "home.localhost"
EMAIL = "you@example.com"
ZONE = Zone(
    "localhost",
    records="homeport IN A 127.0.0.1\n*.home IN A 127.0.0.1\n",
    grants=(f"name _acme-challenge.{TENANT_DOMAIN}. TXT",),
)


def quick_start() -> list[Block]:
    return blocks(section(GUIDE, "## Quick start"))


def test_the_quick_start_is_what_the_test_follows() -> None:
    """If a block changes kind or disappears, the walk below must be looked at again."""
    blocks = quick_start()
    assert [b.kind for b in blocks] == ["sh", "sh", "file", "sh", "sh", "sh", "sh", "sh"]
    assert blocks[2].path == "/etc/homeport/relay.toml"
    config = blocks[2].text
    for key in ("account-host", "tenant-domain", "acme-directory", "dns-server", "data-dir"):
        assert f"\n{key} = " in config, key
    assert "tls-cert" not in config, "the quick start is the ACME path"


@dataclass
class Walk:
    root: Path
    work: Path
    wheel: Path
    tls_port: int
    http_port: int
    dns: str
    directory: str
    ca_bundle: Path
    pebble_root: Path
    relay: asyncio.subprocess.Process | None = None
    relay_log: Path | None = None
    pubkey: str = ""
    link_code: str = ""
    listed: str = ""

    def pairs(self) -> list[tuple[str, str]]:
        return [
            ("https://acme-v02.api.letsencrypt.org/directory", self.directory),
            ("https://homeport.example.com/", f"https://{ACCOUNT_HOST}:{self.tls_port}/"),
            ("wss://homeport.example.com/", f"wss://{ACCOUNT_HOST}:{self.tls_port}/"),
            ("homeport.example.com", ACCOUNT_HOST),
            ("example-homes.net", TENANT_DOMAIN),
            ("ns1.example.com", self.dns),
            ("0.0.0.0:443", f"127.0.0.1:{self.tls_port}"),
            ("0.0.0.0:80", f"127.0.0.1:{self.http_port}"),
            ("public-port = 443", f"public-port = {self.tls_port}"),
            ("pip install 'homeport[relay]'", f"pip install '{self.wheel}[relay]'"),
            ("packaging/", f"{REPO}/packaging/"),
            ("/etc/systemd/system/", f"{self.root}/etc/systemd/system/"),
            ("/etc/homeport", f"{self.root}/etc/homeport"),
            ("/var/lib/homeport", f"{self.root}/var/lib/homeport"),
            ("/opt/homeport", f"{self.root}/opt/homeport"),
            ("ABCDE-FGHJK", self.link_code or "ABCDE-FGHJK"),
        ]

    def translate(self, text: str) -> str:
        return Translation(self.pairs()).apply(text)

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("HOMEPORT_", "PYTHON", "VIRTUAL_ENV", "OPENSSL_CONF"))
        }
        env.update(HOME=str(self.root / "home"), TMPDIR=str(self.root / "tmp"))
        return env


async def _sh(walk: Walk, command: str, *, stdin: str = "", timeout: float = 300) -> str:
    return await sh(command, cwd=walk.work, env=walk.env(), stdin=stdin, timeout=timeout)


async def _start_unit(walk: Walk) -> None:
    """``systemctl enable --now homeport-relay``: the installed unit's ExecStart."""
    installed = walk.root / "etc" / "systemd" / "system" / "homeport-relay.service"
    argv, unit_env = unit_command(installed, Translation([(o, n) for o, n in walk.pairs()]))
    env = {**walk.env(), **unit_env}
    # Test only: pebble's directory is served with a certificate from its own CA.
    env["HOMEPORT_ACME_CA_FILE"] = str(walk.ca_bundle)
    (walk.root / "var" / "lib" / "homeport").mkdir(parents=True, mode=0o700, exist_ok=True)
    walk.relay_log = walk.root / "relay.log"
    with walk.relay_log.open("wb") as log:
        walk.relay = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=walk.work, stdout=log, stderr=log,
            stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    async with asyncio.timeout(60):
        while b"Relay listening" not in walk.relay_log.read_bytes():
            assert walk.relay.returncode is None, walk.relay_log.read_text()[-3000:]
            await asyncio.sleep(0.1)


async def _until_ok(walk: Walk, command: str) -> str:
    """``curl`` of step 4: the relay starts on a placeholder until the CA has issued."""
    curl = command.replace("curl ", f"curl --cacert {walk.pebble_root} --max-time 10 ", 1)
    deadline = time.monotonic() + 180
    while True:
        with contextlib.suppress(AssertionError):
            return await _sh(walk, curl, timeout=30)
        assert time.monotonic() < deadline, walk.relay_log.read_text()[-3000:]  # type: ignore[union-attr]
        await asyncio.sleep(1)


async def _run_line(walk: Walk, line: str, addon: AddonHome) -> None:
    command = as_root_would(line)
    if command is None:
        return
    if "systemctl" in command:
        assert command == "systemctl daemon-reload && systemctl enable --now homeport-relay"
        await _start_unit(walk)
        return
    if " admin link " in command:
        walk.link_code = await addon.start(walk)
    command = walk.translate(command)
    if command.startswith("curl "):
        assert (await _until_ok(walk, command)).strip() == "ok"
    elif " admin user create " in command:
        await _sh(walk, command, stdin=PASSWORD + "\n")
    elif " keys show" in command:
        walk.pubkey = (await _sh(walk, command)).strip()
    elif " admin instance list" in command:
        async with asyncio.timeout(30):
            while " connected " not in walk.listed:
                walk.listed = await _sh(walk, command)
                await asyncio.sleep(0.5)
    else:
        await _sh(walk, command)


@dataclass
class AddonHome:
    """The owner's add-on of step 6, pinned to the key the guide printed."""

    backend: str
    state: Path
    client: AddonClient | None = None
    task: asyncio.Task[None] | None = None

    async def start(self, walk: Walk) -> str:
        relay_url = walk.translate("wss://homeport.example.com/v1/tunnel")
        config = AddonConfig(
            relay_url=relay_url,
            ha_url=self.backend,
            state_dir=self.state,
            pinned_keys=tuple(parse_pinned_keys(walk.pubkey)),
            relay_ca=walk.pebble_root,
        )
        self.client = AddonClient(config)
        await self.client.__aenter__()
        self.task = asyncio.create_task(self.client.run_forever())
        async with asyncio.timeout(60):
            while self.client.status.link_code is None:
                assert not self.task.done()
                await asyncio.sleep(0.05)
        return self.client.status.link_code

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.client is not None:
            await self.client.__aexit__(None, None, None)


@dataclass
class GuideHome:
    """What :class:`stack.Browser` needs to sign in to the home the guide linked."""

    config: RelayConfig
    ca_path: Path
    instance_id: str
    email: str = EMAIL
    password: str = PASSWORD

    @property
    def tenant_origin(self) -> str:
        return self.config.tenant_origin(self.instance_id)

    @property
    def account_origin(self) -> str:
        return self.config.account_origin


async def test_deploy_guide_quick_start(tmp_path: Path) -> None:
    blocks = quick_start()
    tls_port, http_port = reserve_port(), reserve_port()
    root, work = tmp_path / "server", tmp_path / "work"
    # What a Debian server has before step 1.
    for directory in (root / "home", root / "tmp", root / "etc/systemd/system", work):
        directory.mkdir(parents=True)
    wheel = await build_wheel(tmp_path / "dist")
    standin, backend = await start_standin()
    addon = AddonHome(backend, tmp_path / "addon")
    with (
        start_named(tmp_path / "named", [ZONE]) as named,
        start_pebble(
            tmp_path / "pebble", http_port=http_port, tls_port=tls_port, dns_port=named.port
        ) as pebble,
    ):
        pebble_root = tmp_path / "pebble-root.pem"
        pebble_root.write_bytes(pebble.root_pem())
        walk = Walk(
            root, work, wheel, tls_port, http_port, f"127.0.0.1:{named.port}",
            pebble.directory_url, pebble.ca_bundle, pebble_root,
        )  # fmt: skip
        # Step 2, at "the DNS provider": the key the DNS server accepts, given to the relay.
        shutil.copy(named.key_file, work / "tsig.key")
        try:
            for block in blocks:
                if block.kind == "file":
                    path = Path(walk.translate(block.path))
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(walk.translate(block.text))
                    continue
                for line in commands(block):
                    await _run_line(walk, line, addon)
            # The guide's last word: the home is connected, at its address.
            assert addon.client is not None
            assert addon.client.status.state is State.CONNECTED
            instance_id = addon.client.status.instance_id
            assert instance_id is not None
            url = f"https://{instance_id}.{TENANT_DOMAIN}:{tls_port}"
            assert f"{instance_id}  {EMAIL}  connected  {url}" in walk.listed
            # A person signs in and reaches Home Assistant through the wildcard certificate.
            config = RelayConfig(
                data_dir=root, account_host=ACCOUNT_HOST, tenant_domain=TENANT_DOMAIN,
                listen_port=tls_port,
            )  # fmt: skip
            home = GuideHome(config, pebble_root, instance_id)
            async with Browser(home) as browser:  # type: ignore[arg-type]
                page = await browser.sign_in("/bytes/1000")
                assert page.status == 200
                async with browser.request("GET", home.tenant_origin + "/bytes/12345") as r:
                    assert r.status == 200
                    assert len(await r.read()) == 12345
            assert walk.relay_log is not None
            async with asyncio.timeout(20):  # the relay writes its log from a thread
                while walk.relay_log.read_text().count('"event":"acme.renewed"') < 2:
                    await asyncio.sleep(0.2)  # account host and wildcard
            assert '"event":"acme.caa_records"' in walk.relay_log.read_text()
        finally:
            await addon.close()
            if walk.relay is not None and walk.relay.returncode is None:
                walk.relay.terminate()
                try:
                    await asyncio.wait_for(walk.relay.wait(), 30)
                except TimeoutError:
                    walk.relay.kill()
                    await walk.relay.wait()
            await standin.cleanup()
