"""``homeport dev``: a relay, an add-on and Home Assistant (or a stand-in), on one machine.

Everything runs on embedded defaults: a development CA and certificate in
the data folder, SQLite, a development account with a generated password,
and the add-on linked to it automatically.  Browsers resolve ``*.localhost``
to loopback themselves, so the printed URLs work without any DNS set-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
from pathlib import Path

import aiohttp
from aiohttp import web

from homeport.accounts.errors import AccountExists
from homeport.addon.client import AddonClient, AddonConfig, AddonStatus, State
from homeport.keys import read_secret_file, write_secret_file
from homeport.relay.app import Relay
from homeport.relay.config import RelayConfig
from homeport.signals import until_stop_signal
from homeport.standin import start_standin

DEV_EMAIL = "dev@homeport.localhost"
WORDS = [
    "amber",
    "bridge",
    "cedar",
    "delta",
    "ember",
    "fjord",
    "garnet",
    "harbor",
    "island",
    "juniper",
    "kettle",
    "lantern",
    "meadow",
    "nickel",
    "orchid",
    "pepper",
    "quartz",
    "river",
    "saffron",
    "timber",
    "umber",
    "velvet",
    "willow",
    "yonder",
    "zephyr",
]


def passphrase() -> str:
    return "-".join(secrets.choice(WORDS) for _ in range(5))


async def ha_answers(url: str) -> bool:
    timeout = aiohttp.ClientTimeout(total=3)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url.rstrip("/") + "/manifest.json") as response,
        ):
            return response.status < 500
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


async def _dev_credentials(relay: Relay, data_dir: Path) -> tuple[str, str]:
    path = data_dir / "dev-credentials.txt"
    if path.exists():
        email, password = read_secret_file(path).decode().split("\n")[:2]
        return email, password
    password = passphrase()
    with contextlib.suppress(AccountExists):
        await relay.accounts.create_user(DEV_EMAIL, password)
    write_secret_file(path, f"{DEV_EMAIL}\n{password}\n".encode(), replace=True)
    return DEV_EMAIL, password


async def run_dev(args: argparse.Namespace) -> None:
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Without SMTP, mails (sign-in codes, reset links) are printed here: dev only.
    config = RelayConfig(
        data_dir=data_dir,
        listen_port=int(args.port),
        smtp=getattr(args, "smtp", None),
        dev_console_mail=True,
        signup=getattr(args, "signup_open", True),
    )
    relay = Relay(config)
    await relay.start()
    email, password = await _dev_credentials(relay, data_dir)

    ha_url = str(args.ha_url)
    standin: web.AppRunner | None = None
    if not await ha_answers(ha_url):
        print(
            f"\n! No Home Assistant answers at {ha_url}.\n"
            "  To use a real one, start it (for example `hass --config ./ha-config` after\n"
            "  `pip install homeassistant`, or the Home Assistant container on port 8123)\n"
            "  and run `homeport dev --ha-url http://127.0.0.1:8123` again.\n"
            "  Serving a small stand-in instead, so you can try the relay now.",
            flush=True,
        )
        standin, ha_url = await start_standin()

    linked = asyncio.Event()

    def on_status(status: AddonStatus) -> None:
        if status.state is State.UNLINKED and status.link_code:
            asyncio.get_running_loop().create_task(_link(status.link_code))
        if status.state is State.CONNECTED:
            linked.set()

    async def _link(code: str) -> None:
        await relay.accounts.link_instance(code, email, name="Development home")

    addon_config = AddonConfig(
        relay_url=f"wss://{config.account_host}{config.port_suffix}/v1/tunnel",
        ha_url=ha_url,
        state_dir=data_dir / "addon",
        pinned_keys=(relay.server_key.public_key(),),
        relay_ca=data_dir / "tls" / "dev-ca.pem",
    )
    async with AddonClient(addon_config, on_status=on_status) as addon:
        runner = asyncio.create_task(addon.run_forever())
        async with asyncio.timeout(30):
            await linked.wait()
        print(
            "\nHomeport is running.\n"
            f"  Open:        {addon.status.public_url}/\n"
            f"  Account:     {config.account_origin}/\n"
            f"  Sign in as:  {email}\n"
            f"  Password:    {password}\n"
            f"  Trust CA:    {data_dir / 'tls' / 'dev-ca.pem'}\n"
            f"  Forwarding:  {ha_url}\n"
            f"  {relay.mail.summary(config)}\n"
            "Press Ctrl+C to stop.",
            flush=True,
        )
        await until_stop_signal()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    await relay.stop()
    if standin is not None:
        await standin.cleanup()
