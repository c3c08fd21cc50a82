"""Find Home Assistant: the Supervisor's names in add-on mode, the usual ports otherwise.

Decisions (see docs/install.md):

* Add-on mode (``SUPERVISOR_TOKEN`` set): ask the Supervisor
  (``GET http://supervisor/core/info``; ``hassio_api: true``, role
  ``default``, which allows ``/<service>/info``) for Core's port and whether it serves
  TLS, and use the name the Supervisor gives Core, ``homeassistant``.
* Standalone: try ``http://127.0.0.1:8123``, ``http://[::1]:8123`` and the
  same with ``https``.  A candidate counts only if ``/manifest.json`` answers
  like Home Assistant.  Certificates are verified as for every other outbound
  client (R-TLS-14), loopback included: an HTTPS Home Assistant with a
  self-signed certificate is reported as found-but-untrusted with the fix
  (give ``--ha-url`` with plain HTTP on loopback, or a trusted certificate),
  never silently accepted.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

import aiohttp

log = logging.getLogger(__name__)

SUPERVISOR_URL = "http://supervisor"
CORE_HOST = "homeassistant"
PROBE_TIMEOUT = 5.0


class DiscoveryError(RuntimeError):
    """No Home Assistant found; the message says what was tried and what to do."""


@dataclass(frozen=True)
class Discovery:
    ha_url: str
    how: str  # one line for the log and the panel


async def discover(
    client: aiohttp.ClientSession,
    *,
    supervisor_token: str | None,
    supervisor_url: str = SUPERVISOR_URL,
    ports: tuple[int, ...] = (8123,),
) -> Discovery:
    if supervisor_token:
        return await _from_supervisor(client, supervisor_token, supervisor_url)
    return await _probe_local(client, ports)


async def _from_supervisor(client: aiohttp.ClientSession, token: str, base: str) -> Discovery:
    url = f"{base}/core/info"
    try:
        async with client.get(
            url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT),
        ) as response:
            if response.status != 200:
                raise DiscoveryError(
                    f"the Supervisor answered {response.status} to {url}; "
                    "is hassio_api enabled for the add-on?"
                )
            body = await response.json()
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        raise DiscoveryError(f"cannot ask the Supervisor ({type(exc).__name__})") from None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise DiscoveryError("the Supervisor's /core/info carries no data")
    port = data.get("port")
    if not isinstance(port, int) or not 0 < port < 65536:
        raise DiscoveryError("the Supervisor's /core/info carries no usable port")
    scheme = "https" if data.get("ssl") is True else "http"
    ha_url = f"{scheme}://{CORE_HOST}:{port}"
    return Discovery(ha_url, f"Supervisor: Home Assistant Core at {ha_url}")


async def _probe_local(client: aiohttp.ClientSession, ports: tuple[int, ...]) -> Discovery:
    tried: list[str] = []
    for scheme in ("http", "https"):
        for port in ports:
            for host in ("127.0.0.1", "[::1]"):
                ha_url = f"{scheme}://{host}:{port}"
                outcome = await _looks_like_home_assistant(client, ha_url)
                if outcome is None:
                    how = f"found Home Assistant at {ha_url}"
                    log.info("addon.ha_found", extra={"ha_url": ha_url})
                    return Discovery(ha_url, how)
                tried.append(f"{ha_url}: {outcome}")
    raise DiscoveryError(
        "no Home Assistant found ("
        + "; ".join(tried)
        + "). Start Home Assistant or give its address with --ha-url"
    )


async def _looks_like_home_assistant(client: aiohttp.ClientSession, ha_url: str) -> str | None:
    """None if Home Assistant answers at ``ha_url``; else why not."""
    try:
        async with client.get(
            ha_url + "/manifest.json",
            timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT),
            allow_redirects=False,
        ) as response:
            if response.status != 200:
                return f"answered {response.status}"
            data = await response.json(content_type=None)
    except aiohttp.ClientConnectorCertificateError as exc:
        return f"HTTPS with a certificate this machine does not trust ({exc.certificate_error})"
    except ssl.SSLError:
        return "TLS failed"
    except (aiohttp.ClientError, OSError, TimeoutError):
        return "nothing listening"
    except ValueError:
        return "not Home Assistant (no manifest)"
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or "Home Assistant" not in name:
        return "not Home Assistant"
    return None
