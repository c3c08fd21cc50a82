"""Short, human descriptions of a device and a place, for session lists and the audit log.

Parsed locally from the ``User-Agent`` and the client address: no lookup
service ever sees them.  The result is a hint for a person deciding "is this
me?", not an identification; user agents are trivially forged, so nothing
security-relevant depends on it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

__all__ = ["describe_device", "describe_network"]

#: Home Assistant companion apps: "Home Assistant/2024.1 (io.robbie.HomeAssistant; ...)"
#: (iOS) and "HomeAssistant/Android".
_HA_APP: Final = re.compile(r"Home ?Assistant/(Android|[\d.]+)", re.IGNORECASE)

# Order matters: Edge and Opera say "Chrome" too, Chrome says "Safari", Android says "Linux".
_BROWSERS: Final = (
    ("Edge", re.compile(r"\bEdg(?:e|A|iOS)?/")),
    ("Opera", re.compile(r"\bOPR/")),
    ("Samsung Internet", re.compile(r"\bSamsungBrowser/")),
    ("Firefox", re.compile(r"\b(?:Firefox|FxiOS)/")),
    ("Chrome", re.compile(r"\b(?:HeadlessChrome|Chrome|Chromium|CriOS)/")),
    ("Safari", re.compile(r"\bVersion/[\d.]+.*\bSafari/")),
)
_SYSTEMS: Final = (
    ("iPad", re.compile(r"\biPad\b")),
    ("iPhone", re.compile(r"\biPhone\b")),
    ("iOS", re.compile(r"\biOS\b")),
    ("Android", re.compile(r"\bAndroid\b")),
    ("ChromeOS", re.compile(r"\bCrOS\b")),
    ("Windows", re.compile(r"\bWindows\b")),
    ("macOS", re.compile(r"\bMac OS X\b|\bMacintosh\b")),
    ("Linux", re.compile(r"\bLinux\b")),
)


def describe_device(user_agent: str) -> str:
    """E.g. "Firefox on Windows", "Home Assistant app on iPhone", or "Unknown device"."""
    system = next((name for name, rx in _SYSTEMS if rx.search(user_agent)), None)
    if _HA_APP.search(user_agent):
        browser: str | None = "Home Assistant app"
        if system is None:
            system = "Android" if "Android" in user_agent else None
    else:
        browser = next((name for name, rx in _BROWSERS if rx.search(user_agent)), None)
    if browser and system:
        return f"{browser} on {system}"
    if browser or system:
        return browser or f"Browser on {system}"
    return "Unknown device"


def describe_network(ip: str) -> str:
    """The address as a person recognises their network: IPv4 as is, IPv6 by its /64."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return "Unknown network"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)
