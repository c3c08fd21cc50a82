"""The relay never logs, persists or writes to disk a byte it relays.

The relay runs as its own process (``homeport --log-level debug relay``) with
stdout/stderr captured and ``TMPDIR``, ``HOME`` and its working directory
pointed at fresh directories.  A unique marker goes through the tunnel in
every place a request or response can carry it; after the relay has stopped,
every file it could have written is searched for the marker (raw, hex,
base64 at every alignment, UTF-16).  Positive controls show that the marker
really crossed the relay and that the search finds a planted copy.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from marker_search import all_files, find_marker, marker_forms
from reflect_backend import Seen, start_reflecting_backend
from relay_process import Home, RecordLogs, start_home

pytestmark = pytest.mark.timeout(90)

LARGE_BODY = 6 * 1024 * 1024


@pytest.fixture
async def backend() -> AsyncIterator[tuple[str, Seen]]:
    runner, url, seen = await start_reflecting_backend()
    try:
        yield url, seen
    finally:
        await runner.cleanup()


def blob_with(marker: str, size: int) -> bytes:
    """``size`` incompressible bytes with the marker every 4 KiB (at shifting alignments)."""
    raw = marker.encode()
    out = bytearray()
    shift = 0
    while len(out) < size:
        out += os.urandom(4096 + shift % 7) + raw
        shift += 1
    return bytes(out[:size])


async def push_marker_through(browser: Any, home: Home, marker: str) -> None:
    """The marker in every part of HTTP requests/responses and WebSocket messages."""
    origin = home.tenant_origin
    sensitive = {
        "X-Marker": marker,
        "Authorization": f"Bearer {marker}",
        "Cookie": f"pref={marker}",
        "User-Agent": f"agent/{marker}",
        "Referer": f"{origin}/from/{marker}",
    }
    # Path, query and headers; response header, cookie and body.
    async with browser.request(
        "GET", f"{origin}/reflect/{marker}?q={marker}", headers=sensitive
    ) as r:
        assert r.status == 200
        assert r.headers["X-Reflect"] == marker
        assert marker in r.headers["Set-Cookie"]
        await r.read()
    # A small body; the echo answers with the path, headers and body digest as JSON.
    small = f"name={marker}&again={marker}".encode()
    async with browser.request(
        "POST", f"{origin}/echo?m={marker}", data=small, headers=sensitive
    ) as r:
        assert r.status == 200
        echoed = await r.json()
        assert echoed["path_qs"] == f"/echo?m={marker}"
        assert echoed["body_sha256"] == hashlib.sha256(small).hexdigest()
        assert marker in str(echoed["headers"])
    # A large body, reflected back as a large response body.
    big = blob_with(marker, LARGE_BODY)
    async with browser.request("PUT", f"{origin}/reflect/big", data=big, headers=sensitive) as r:
        assert r.status == 200
        assert await r.read() == big
    # Error paths: an error status, a 404 and a response cut off mid-body.
    async with browser.request("GET", f"{origin}/status/500?m={marker}", headers=sensitive) as r:
        assert r.status == 500
    async with browser.request("GET", f"{origin}/missing/{marker}", headers=sensitive) as r:
        assert r.status == 404
    with contextlib.suppress(aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
        async with browser.request("GET", f"{origin}/abort?m={marker}", headers=sensitive) as r:
            await r.read()
    # WebSocket messages both ways (the stand-in echoes), text and binary, small and large.
    ws_url = origin.replace("https://", "wss://") + f"/ws/echo?m={marker}"
    async with browser.session.ws_connect(
        ws_url, origin=origin, protocols=("chat",), headers={"X-Marker": marker}
    ) as ws:
        await ws.send_str(f"hello {marker}")
        assert await ws.receive_str(timeout=10) == f"hello {marker}"
        await ws.send_bytes(marker.encode() * 3)
        assert await ws.receive_bytes(timeout=10) == marker.encode() * 3
        large = blob_with(marker, 2 * 1024 * 1024)
        await ws.send_bytes(large)
        assert await ws.receive_bytes(timeout=10) == large
        await ws.send_str(f"close-me {marker}")  # echoed, not a close request
        assert await ws.receive_str(timeout=10) == f"close-me {marker}"
        await ws.close(code=4000, message=f"bye {marker}".encode())
    # Refused by the relay before anything is relayed: a foreign Origin and a
    # header line too long for the edge parser.
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await browser.session.ws_connect(ws_url, origin=f"https://{marker}.example")
    with contextlib.suppress(aiohttp.ClientError):
        async with browser.request("GET", f"{origin}/echo", headers={"X-Big": marker * 300}) as r:
            assert r.status >= 400
            await r.read()


async def test_no_relayed_byte_reaches_the_relays_disk_or_logs(
    tmp_path: Path, backend: tuple[str, Seen]
) -> None:
    backend_url, seen = backend
    marker = uuid.uuid4().hex
    with RecordLogs("homeport.tunnel.session") as addon_tunnel_logs:
        async with start_home(tmp_path, backend_url) as home:
            async with home.browser() as browser:  # type: ignore[attr-defined]
                # A deep link through the sign-in, then everything else with the session.
                page = await browser.sign_in(f"/reflect/{marker}?deep={marker}")
                assert page.status == 200
                await push_marker_through(browser, home, marker)
            assert await home.relay.stop() == 0  # graceful: the database is closed cleanly
            relay = home.relay
    # The error paths were handled as such by the add-on (an upstream cut short
    # is not a crash of the stream handler).
    assert not addon_tunnel_logs.events("tunnel.handler_failed")

    # Positive control 1: the marker really crossed the relay and the tunnel.
    forwarded = seen.text()
    assert forwarded.count(marker.encode()) >= 10
    assert f"GET /reflect/{marker}?deep={marker}" in seen.targets()

    # What we search is what the relay wrote: its database, TLS material and
    # keys, and its log (run at debug level) that does describe the requests.
    roots = [relay.data_dir, relay.tmp_dir, relay.home_dir, relay.cwd, relay.log_dir]
    files = all_files(roots)
    names = {p.name for p in files}
    assert "server-key.pem" in names
    assert any(name.endswith(".db") for name in names), names
    log = relay.log_text()
    assert log.count('"tenant.request"') >= 6, log[-3000:]

    hits = find_marker(roots, marker)
    assert hits == [], f"relayed bytes found on the relay's disk: {hits}"

    # Positive control 2: the same search, over the same places, finds a
    # planted copy in each form we look for.
    planted = relay.data_dir / "planted" / "blob.bin"
    planted.parent.mkdir()
    planted.write_bytes(os.urandom(1001) + base64.b64encode(os.urandom(2) + marker.encode()))
    assert (planted, "base64@2") in find_marker(roots, marker)
    (relay.log_dir / "planted.log").write_text(f'{{"event":"x","path":"/a/{marker.upper()}"}}\n')
    assert (relay.log_dir / "planted.log", "raw") in find_marker(roots, marker)


def test_marker_search_finds_every_form(tmp_path: Path) -> None:
    """The search itself: each encoding at each alignment is found, and a near miss is not."""
    marker = uuid.uuid4().hex
    raw = marker.encode()
    samples = {
        "raw": b"prefix " + raw.upper() + b" suffix",
        "hex": b"\x00" + raw.hex().upper().encode() + b"\x00",
        "utf-16-le": b"\xff\xfe" + marker.encode("utf-16-le"),
        "utf-16-be": marker.encode("utf-16-be"),
    }
    for offset in range(3):
        noise = os.urandom(offset)
        samples[f"base64@{offset}"] = base64.b64encode(noise + raw + os.urandom(5))
        samples[f"base64url@{offset}"] = base64.urlsafe_b64encode(noise + raw)
    for name, data in samples.items():
        path = tmp_path / name / "file.bin"
        path.parent.mkdir()
        path.write_bytes(os.urandom(100) + data + os.urandom(100))
        assert (path, name) in find_marker([tmp_path / name], marker), name
    near_miss = tmp_path / "near" / "file.bin"
    near_miss.parent.mkdir()
    near_miss.write_bytes(raw[:-1] + b" " + raw[1:])
    assert find_marker([near_miss.parent], marker) == []
    assert set(marker_forms(marker)) == set(samples)
