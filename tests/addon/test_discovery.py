"""Finding Home Assistant: a loopback stand-in for the Supervisor, and local probes."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from homeport.addon.discovery import DiscoveryError, discover
from homeport.standin import start_standin
from homeport.tls.devca import create_independent_ca

TOKEN = "supervisor-token-for-tests"


async def _serve(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner, int(runner.addresses[0][1])


def manifest(name: str) -> web.Application:
    async def handler(_request: web.Request) -> web.Response:
        return web.json_response({"name": name})

    app = web.Application()
    app.router.add_get("/manifest.json", handler)
    return app


def supervisor(info: dict[str, Any]) -> web.Application:
    async def core_info(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"result": "error", "message": "Unauthorized"}, status=401)
        return web.json_response({"result": "ok", "data": info})

    app = web.Application()
    app.router.add_get("/core/info", core_info)
    return app


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({"version": "2025.4.4", "port": 8123, "ssl": False}, "http://homeassistant:8123"),
        ({"version": "2025.4.4", "port": 8443, "ssl": True}, "https://homeassistant:8443"),
    ],
)
async def test_supervisor_names_core_with_its_port_and_tls(
    client: aiohttp.ClientSession, info: dict[str, Any], expected: str
) -> None:
    runner, port = await _serve(supervisor(info))
    try:
        found = await discover(
            client, supervisor_token=TOKEN, supervisor_url=f"http://127.0.0.1:{port}"
        )
    finally:
        await runner.cleanup()
    assert found.ha_url == expected
    assert "Supervisor" in found.how


async def test_supervisor_errors_are_explained(client: aiohttp.ClientSession) -> None:
    runner, port = await _serve(supervisor({"port": "8123"}))
    base = f"http://127.0.0.1:{port}"
    try:
        with pytest.raises(DiscoveryError, match="hassio_api"):
            await discover(client, supervisor_token="wrong", supervisor_url=base)
        with pytest.raises(DiscoveryError, match="no usable port"):
            await discover(client, supervisor_token=TOKEN, supervisor_url=base)
    finally:
        await runner.cleanup()
    with pytest.raises(DiscoveryError, match="cannot ask the Supervisor"):
        await discover(client, supervisor_token=TOKEN, supervisor_url=base)


async def test_standalone_finds_home_assistant_on_loopback(client: aiohttp.ClientSession) -> None:
    standin, url = await start_standin()
    port = int(url.rsplit(":", 1)[1])
    try:
        found = await discover(client, supervisor_token=None, ports=(port,))
    finally:
        await standin.cleanup()
    assert found.ha_url == f"http://127.0.0.1:{port}"
    assert found.how == f"found Home Assistant at http://127.0.0.1:{port}"


async def test_standalone_says_what_it_tried(client: aiohttp.ClientSession, tmp_path: Path) -> None:
    """Not Home Assistant, and HTTPS with a self-signed certificate: both reported, neither used."""
    plain_runner, plain_port = await _serve(manifest("Grafana"))

    ca = create_independent_ca(tmp_path / "ca")
    cert, key = ca.issue_server_certificate(["localhost"], tmp_path / "tls")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    tls_runner, tls_port = await _serve(manifest("Home Assistant"), context)
    try:
        with pytest.raises(DiscoveryError) as refused:
            await discover(client, supervisor_token=None, ports=(plain_port, tls_port))
    finally:
        await plain_runner.cleanup()
        await tls_runner.cleanup()
    message = str(refused.value)
    assert f"http://127.0.0.1:{plain_port}: not Home Assistant" in message
    assert (
        f"https://127.0.0.1:{tls_port}: HTTPS with a certificate this machine does not trust"
        in message
    )
    assert f"http://127.0.0.1:{tls_port}: " in message  # plain HTTP to a TLS port: not it
    assert "--ha-url" in message
