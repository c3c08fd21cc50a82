"""The whole add-on process: discovery, the tunnel client, the trust monitor, the panel.

``homeport addon`` builds one :class:`AddonRuntime` and runs it until a signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from yarl import URL

from homeport.addon.client import AddonClient, AddonConfig, LocalhostResolver
from homeport.addon.discovery import DiscoveryError, discover
from homeport.addon.gate import RemoteAccessGate
from homeport.addon.ha_trust import TrustMonitor
from homeport.addon.panel import INGRESS_PROXY, Panel, PanelSources
from homeport.addon.trust_setup import SUPERVISED_CONFIG, CoreApi, TrustSetup
from homeport.addon.trust_setup import available as trust_setup_available

log = logging.getLogger(__name__)

#: ``config.yaml``'s ``ingress_port``.
INGRESS_PORT = 8099


@dataclass(frozen=True)
class PanelSettings:
    host: str
    port: int
    allowed_peers: tuple[str, ...]


def default_panel(*, supervised: bool) -> PanelSettings:
    """Add-on mode: every interface, ingress proxy only.  Standalone: loopback only."""
    if supervised:
        return PanelSettings("0.0.0.0", INGRESS_PORT, (INGRESS_PROXY,))  # noqa: S104
    return PanelSettings("127.0.0.1", INGRESS_PORT, ("127.0.0.1", "::1"))


def parse_panel(listen: str | None, allow: str | None, *, supervised: bool) -> PanelSettings | None:
    """``--panel-listen host:port|off`` and ``--panel-allow a,b``; None when switched off."""
    default = default_panel(supervised=supervised)
    if listen is not None and listen.strip().lower() == "off":
        return None
    host, port = default.host, default.port
    if listen:
        host_part, _, port_part = listen.rpartition(":")
        if not port_part.isdigit() or not 0 <= int(port_part) < 65536:
            raise ValueError(f"--panel-listen must be host:port or off, not {listen!r}")
        host, port = host_part.strip("[]") or host, int(port_part)
    peers = default.allowed_peers
    if allow:
        peers = tuple(p.strip() for p in allow.replace(" ", ",").split(",") if p.strip())
        for peer in peers:
            try:
                ipaddress.ip_address(peer)
            except ValueError:
                raise ValueError(f"--panel-allow needs IP addresses, not {peer!r}") from None
    return PanelSettings(host, port, peers)


def check_not_panel(ha_url: str, panel: PanelSettings | None) -> None:
    """The forwarder must never be pointed at the panel (it would be reachable remotely)."""
    if panel is None:
        return
    url = URL(ha_url)
    if url.port != panel.port:
        return
    host = (url.host or "").strip("[]")
    local = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", panel.host}  # noqa: S104
    if host in local or host.endswith(".localhost"):
        raise StartupError(
            f"the Home Assistant URL {ha_url} is the add-on's own panel; point it at Home Assistant"
        )


class StartupError(RuntimeError):
    """The add-on cannot start as configured; the message says what to change."""


class AddonRuntime:
    def __init__(
        self,
        config: AddonConfig,
        *,
        supervisor_token: str | None,
        panel: PanelSettings | None,
        ha_url_given: bool,
        supervisor_url: str = "http://supervisor",
        trust_interval: float = 60.0,
        ha_config: Path | None = None,
        ha_token: str | None = None,
    ) -> None:
        self.config = config
        self.supervisor_token = supervisor_token
        self.supervised = bool(supervisor_token)
        self.panel_settings = panel
        self.ha_url_given = ha_url_given
        self.supervisor_url = supervisor_url
        self.trust_interval = trust_interval
        #: Home Assistant's configuration.yaml and an API token, for the panel's
        #: "trust the add-on" button (homeport.addon.trust_setup); under the
        #: Supervisor both come from it (/homeassistant, SUPERVISOR_TOKEN).
        self.ha_config = ha_config or (SUPERVISED_CONFIG if self.supervised else None)
        self.ha_token = ha_token or supervisor_token
        self.trust_setup: TrustSetup | None = None
        self.gate = RemoteAccessGate(config.state_dir)
        self.client: AddonClient | None = None
        self.trust: TrustMonitor | None = None
        self.panel: Panel | None = None
        self.ha_how = ""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[AddonRuntime]:
        """Discover, start the panel, connect; stop everything on exit."""
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=LocalhostResolver()),
            cookie_jar=aiohttp.DummyCookieJar(),
        ) as probes:
            config = self.config
            if self.ha_url_given:
                self.ha_how = f"Home Assistant at {config.ha_url} (configured)"
            else:
                try:
                    found = await discover(
                        probes,
                        supervisor_token=self.supervisor_token,
                        supervisor_url=self.supervisor_url,
                    )
                except DiscoveryError as exc:
                    raise StartupError(str(exc)) from None
                config = dataclasses.replace(config, ha_url=found.ha_url)
                self.ha_how = found.how
            print(self.ha_how, flush=True)
            check_not_panel(config.ha_url, self.panel_settings)
            self.config = config
            self.trust = TrustMonitor(
                config.ha_url, supervised=self.supervised, interval=self.trust_interval
            )
            self.client = client = AddonClient(config, gate=self.gate, trust=self.trust)
            if self.ha_config is not None and trust_setup_available(self.ha_config, self.ha_token):
                assert self.ha_token is not None
                base = (
                    self.supervisor_url + "/core/api"
                    if self.supervised and self.ha_token == self.supervisor_token
                    else config.ha_url.rstrip("/") + "/api"
                )
                self.trust_setup = TrustSetup(
                    self.ha_config, CoreApi(base, self.ha_token), self.trust, probes
                )
            if self.panel_settings is not None:
                account = URL(config.relay_url)
                origin = str(URL.build(scheme="https", host=account.host or "", port=account.port))
                self.panel = Panel(
                    PanelSources(
                        status=lambda: client.status,
                        gate=self.gate,
                        trust=self.trust,
                        ha_how=self.ha_how,
                        account_origin=origin.rstrip("/"),
                        app_links=client,
                        trust_setup=self.trust_setup,
                    ),
                    allowed_peers=self.panel_settings.allowed_peers,
                )
                settings = self.panel_settings
                try:
                    await self.panel.start(settings.host, settings.port)
                except OSError as exc:
                    # Remote access matters more than the panel: keep going, say why.
                    log.error(
                        "addon.panel_unavailable",
                        extra={"host": settings.host, "port": settings.port, "error": exc.strerror},
                    )
                    print(
                        f"The panel cannot listen on {settings.host}:{settings.port} "
                        f"({exc.strerror}); running without it. Use --panel-listen.",
                        flush=True,
                    )
                    await self.panel.stop()
                    self.panel = None
            try:
                async with client:
                    tasks = [
                        asyncio.create_task(client.run_forever()),
                        asyncio.create_task(self.trust.run(probes)),
                    ]
                    try:
                        yield self
                    finally:
                        for task in tasks:
                            task.cancel()
                        for task in tasks:
                            with contextlib.suppress(asyncio.CancelledError):
                                await task
            finally:
                if self.trust_setup is not None:
                    await self.trust_setup.close()
                if self.panel is not None:
                    await self.panel.stop()
