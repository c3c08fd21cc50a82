"""An add-on that speaks only protocol version 1 is still served, end to end.

Version 2 changed only how heads carry their header fields (``protocol/heads.py``);
a relay meets an older add-on in version 1 (and a newer add-on meets an older
relay there too), so homes keep working while their add-ons update.  Real relay
and add-on through real sockets; the add-on offers ``versions=(1,)`` in its
``hello``, as an add-on released before version 2 does.
"""

from __future__ import annotations

import functools

import pytest
from header_backend import Seen
from stack import Stack

from homeport.addon import client as addon_client
from homeport.protocol.handshake import AddonHandshake

pytestmark = pytest.mark.timeout(60)


def _versions(stack: Stack) -> tuple[int, int]:
    relay_side = stack.relay.hub.tunnel_for(stack.instance_id)
    addon_side = stack.addon.tunnel
    assert relay_side is not None
    assert addon_side is not None
    return (
        relay_side.connection.header_format.version,
        addon_side.connection.header_format.version,
    )


async def _round_trip(stack: Stack, seen: Seen) -> None:
    """Request fields reach Home Assistant, and its response fields the browser."""
    async with stack.browser() as browser:
        assert (await browser.sign_in("/")).status == 200
        seen.clear()
        async with browser.request(
            "GET",
            stack.tenant_origin + "/headers",
            params={"h": ["X-From-Home:caf\xe9", "X-Empty:"]},
            headers={"X-Custom": "kept", "X-Second": "also kept"},
        ) as r:
            assert r.status == 200
            assert r.headers.getall("X-From-Home") == ["caf\xe9"]
            assert r.headers.getall("X-Empty") == [""]
            assert "headers" in await r.text()
    [arrived] = seen
    fields = {n.lower(): v for n, v in arrived}
    assert fields["x-custom"] == "kept"
    assert fields["x-second"] == "also kept"
    assert fields["x-forwarded-for"] == "127.0.0.1"


async def test_a_current_addon_speaks_version_2(recorded: tuple[Stack, Seen]) -> None:
    stack, seen = recorded
    assert _versions(stack) == (2, 2)
    await _round_trip(stack, seen)


async def test_an_addon_that_speaks_only_version_1_is_served(
    recorded: tuple[Stack, Seen], monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, seen = recorded
    monkeypatch.setattr(
        addon_client, "AddonHandshake", functools.partial(AddonHandshake, versions=(1,))
    )
    await stack.dial_again()
    assert _versions(stack) == (1, 1)
    await _round_trip(stack, seen)
