"""Operator-supplied certificate files replaced on disk are served without a restart."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from ports import listening_socket
from stack import start_stack

from homeport.addon.client import State
from homeport.relay.config import RelayConfig
from homeport.tls.devca import create_independent_ca

ACCOUNT_HOST = "homeport.localhost"
NAMES = [ACCOUNT_HOST, "*.home.localhost"]


async def leaf_of(port: int, ca: Path) -> x509.Certificate:
    context = ssl.create_default_context(cafile=str(ca))
    _, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=ACCOUNT_HOST), 20
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der)


async def test_replaced_files_are_served_and_bad_ones_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = create_independent_ca(tmp_path / "ca")
    cert, key = ca.issue_server_certificate(NAMES, tmp_path / "first")
    live = tmp_path / "live"
    live.mkdir()
    live_cert, live_key = live / "fullchain.pem", live / "key.pem"
    shutil.copy(cert, live_cert)
    shutil.copy(key, live_key)
    sock = listening_socket()
    port = sock.getsockname()[1]
    config = RelayConfig(
        data_dir=tmp_path / "relay",
        listen_port=port,
        drain_seconds=2.0,
        tls_cert=live_cert,
        tls_key=live_key,
    )
    async with start_stack(tmp_path, config=config, sock=sock, relay_ca=ca.cert_path) as stack:
        stack.relay.tls.watch_interval = 0.2
        await stack.relay.tls.stop()
        await stack.relay.tls.start()  # the watcher, at the short interval
        first = await leaf_of(port, ca.cert_path)
        tunnel = stack.relay.hub.tunnel_for(stack.instance_id)

        # A file for the wrong name is refused: the old chain stays.
        bad_cert, bad_key = ca.issue_server_certificate(["other.example"], tmp_path / "bad")
        shutil.copy(bad_cert, live_cert)
        shutil.copy(bad_key, live_key)
        async with asyncio.timeout(30):
            while not any(r.message == "tls.certificate_reload_refused" for r in caplog.records):
                await asyncio.sleep(0.1)
        assert await leaf_of(port, ca.cert_path) == first

        # A good replacement (as certbot writes it) is picked up by new handshakes.
        new_cert, new_key = ca.issue_server_certificate(NAMES, tmp_path / "second", days=60)
        shutil.copy(new_key, live_key)
        shutil.copy(new_cert, live_cert)
        async with asyncio.timeout(30):
            while (current := await leaf_of(port, ca.cert_path)) == first:
                await asyncio.sleep(0.2)
        assert current.serial_number != first.serial_number
        assert stack.relay.hub.tunnel_for(stack.instance_id) is tunnel
        assert stack.addon.status.state is State.CONNECTED
