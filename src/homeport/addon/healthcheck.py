"""The container image's HEALTHCHECK: ``python -m homeport.addon.healthcheck``.

It asks the running add-on's panel for ``GET /healthz`` on the address the
add-on listens on (``HOMEPORT_PANEL_LISTEN``, else the panel's default), so
it needs no curl in the image.  Healthy means the process runs and its event
loop answers.  It deliberately does not mean "connected to the relay": the
add-on reconnects by itself, and restarting it while the relay is away
would only add a second outage.

Exit status, as Docker reads it: 0 healthy, 1 unhealthy.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from homeport.addon.panel import HEALTHZ
from homeport.addon.runtime import parse_panel

TIMEOUT = 5.0
#: The panel listens on every interface; probe it where it surely answers.
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104


def probe_url() -> str | None:
    """The panel's ``/healthz`` URL from the add-on's environment; None when the panel is off."""
    panel = parse_panel(
        os.environ.get("HOMEPORT_PANEL_LISTEN") or None,
        None,
        supervised=bool(os.environ.get("SUPERVISOR_TOKEN")),
    )
    if panel is None:
        return None
    host = WILDCARDS.get(panel.host, panel.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{panel.port}{HEALTHZ}"


def main() -> int:
    try:
        url = probe_url()
    except ValueError as exc:
        print(f"unhealthy: {exc}")
        return 1
    if url is None:
        print("unhealthy: the panel is off (HOMEPORT_PANEL_LISTEN=off), so nothing answers")
        return 1
    # No proxy: an HTTP(S)_PROXY in the container's environment must not answer for the panel.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT) as response:
            body = response.read(16)
            status = response.status
    except (OSError, urllib.error.URLError) as exc:
        print(f"unhealthy: {url}: {exc}")
        return 1
    if status != 200 or body.strip() != b"ok":
        print(f"unhealthy: {url} answered {status}")
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
