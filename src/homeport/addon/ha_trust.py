"""Does Home Assistant trust the add-on as a reverse proxy?

Threats and failures this stops:

* "400: Bad Request" for everyone: Home Assistant's ``forwarded`` middleware
  (``homeassistant/components/http/forwarded.py``, 2025.4.4) answers 400 to any
  request carrying ``X-Forwarded-For`` from a peer that is not in
  ``http: trusted_proxies`` (or when ``use_x_forwarded_for`` is off).  Until
  Home Assistant trusts us, the add-on therefore sends no forwarding headers
  at all, so remote access keeps working.
* The add-on banned by a stranger: without forwarded addresses Home Assistant
  sees every remote person as the add-on, so a few failed remote logins ban
  the add-on's address and lock *everyone* out.  The report says exactly what
  to put in ``configuration.yaml`` so that the person is banned instead.

The probe sends the same unauthenticated request (``/manifest.json``) twice,
once plain and once with ``X-Forwarded-For: 192.0.2.1`` (RFC 5737
documentation address, never a real client).  A 400 only with the header
means "not trusted"; the same answer both times means "trusted".  It never
touches an endpoint that needs a login: Home Assistant counts every 401 as a
failed login attempt.  Home Assistant has no API to change ``http:`` (it is
YAML-only, and the Supervisor's ``/core/options`` only knows port and ssl
for its own health checks), so the add-on shows the YAML to paste, and, when
the owner asks on the panel, adds it to ``configuration.yaml`` itself
(:mod:`homeport.addon.trust_setup`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
import socket
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

log = logging.getLogger(__name__)

PROBE_PATH = "/manifest.json"
PROBE_CLIENT = "192.0.2.1"
PROBE_TIMEOUT = 10.0
#: The Supervisor's hassio network; add-ons live in it (172.30.32.0/23).
SUPERVISOR_NETWORK = "172.30.32.0/23"


class Trust(enum.Enum):
    UNKNOWN = "unknown"  # not checked yet
    TRUSTED = "trusted"
    UNTRUSTED = "untrusted"
    BANNED = "banned"  # Home Assistant refuses the add-on's own address
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class TrustReport:
    trust: Trust
    ha_url: str
    #: The address Home Assistant sees the add-on connect from, if known.
    seen_as: str | None = None
    #: What ``trusted_proxies`` should list.
    proxies: tuple[str, ...] = field(default_factory=tuple)
    detail: str = ""

    @property
    def send_forwarded(self) -> bool:
        return self.trust is Trust.TRUSTED

    @property
    def yaml(self) -> str:
        """The ``configuration.yaml`` block that makes Home Assistant trust the add-on."""
        lines = ["http:", "  use_x_forwarded_for: true", "  trusted_proxies:"]
        lines += [f"    - {proxy}" for proxy in self.proxies]
        return "\n".join(lines) + "\n"


def proxies_for(seen_as: str | None, *, supervised: bool) -> tuple[str, ...]:
    """The networks to trust: the Supervisor's add-on network, or our own loopback address."""
    if supervised:
        return (SUPERVISOR_NETWORK,)
    if seen_as is None:
        return ("127.0.0.1", "::1")
    address = ipaddress.ip_address(seen_as)
    if address.is_loopback:
        return ("127.0.0.1", "::1")
    return (str(address),)


async def probe_trust(
    client: aiohttp.ClientSession, ha_url: str, *, supervised: bool
) -> TrustReport:
    """Ask Home Assistant, harmlessly, whether it accepts our ``X-Forwarded-For``."""
    url = ha_url.rstrip("/") + PROBE_PATH
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
    seen_as = await source_address(ha_url)
    try:
        async with client.get(url, timeout=timeout, allow_redirects=False) as plain:
            await plain.read()
        async with client.get(
            url,
            headers={"X-Forwarded-For": PROBE_CLIENT},
            timeout=timeout,
            allow_redirects=False,
        ) as forwarded:
            await forwarded.read()
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        report = TrustReport(
            Trust.UNREACHABLE,
            ha_url,
            proxies=proxies_for(None, supervised=supervised),
            detail=f"Home Assistant at {ha_url} did not answer ({type(exc).__name__})",
        )
        log.warning("addon.ha_unreachable", extra={"ha_url": ha_url, "error": type(exc).__name__})
        return report
    proxies = proxies_for(seen_as, supervised=supervised)
    if plain.status == 403:
        trust, detail = (
            Trust.BANNED,
            f"Home Assistant refuses the add-on's address {seen_as or '?'} (403): it was "
            "probably banned after failed logins. Remove it from ip_bans.yaml in Home "
            "Assistant's configuration folder and restart Home Assistant.",
        )
    elif plain.status != 400 and forwarded.status == 400:
        trust, detail = (
            Trust.UNTRUSTED,
            "Home Assistant does not trust the add-on as a proxy: it answers 400 to "
            "X-Forwarded-For. Remote access works, but Home Assistant sees every remote "
            "person as the add-on, so failed remote logins would ban the add-on itself.",
        )
    elif forwarded.status == plain.status:
        trust, detail = (
            Trust.TRUSTED,
            "Home Assistant trusts the add-on and sees each remote person's own address.",
        )
    else:
        trust, detail = (
            Trust.UNKNOWN,
            f"Home Assistant answered {plain.status} and {forwarded.status}; "
            "cannot tell whether it trusts the add-on",
        )
    report = TrustReport(trust, ha_url, seen_as=seen_as, proxies=proxies, detail=detail)
    log.log(
        logging.INFO if trust is Trust.TRUSTED else logging.WARNING,
        "addon.ha_trust",
        extra={"trust": trust.value, "seen_as": seen_as, "trusted_proxies": ",".join(proxies)},
    )
    return report


class TrustMonitor:
    """The add-on's current view of Home Assistant's trust, re-checked as things change.

    Checked at start, on every (re)connect of the tunnel and every
    ``interval`` seconds, so that an owner who fixes ``configuration.yaml``
    and restarts Home Assistant gets forwarded addresses without restarting
    the add-on.
    """

    def __init__(
        self,
        ha_url: str,
        *,
        supervised: bool,
        interval: float = 60.0,
        retry_interval: float = 5.0,
    ) -> None:
        self.ha_url = ha_url
        self.supervised = supervised
        self.interval = interval
        self.retry_interval = retry_interval
        self.report = TrustReport(
            Trust.UNKNOWN, ha_url, proxies=proxies_for(None, supervised=supervised)
        )
        #: The last *conclusive* verdict.  A Home Assistant that is restarting
        #: (unreachable) keeps the verdict it had: dropping X-Forwarded-For for
        #: that minute would make its failed-login counter blame the add-on.
        self._verdict: Trust = Trust.UNKNOWN

    def send_forwarded(self) -> bool:
        return self._verdict is Trust.TRUSTED

    async def check(self, client: aiohttp.ClientSession) -> TrustReport:
        report = await probe_trust(client, self.ha_url, supervised=self.supervised)
        self.report = report
        if report.trust in (Trust.TRUSTED, Trust.UNTRUSTED, Trust.BANNED):
            previous, self._verdict = self._verdict, report.trust
            if report.trust is Trust.UNTRUSTED and previous is not Trust.UNTRUSTED:
                # Plainly, once per change, in the add-on log: what to paste.
                print(
                    "Home Assistant does not trust this add-on as a proxy, so failed remote "
                    "logins would ban the add-on. Add this to configuration.yaml and restart "
                    "Home Assistant (there is no API for it):\n" + report.yaml,
                    flush=True,
                )
        return report

    async def run(self, client: aiohttp.ClientSession) -> None:
        while True:
            report = await self.check(client)
            conclusive = report.trust in (Trust.TRUSTED, Trust.UNTRUSTED)
            await asyncio.sleep(self.interval if conclusive else self.retry_interval)


async def source_address(ha_url: str) -> str | None:
    """The address this machine uses to reach Home Assistant: what it sees as our peer.

    A connected UDP socket makes the kernel pick the route and source address
    without sending a packet.
    """
    url = URL(ha_url)
    host = (url.host or "").strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        host = "127.0.0.1"  # as LocalhostResolver does
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, url.port or 80, type=socket.SOCK_DGRAM
        )
    except OSError:
        return None
    for family, kind, proto, _name, address in infos:
        with contextlib.suppress(OSError), socket.socket(family, kind, proto) as sock:
            sock.connect(address)
            return str(sock.getsockname()[0])
    return None
