"""Redirects from Home Assistant's internal address become relative ones (``addon/forward.py``)."""

from __future__ import annotations

import aiohttp
import pytest

from homeport.addon.forward import HomeAssistantForwarder

BASE = "http://127.0.0.1:8123"


@pytest.mark.parametrize(
    ("location", "public"),
    [
        (f"{BASE}/lovelace/0", "/lovelace/0"),
        (f"{BASE}/auth/authorize?x=1", "/auth/authorize?x=1"),
        (BASE, "/"),
        (f"{BASE}/", "/"),
        (f"{BASE}?q", "/?q"),
        # Never a network-path reference (``//host``), which names another host:
        (f"{BASE}//evil.example", "/evil.example"),
        (f"{BASE}//evil.example/path?q", "/evil.example/path?q"),
        (f"{BASE}///evil.example", "/evil.example"),
        (f"{BASE}/\\evil.example", "/evil.example"),  # browsers read \ as /
        (f"{BASE}/\t/evil.example", "/evil.example"),  # and drop tabs
        # Not the internal address: left as Home Assistant sent it.
        ("https://accounts.example/login", "https://accounts.example/login"),
        (f"{BASE}0/x", f"{BASE}0/x"),
        ("/relative", "/relative"),
    ],
)
async def test_public_location(location: str, public: str) -> None:
    async with aiohttp.ClientSession() as client:
        forwarder = HomeAssistantForwarder(BASE, client)
        made = forwarder._public_location(location)
    assert made == public
    if made.startswith("/"):
        assert made[1:2] not in ("/", "\\")
