"""The add-on's ingress panel beside a running :class:`stack.Stack`, wired like the runtime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from stack import Stack

from homeport.addon.gate import RemoteAccessGate
from homeport.addon.panel import Panel, PanelSources


@asynccontextmanager
async def panel_for(stack: Stack, tmp_path: Path) -> AsyncIterator[str]:
    """The panel on loopback (its allowed peer here), creating app links through
    ``stack.addon`` as ``AddonRuntime`` wires it; yields its URL."""
    panel = Panel(
        PanelSources(
            status=lambda: stack.addon.status,
            gate=RemoteAccessGate(tmp_path / "panel"),
            trust=None,
            ha_how="Home Assistant at the stand-in (configured)",
            account_origin=stack.account_origin,
            app_links=stack.addon,
        ),
        allowed_peers=("127.0.0.1",),
    )
    await panel.start("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{panel.port}"
    finally:
        await panel.stop()


async def until_capability_known(stack: Stack, expected: bool) -> None:
    """Until the add-on knows (from the relay's SETTINGS) whether it may ask for app links."""
    async with asyncio.timeout(20):
        while stack.addon.app_links_supported() is not expected:
            await asyncio.sleep(0.02)
