"""Prometheus metrics on ``--metrics-listen`` (R-ACME-03: alert under 14 days, log + metric)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from ports import reserve_port
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from relay_process import RelayProcess
from stack import Stack, start_stack

from homeport.cli import build_parser, relay_config
from homeport.relay.config import RelayConfig
from homeport.relay.metrics import (
    RelayCollector,
    ServedExpiry,
    _private,
    metrics_registry,
    served_expiry,
)
from homeport.tls.context import client_context
from homeport.tls.devca import create_independent_ca
from homeport.tls.served import CertPair, ServedCertificates

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
TIMEOUT = aiohttp.ClientTimeout(total=30)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _collect(collector: RelayCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return _samples(generate_latest(metrics_registry(collector)).decode())


def test_collector_reports_expiry_and_flips_at_14_days() -> None:
    not_after = NOW + dt.timedelta(days=30)
    clock = [NOW]
    tunnels = [3]
    collector = RelayCollector(
        lambda: [ServedExpiry("relay.example", not_after)],
        lambda: tunnels[0],
        lambda: 7,
        now=lambda: clock[0],
    )
    name = (("name", "relay.example"),)
    got = _collect(collector)
    assert got[("homeport_certificate_expiry_seconds", name)] == 30 * 86400
    assert got[("homeport_certificate_expiring", name)] == 0
    assert got[("homeport_tunnels_connected", ())] == 3
    assert got[("homeport_live_exchanges", ())] == 7
    # Exactly 14 days left is not yet "under 14 days"; one second later it is.
    clock[0] = not_after - dt.timedelta(days=14)
    assert _collect(collector)[("homeport_certificate_expiring", name)] == 0
    clock[0] += dt.timedelta(seconds=1)
    got = _collect(collector)
    assert got[("homeport_certificate_expiring", name)] == 1
    assert got[("homeport_certificate_expiry_seconds", name)] == 14 * 86400 - 1
    # Live values: read at every scrape, never cached.
    tunnels[0] = 0
    clock[0] = not_after + dt.timedelta(hours=1)
    got = _collect(collector)
    assert got[("homeport_tunnels_connected", ())] == 0
    assert got[("homeport_certificate_expiry_seconds", name)] == -3600
    assert got[("homeport_certificate_expiring", name)] == 1


def test_only_our_series_and_no_tenant_labels() -> None:
    """A registry of our own: no process/GC defaults, and no label but ``name``."""
    collector = RelayCollector(lambda: [ServedExpiry("relay.example", NOW)], lambda: 1, lambda: 1)
    names = {key[0] for key in _collect(collector)}
    assert names == {
        "homeport_certificate_expiry_seconds",
        "homeport_certificate_expiring",
        "homeport_tunnels_connected",
        "homeport_live_exchanges",
    }
    assert {label for key in _collect(collector) for label, _ in key[1]} == {"name"}


def test_served_expiry_reads_the_certificate_installed(tmp_path: Path) -> None:
    """Values come from the leaf being served, per kind; the tenant falls back to the account's."""
    ca = create_independent_ca(tmp_path / "ca")
    names = ["relay.example", "*.homes.example"]
    config = RelayConfig(
        data_dir=tmp_path, account_host="relay.example", tenant_domain="homes.example"
    )
    account = CertPair(*ca.issue_server_certificate(names, tmp_path / "account", days=10))
    leaf = x509.load_pem_x509_certificate(account.cert.read_bytes())
    served = ServedCertificates(account, account_names=names, tenant_domain="homes.example")
    assert served_expiry(served, config) == [
        ServedExpiry("relay.example", leaf.not_valid_after_utc),
        ServedExpiry("*.homes.example", leaf.not_valid_after_utc),
    ]
    tenant = CertPair(*ca.issue_server_certificate(names[1:], tmp_path / "tenant", days=90))
    served.reload("tenant", tenant)
    tenant_leaf = x509.load_pem_x509_certificate(tenant.cert.read_bytes())
    assert served_expiry(served, config)[1] == ServedExpiry(
        "*.homes.example", tenant_leaf.not_valid_after_utc
    )
    got = _collect(RelayCollector(lambda: served_expiry(served, config), lambda: 0, lambda: 0))
    assert got[("homeport_certificate_expiring", (("name", "relay.example"),))] == 1
    assert got[("homeport_certificate_expiring", (("name", "*.homes.example"),))] == 0


@pytest.mark.parametrize(
    ("host", "private"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("10.1.2.3", True),
        ("fd00::5", True),
        ("0.0.0.0", False),  # every interface, the public one included
        ("::", False),
        ("93.184.216.34", False),
        ("relay.example", False),
    ],
)
def test_public_metrics_address_is_flagged(host: str, private: bool) -> None:
    """``metrics.listen_not_private`` is logged unless the address is loopback or private."""
    assert _private(host) is private


def test_metrics_listen_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    base = ["relay", "--data-dir", str(tmp_path)]
    assert relay_config(parser.parse_args(base)).metrics_listen is None
    args = parser.parse_args([*base, "--metrics-listen", "127.0.0.1:9464"])
    assert relay_config(args).metrics_listen == ("127.0.0.1", 9464)
    args = parser.parse_args([*base, "--metrics-listen", "[::1]:9464"])
    assert relay_config(args).metrics_listen == ("::1", 9464)
    monkeypatch.setenv("HOMEPORT_METRICS_LISTEN", "10.0.0.5:9100")
    assert relay_config(parser.parse_args(base)).metrics_listen == ("10.0.0.5", 9100)
    monkeypatch.delenv("HOMEPORT_METRICS_LISTEN")
    toml = tmp_path / "relay.toml"
    toml.write_text('[relay]\nmetrics-listen = "127.0.0.1:9200"\n')
    assert relay_config(parser.parse_args([*base, "--config", str(toml)])).metrics_listen == (
        "127.0.0.1",
        9200,
    )
    for bad in ("9464", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000", ":9464"):
        with pytest.raises(SystemExit, match="--metrics-listen"):
            relay_config(parser.parse_args([*base, "--metrics-listen", bad]))


async def _served_not_after(stack: Stack) -> dt.datetime:
    """notAfter of the leaf the relay hands to a handshake for the account host."""
    context = client_context(stack.ca_path)
    _, writer = await asyncio.open_connection(
        "127.0.0.1",
        stack.config.listen_port,
        ssl=context,
        server_hostname=stack.config.account_host,
    )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        der = ssl_object.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).not_valid_after_utc
    finally:
        writer.close()


async def test_scrape_through_the_metrics_listener(tmp_path: Path) -> None:
    async with start_stack(tmp_path, metrics_listen=("127.0.0.1", 0)) as stack:
        assert stack.relay.metrics is not None
        url = f"http://127.0.0.1:{stack.relay.metrics.bound_port}"
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            async with session.get(f"{url}/metrics") as response:
                assert response.status == 200
                assert response.content_type == "text/plain"
                assert "Server" not in response.headers
                text = await response.text()
            got = _samples(text)
            account = (("name", stack.config.account_host),)
            left = got[("homeport_certificate_expiry_seconds", account)]
            expected = await _served_not_after(stack) - dt.datetime.now(dt.UTC)
            assert left > 0
            assert abs(left - expected.total_seconds()) < 30
            assert got[("homeport_certificate_expiring", account)] == 0
            wildcard = (("name", f"*.{stack.config.tenant_domain}"),)
            assert got[("homeport_certificate_expiry_seconds", wildcard)] > 0
            assert got[("homeport_tunnels_connected", ())] == 1
            assert got[("homeport_live_exchanges", ())] == 0
            assert stack.instance_id not in text  # no tenant ids in metrics
            for path in ("/other", "/", "/metrics/", "/v1/tunnel"):
                async with session.get(f"{url}{path}") as response:
                    assert response.status == 404, path
            for method in ("POST", "PUT", "DELETE", "HEAD"):
                async with session.request(method, f"{url}/metrics") as response:
                    assert response.status == 405, method

        # The public TLS listener knows nothing of /metrics, on any host.
        async with stack.browser() as browser:
            async with browser.request("GET", f"{stack.account_origin}/metrics") as response:
                assert response.status == 404
                assert "homeport_" not in await response.text()
            await browser.sign_in()
            async with browser.request("GET", f"{stack.tenant_origin}/metrics") as response:
                assert "homeport_" not in await response.text()  # Home Assistant's answer
            # An open WebSocket through the tunnel is one live exchange, while it lasts.
            ws_url = stack.tenant_origin.replace("https://", "wss://") + "/ws/echo"
            async with browser.session.ws_connect(ws_url, origin=stack.tenant_origin) as ws:
                await ws.send_str("ping")
                assert await ws.receive_str() == "ping"
                assert await _scrape(url, "homeport_live_exchanges") == 1
                assert await _scrape(url, "homeport_tunnel_streams") == 1
                assert await _scrape(url, "homeport_tenant_connections") >= 1
            await _wait_for(url, "homeport_live_exchanges", 0)
            # Leak gauges: the stream is gone with its WebSocket; the loop has tasks.
            await _wait_for(url, "homeport_tunnel_streams", 0)
            assert await _scrape(url, "homeport_asyncio_tasks") > 0

        # The gauge follows the tunnel: the add-on gone, it reads 0.
        stack.addon_task.cancel()
        await stack.addon.__aexit__(None, None, None)  # closes its tunnel
        await _wait_for(url, "homeport_tunnels_connected", 0)


async def _scrape(url: str, name: str) -> float:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(f"{url}/metrics") as response,
    ):
        return _samples(await response.text())[(name, ())]


async def _wait_for(url: str, name: str, value: float) -> None:
    async with asyncio.timeout(30):
        while await _scrape(url, name) != value:
            await asyncio.sleep(0.1)


def _listening_ports(pid: int) -> set[int]:
    """TCP ports the process ``pid`` listens on (from /proc: its sockets in LISTEN state)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def test_no_metrics_listener_unless_configured(tmp_path: Path) -> None:
    """The relay process listens on its TLS port only; the option adds exactly one port."""
    relay = RelayProcess(tmp_path / "plain")
    await relay.start()
    try:
        assert relay.proc is not None
        assert _listening_ports(relay.proc.pid) == {relay.port}
    finally:
        await relay.stop()

    metrics_port = reserve_port()
    relay = RelayProcess(
        tmp_path / "metrics", extra_args=["--metrics-listen", f"127.0.0.1:{metrics_port}"]
    )
    await relay.start()
    try:
        assert relay.proc is not None
        assert _listening_ports(relay.proc.pid) == {relay.port, metrics_port}
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response,
        ):
            got = _samples(await response.text())
        assert got[("homeport_tunnels_connected", ())] == 0
        assert got[("homeport_certificate_expiry_seconds", (("name", "homeport.localhost"),))] > 0
    finally:
        await relay.stop()
