"""A whole Homeport on loopback for end-to-end tests: relay, add-on and a backend.

``start_stack`` runs the real relay (TLS, SQLite, dev CA) and the real add-on
client in this process, linked to a fresh account, in front of either the
aiohttp stand-in or a real Home Assistant.  ``Browser`` is an aiohttp client
that behaves like one for our purposes: it keeps cookies per host, resolves
``*.localhost`` to loopback, trusts the dev CA and can walk the sign-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from ports import listening_socket
from yarl import URL

from homeport.addon.client import AddonClient, AddonConfig, AddonStatus, LocalhostResolver, State
from homeport.keys import write_secret_file
from homeport.relay.app import Relay
from homeport.relay.config import RelayConfig
from homeport.standin import start_standin
from homeport.tls.devca import CA_CERT_FILE, CA_KEY_FILE, DevCA

PASSWORD = "correct horse battery staple 42"


def seed_dev_ca(data_dir: Path, ca: DevCA) -> None:
    """Make ``ca`` the development CA of the relay about to run on ``data_dir``.

    The relay issues its server certificate from whatever CA it finds there, so
    relays seeded with the test session's CA (the ``dev_ca`` fixture) are all
    trusted by the session's one Chromium."""
    tls_dir = data_dir / "tls"
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copyfile(ca.cert_path, tls_dir / CA_CERT_FILE)
    write_secret_file(tls_dir / CA_KEY_FILE, ca.key_path.read_bytes(), replace=True)


@dataclass
class Stack:
    relay: Relay
    config: RelayConfig
    addon: AddonClient
    addon_task: asyncio.Task[None]
    backend_url: str
    email: str
    password: str
    data_dir: Path
    statuses: list[AddonStatus] = field(default_factory=list)
    standin: web.AppRunner | None = None

    @property
    def instance_id(self) -> str:
        assert self.addon.status.instance_id is not None
        return self.addon.status.instance_id

    @property
    def tenant_origin(self) -> str:
        return self.config.tenant_origin(self.instance_id)

    @property
    def account_origin(self) -> str:
        return self.config.account_origin

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "tls" / "dev-ca.pem"

    def browser(self, *, source_ip: str | None = None) -> Browser:
        return Browser(self, source_ip=source_ip)

    def companion_app(self, *, timeout: float | None = None) -> aiohttp.ClientSession:
        """The companion app: trusts the relay's CA, keeps no cookies, knows no session.

        Use as ``async with stack.companion_app() as app:``."""
        context = ssl.create_default_context(cafile=str(self.ca_path))
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, resolver=LocalhostResolver()),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def dial_again(self, timeout: float = 20) -> None:
        """The add-on dials again (as on a network change): the old tunnel ends on both
        sides, and this returns once the new one is up."""
        old = self.relay.hub.tunnel_for(self.instance_id)
        assert old is not None
        connects = self.addon.status.connects
        self.addon._reconnect_now.set()
        async with asyncio.timeout(timeout):
            while self.addon.status.connects == connects or not old.closed.is_set():
                await asyncio.sleep(0.05)
        await self.wait_connected(timeout)

    async def wait_connected(self, timeout: float = 20, *, recorded: bool = True) -> None:
        """Until the tunnel is up and (``recorded``) its connect time is in the database
        (written in batches, relay/presence.py), so a test sees the database as it stays."""
        async with asyncio.timeout(timeout):
            while not (
                self.addon.status.state is State.CONNECTED
                and self.relay.hub.tunnel_for(self.instance_id) is not None
                and not (recorded and self.relay.hub.presence.pending)
            ):
                await asyncio.sleep(0.02)


def make_addon(
    stack_config: RelayConfig,
    relay: Relay,
    ha_url: str,
    state_dir: Path,
    statuses: list[AddonStatus],
    relay_ca: Path | None = None,
    **addon_kwargs: Any,
) -> AddonClient:
    config = AddonConfig(
        relay_url=f"wss://{stack_config.account_host}{stack_config.port_suffix}/v1/tunnel",
        ha_url=ha_url,
        state_dir=state_dir,
        pinned_keys=(relay.server_key.public_key(),),
        relay_ca=relay_ca or stack_config.data_dir / "tls" / "dev-ca.pem",
        ping_interval=2.0,
        ping_timeout=3.0,
    )
    return AddonClient(config, on_status=lambda s: statuses.append(_copy(s)), **addon_kwargs)


def _copy(status: AddonStatus) -> AddonStatus:
    return AddonStatus(**vars(status))


@contextlib.asynccontextmanager
async def start_stack(
    tmp_path: Path,
    *,
    ha_url: str | None = None,
    email: str = "owner@example.com",
    config: RelayConfig | None = None,
    relay_ca: Path | None = None,
    ca: DevCA | None = None,
    sock: socket.socket | None = None,
    before_addon: Callable[[Relay], Awaitable[None]] | None = None,
    addon_kwargs: dict[str, Any] | None = None,
    **relay_options: Any,
) -> AsyncIterator[Stack]:
    """``config``: relay settings (default: dev CA, a port of the kernel's choosing,
    plus ``relay_options`` such as ``oidc_providers``); ``relay_ca``: the CA the
    add-on trusts (default: the dev CA); ``ca``: the dev CA to seed the relay's
    data dir with (the e2e ``stack`` fixture passes the session's, see
    :func:`seed_dev_ca`; default: a fresh one); ``sock``: a bound socket to serve
    on (:func:`ports.listening_socket`; default: one made here, or, with
    ``config``, the relay binds ``config.listen_port``); ``before_addon``: awaited
    once the relay listens, before the add-on dials (e.g. until the certificate
    bot has issued); ``addon_kwargs`` go to :class:`AddonClient` (e.g. ``gate=``,
    ``trust=``)."""
    data_dir = config.data_dir if config is not None else tmp_path / "relay"
    if config is None:
        sock = sock or listening_socket()
        options: dict[str, Any] = {
            "listen_port": sock.getsockname()[1],
            "drain_seconds": 2.0,
            **relay_options,
        }
        config = RelayConfig(data_dir=data_dir, **options)
    if ca is not None:
        seed_dev_ca(data_dir, ca)
    relay = Relay(config)
    try:
        await relay.start(sock=sock)
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    if before_addon is not None:
        try:
            await before_addon(relay)
        except BaseException:
            await relay.stop()
            raise
    standin = None
    if ha_url is None:
        standin, ha_url = await start_standin()
    await relay.accounts.create_user(email, PASSWORD)
    statuses: list[AddonStatus] = []
    addon = make_addon(
        config, relay, ha_url, tmp_path / "addon", statuses, relay_ca, **(addon_kwargs or {})
    )
    await addon.__aenter__()
    task = asyncio.create_task(addon.run_forever())
    stack = Stack(relay, config, addon, task, ha_url, email, PASSWORD, data_dir, statuses, standin)
    try:
        async with asyncio.timeout(20):
            while addon.status.link_code is None and addon.status.state is not State.CONNECTED:
                await asyncio.sleep(0.02)
        if addon.status.state is not State.CONNECTED:
            assert addon.status.link_code is not None
            await relay.accounts.link_instance(addon.status.link_code, email)
        await stack.wait_connected()
        yield stack
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await addon.__aexit__(None, None, None)
        await relay.stop()
        if standin is not None:
            await standin.cleanup()


class Browser:
    """Cookie-keeping HTTPS client that trusts the dev CA and signs in like a person."""

    def __init__(self, stack: Stack, *, source_ip: str | None = None) -> None:
        """``source_ip``: connect from this local address (e.g. ``127.0.0.2``: Linux routes
        all of 127/8 to loopback), so the relay sees a different client network."""
        self.stack = stack
        context = ssl.create_default_context(cafile=str(stack.ca_path))
        local_addr = (source_ip, 0) if source_ip else None
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                ssl=context, resolver=LocalhostResolver(), local_addr=local_addr
            ),
            cookie_jar=aiohttp.CookieJar(),
        )

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def sign_in_account_site(self) -> None:
        """Sign in to the account site only (no tenant host), as the stack's owner."""
        async with self.request(
            "POST",
            self.stack.account_origin + "/signin",
            data={"email": self.stack.email, "password": self.stack.password, "next": "/"},
            headers={"Origin": self.stack.account_origin},
        ) as r:
            assert r.status == 303, await r.text()

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        kwargs.setdefault("allow_redirects", False)
        return self.session.request(method, url, **kwargs)

    async def sign_in(
        self, path: str = "/", *, email: str | None = None, password: str | None = None
    ) -> aiohttp.ClientResponse:
        """Open ``path`` on the tenant host and walk the whole sign-in; returns the final page.

        Signs in as the stack's owner unless ``email``/``password`` name another account.
        """
        stack = self.stack
        url = stack.tenant_origin + path
        navigate = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate"}
        for _ in range(10):
            async with self.session.get(url, headers=navigate, allow_redirects=False) as r:
                if r.status != 303:
                    await r.read()
                    return r
                location = URL(r.headers["Location"])
                if not location.is_absolute():
                    location = r.url.join(location)
            if location.path == "/signin" and location.host == stack.config.account_host:
                async with self.session.post(
                    str(location.with_query(None)),
                    data={
                        "email": email or stack.email,
                        "password": password or stack.password,
                        "next": location.query.get("next", "/"),
                    },
                    headers={"Origin": stack.account_origin},
                    allow_redirects=False,
                ) as r:
                    assert r.status == 303, await r.text()
                    location = r.url.join(URL(r.headers["Location"]))
            url = str(location)
        raise AssertionError("sign-in did not finish in 10 redirects")
