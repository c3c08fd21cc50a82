"""Every kind of Home Assistant traffic through the relay, against a real Home Assistant Core.

A WebSocket subscription taking a burst of thousands of events, the companion
apps' sign-in, WebSocket, registration and webhook flows, a camera's MJPEG stream
and snapshots beside a large download, and Home Assistant restarting under an
open session.  One Home Assistant for the whole session (the ``home_assistant``
fixture); the restart test runs last in this file and leaves it running.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import companion_app
import pytest
from ha_core import CAMERA_ENTITY, CAMERA_FILE, HomeAssistant, camera_picture
from stack import Browser, Stack

pytestmark = pytest.mark.homeassistant

BURST = 3000
MiB = 1024 * 1024


def wss(stack: Stack) -> str:
    return stack.tenant_origin.replace("https://", "wss://") + "/api/websocket"


async def signed_in(browser: Browser, stack: Stack, ha: HomeAssistant) -> str:
    """Past the relay's gate (tenant cookie), then Home Assistant's own login: a token."""
    await browser.sign_in("/")
    tokens = await companion_app.sign_in(
        browser.session, stack.tenant_origin, ha.username, ha.password
    )
    return tokens.access_token


async def ha_websocket(
    browser: Browser, stack: Stack, token: str
) -> aiohttp.ClientWebSocketResponse:
    ws = await browser.session.ws_connect(wss(stack), origin=stack.tenant_origin)
    assert (await ws.receive_json(timeout=30))["type"] == "auth_required"
    await ws.send_json({"type": "auth", "access_token": token})
    assert (await ws.receive_json(timeout=30))["type"] == "auth_ok"
    return ws


# ===================================================================== WebSocket burst


@contextlib.asynccontextmanager
async def direct_websocket(ha: HomeAssistant) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """An authenticated WebSocket straight to Home Assistant, past the relay."""
    async with aiohttp.ClientSession() as session, session.ws_connect(ha.ws_url) as ws:
        await ws.receive_json()
        await ws.send_json({"type": "auth", "access_token": ha.long_lived_token})
        assert (await ws.receive_json())["type"] == "auth_ok"
        yield ws


async def test_subscription_takes_a_burst_of_events_whole_and_in_order(
    stack: Stack, home_assistant: HomeAssistant
) -> None:
    async with stack.browser() as browser:
        token = await signed_in(browser, stack, home_assistant)
        ws = await ha_websocket(browser, stack, token)
        try:
            subscribe = {"id": 1, "type": "subscribe_events", "event_type": "homeport_burst"}
            await ws.send_json(subscribe)
            assert (await ws.receive_json(timeout=30))["success"] is True
            # Fired on Home Assistant itself, as fast as it takes them: one WebSocket,
            # commands pipelined (HA handles fire_event in order, synchronously).
            async with direct_websocket(home_assistant) as firing:
                pad = "x" * 200
                for seq in range(BURST):
                    await firing.send_json(
                        {
                            "id": seq + 1,
                            "type": "fire_event",
                            "event_type": "homeport_burst",
                            "event_data": {"seq": seq, "pad": pad},
                        }
                    )
                seen: list[int] = []
                async with asyncio.timeout(120):
                    while len(seen) < BURST:
                        message = await ws.receive_json()
                        assert message["type"] == "event", message
                        seen.append(message["event"]["data"]["seq"])
                    acks = 0
                    while acks < BURST:
                        acks += (await firing.receive_json())["success"] is True
            assert seen == list(range(BURST))  # none lost, none reordered, none doubled
            # The subscription is still healthy after the burst.
            await ws.send_json({"id": 2, "type": "ping"})
            assert (await ws.receive_json(timeout=30)) == {"id": 2, "type": "pong"}
        finally:
            await ws.close()


# ======================================================================= companion app


async def test_companion_app_flows_through_the_relay(
    stack: Stack, home_assistant: HomeAssistant
) -> None:
    """Sign-in, refresh, WebSocket, mobile_app registration and location updates.

    The app's requests carry the relay tenant cookie here (``sign_in`` below); with
    app links they will carry nothing but the app link host: the helpers take any
    base URL and session.
    """
    async with stack.browser() as browser:
        await browser.sign_in("/")
        base, session = stack.tenant_origin, browser.session
        tokens = await companion_app.sign_in(
            session, base, home_assistant.username, home_assistant.password
        )
        # Refreshed (within the same second HA may mint the identical JWT): the
        # WebSocket, the registration and the state reads below all use the new one.
        assert await companion_app.refresh(session, base, tokens)
        config = await companion_app.websocket_config(session, base, tokens.access_token)
        assert "mobile_app" in config["components"]
        webhook_id = await companion_app.register_device(
            session, base, tokens.access_token, "Homeport Phone"
        )
        bearer = {"Authorization": f"Bearer {tokens.access_token}"}
        tracker = f"{base}/api/states/device_tracker.homeport_phone"
        for latitude, longitude in ((52.3731, 4.8922), (52.0907, 5.1214)):
            state: dict[str, Any] = {}
            async with asyncio.timeout(60):
                # The tracker entity appears once the registration's config entry is set up.
                while state.get("attributes", {}).get("latitude") != latitude:
                    await companion_app.update_location(
                        session, base, webhook_id, latitude, longitude
                    )
                    async with session.get(tracker, headers=bearer) as r:
                        state = await r.json() if r.status == 200 else {}
                    if state.get("attributes", {}).get("latitude") != latitude:
                        await asyncio.sleep(0.5)
            assert state["attributes"]["longitude"] == longitude
            assert state["attributes"]["gps_accuracy"] == 12


async def test_companion_app_cannot_pass_the_relay_without_access(
    stack: Stack, home_assistant: HomeAssistant
) -> None:
    """Until app links exist, a session-less app is stopped at the relay's gate."""
    async with (
        stack.browser() as browser,
        browser.request("POST", stack.tenant_origin + "/auth/token") as r,
    ):
        assert r.status in (303, 401, 403)
        assert "access_token" not in await r.text()


# ============================================================================= camera


FRAME_MARK = re.compile(rb"HOMEPORT-FRAME-(\d{8})")


def picture(seq: int) -> bytes:
    base = camera_picture()
    return base[:-2] + b"HOMEPORT-FRAME-%08d" % seq + base[-2:]


async def repaint(path: Path, stop: asyncio.Event) -> None:
    """A changing picture: Home Assistant's still stream only sends frames that changed."""
    seq = 0
    while not stop.is_set():
        tmp = path.with_suffix(".tmp")
        await asyncio.to_thread(tmp.write_bytes, picture(seq))
        await asyncio.to_thread(os.replace, tmp, path)
        seq += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)


async def test_camera_stream_and_snapshots_flow_beside_a_large_download(
    stack: Stack, home_assistant: HomeAssistant
) -> None:
    config = home_assistant.config_dir
    big = config / "www" / "homeport-download.bin"
    with big.open("wb") as f:
        f.truncate(4096 * MiB)  # sparse: costs no disk, HA still sends every byte
    stop = asyncio.Event()
    painter = asyncio.create_task(repaint(config / CAMERA_FILE, stop))
    try:
        async with stack.browser() as browser:
            token = await signed_in(browser, stack, home_assistant)
            bearer = {"Authorization": f"Bearer {token}"}
            origin = stack.tenant_origin
            async with asyncio.timeout(60):  # the camera comes from a YAML import: wait for it
                while True:
                    async with browser.request(
                        "GET", f"{origin}/api/states/{CAMERA_ENTITY}", headers=bearer
                    ) as r:
                        if r.status == 200:
                            break
                    await asyncio.sleep(0.5)

            downloaded = 0

            async def download() -> None:
                nonlocal downloaded
                async with browser.request("GET", f"{origin}/local/{big.name}") as r:
                    assert r.status == 200
                    async for chunk in r.content.iter_any():
                        downloaded += len(chunk)

            loader = asyncio.create_task(download())
            async with asyncio.timeout(60):
                while downloaded < 32 * MiB:
                    await asyncio.sleep(0.05)
            frames: list[tuple[float, int]] = []
            snapshots: list[float] = []
            at_start = downloaded
            async with browser.request(
                "GET", f"{origin}/api/camera_proxy_stream/{CAMERA_ENTITY}", headers=bearer
            ) as stream:
                assert stream.status == 200
                assert stream.headers["Content-Type"].startswith("multipart/x-mixed-replace")
                buffer = b""
                watch_until = time.monotonic() + 10
                next_snapshot = time.monotonic()
                async with asyncio.timeout(60):
                    while time.monotonic() < watch_until:
                        chunk = await stream.content.readany()
                        assert chunk, "the camera stream ended"
                        buffer += chunk
                        for match in FRAME_MARK.finditer(buffer):
                            frames.append((time.monotonic(), int(match.group(1))))
                        buffer = buffer[-32:]
                        if time.monotonic() >= next_snapshot:
                            began = time.monotonic()
                            async with browser.request(
                                "GET", f"{origin}/api/camera_proxy/{CAMERA_ENTITY}", headers=bearer
                            ) as shot:
                                assert shot.status == 200
                                image = await shot.read()
                            assert image.startswith(b"\xff\xd8")
                            assert FRAME_MARK.search(image)
                            snapshots.append(time.monotonic() - began)
                            next_snapshot = time.monotonic() + 2
            during = downloaded - at_start
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
    finally:
        stop.set()
        await painter
        big.unlink(missing_ok=True)
    assert during >= 32 * MiB, "the download was not running beside the camera"
    # Steady frames: HA paints every 0.5 s; on a loaded 2-core machine allow a lot.
    assert len(frames) >= 8, frames
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(frames)]
    assert max(gaps) < 3.0, gaps
    seqs = [seq for _, seq in frames]
    assert seqs == sorted(seqs)
    assert len(snapshots) >= 3, snapshots
    assert max(snapshots) < 5.0, snapshots


# ====================================================== Home Assistant restarts (last)


async def test_restart_under_an_open_session_reconnects_and_never_hangs(
    stack: Stack, home_assistant: HomeAssistant
) -> None:
    """The frontend's WebSocket drops, requests meanwhile get a clean answer, it reconnects.

    Replays what the frontend does (home-assistant-js-websocket): on close it
    retries with a growing delay and authenticates again with its token.
    """
    async with stack.browser() as browser:
        token = await signed_in(browser, stack, home_assistant)
        bearer = {"Authorization": f"Bearer {token}"}
        origin = stack.tenant_origin
        ws = await ha_websocket(browser, stack, token)
        restart = asyncio.create_task(home_assistant.restart())
        statuses: list[int] = []
        try:
            async with asyncio.timeout(60):
                closed = await ws.receive()  # HA goes down: the browser's socket closes
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            while not restart.done():
                # Every request during the restart is answered, never left hanging.
                async with asyncio.timeout(30):
                    async with browser.request("GET", f"{origin}/api/", headers=bearer) as r:
                        statuses.append(r.status)
                        await r.read()
                await asyncio.sleep(0.5)
            await restart
        finally:
            await ws.close()
            if not restart.done():
                await restart
        assert set(statuses) <= {200, 502, 503, 504}, statuses
        assert 502 in statuses or 503 in statuses, statuses  # it really was down meanwhile

        # The frontend reconnects by itself with the same token.
        delay = 0.5
        reconnected = None
        async with asyncio.timeout(120):
            while reconnected is None:
                with contextlib.suppress(aiohttp.ClientError, AssertionError, TimeoutError):
                    reconnected = await ha_websocket(browser, stack, token)
                if reconnected is None:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5)
        try:
            await reconnected.send_json(
                {"id": 1, "type": "subscribe_events", "event_type": "state_changed"}
            )
            assert (await reconnected.receive_json(timeout=30))["success"] is True
            async with browser.request(
                "POST",
                f"{origin}/api/services/input_boolean/toggle",
                headers=bearer,
                json={"entity_id": "input_boolean.homeport_test"},
            ) as r:
                assert r.status == 200, await r.text()
            async with asyncio.timeout(30):
                while True:
                    event = await reconnected.receive_json()
                    if event["event"]["data"]["entity_id"] == "input_boolean.homeport_test":
                        break
        finally:
            await reconnected.close()
