"""The front door over real sockets: plain HTTP redirects, security.txt, no banners.

A relay runs on loopback with its plain-HTTP listener on; raw sockets send
exactly the bytes under test (plain TCP for port 80, TLS via ``rawhttp`` for
the HTTPS side), so nothing a client library would normalise is hidden.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from ports import listening_socket
from rawhttp import RawResponse, exchange, read_head

from homeport.accounts.identifiers import new_instance_id
from homeport.cli import build_parser, relay_config
from homeport.relay.app import Relay
from homeport.relay.config import RelayConfig
from homeport.relay.edge import redirect_target, security_txt

ACCOUNT = "homeport.localhost"
REPO = Path(__file__).resolve().parents[2]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def relay(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Relay]:
    sock = listening_socket()
    config = RelayConfig(
        data_dir=tmp_path_factory.mktemp("edge") / "relay",
        listen_port=sock.getsockname()[1],
        http_listen_port=0,
        drain_seconds=1.0,
    )
    relay = Relay(config)
    await relay.start(sock=sock)
    try:
        yield relay
    finally:
        await relay.stop()


def _ca(relay: Relay) -> Path:
    return relay.config.data_dir / "tls" / "dev-ca.pem"


async def plain(port: int, data: bytes, *, timeout: float = 5.0) -> RawResponse:
    """Send ``data`` over plain TCP and read one response and whether the server closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(timeout):
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            status, reason, headers = await read_head(reader)
            length = int(dict(headers).get("content-length", "0"))
            body = await reader.readexactly(length)
        try:
            async with asyncio.timeout(1.0):
                closed = await reader.read(1) == b""
        except TimeoutError:
            closed = False
        return RawResponse(status, reason, headers, body, closed)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _assert_bare(response: RawResponse, *, head: bool = False) -> None:
    """Plain HTTP: no body, no HSTS (RFC 6797 §7.2), no banner."""
    assert response.body == b""
    assert response.header("content-length") == (None if head else "0")
    assert response.header("strict-transport-security") is None
    assert response.header("server") is None
    assert response.header("content-type") is None


# ------------------------------------------------------------------ port 80


@pytest.mark.asyncio(loop_scope="module")
async def test_http_redirects_our_hosts_to_https_same_host_path_and_query(relay: Relay) -> None:
    port = relay.config.listen_port
    tenant = f"{new_instance_id()}.home.localhost"
    cases = [
        (f"GET /lovelace/0?edit=1&x=%2F HTTP/1.1\r\nHost: {ACCOUNT}\r\n\r\n", ACCOUNT),
        (f"GET /lovelace/0?edit=1&x=%2F HTTP/1.1\r\nHost: {ACCOUNT.upper()}:80\r\n\r\n", ACCOUNT),
        (f"POST /lovelace/0?edit=1&x=%2F HTTP/1.1\r\nHost: {tenant}.\r\n\r\n", tenant),
        (f"HEAD /lovelace/0?edit=1&x=%2F HTTP/1.1\r\nHost: {tenant}:8080\r\n\r\n", tenant),
    ]
    assert relay.http_listener is not None
    for request, host in cases:
        response = await plain(relay.http_listener.port, request.encode())
        assert response.status == 308, request
        assert response.header("location") == f"https://{host}:{port}/lovelace/0?edit=1&x=%2F"
        _assert_bare(response, head=request.startswith("HEAD"))


@pytest.mark.asyncio(loop_scope="module")
async def test_http_never_redirects_to_a_host_that_is_not_ours(relay: Relay) -> None:
    assert relay.http_listener is not None
    cases = {
        b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n": 421,
        b"GET / HTTP/1.1\r\nHost: homeport.localhost.evil.example\r\n\r\n": 421,
        b"GET / HTTP/1.1\r\nHost: notaninstance.home.localhost\r\n\r\n": 421,
        b"GET / HTTP/1.1\r\nHost: home.localhost\r\n\r\n": 421,
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n": 421,
        b"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n": 421,
        b"GET / HTTP/1.1\r\nHost: evil.example@homeport.localhost\r\n\r\n": 421,
        b"GET / HTTP/1.0\r\n\r\n": 400,  # no Host at all
        b"GET http://evil.example/ HTTP/1.1\r\nHost: homeport.localhost\r\n\r\n": 400,
        b"OPTIONS * HTTP/1.1\r\nHost: homeport.localhost\r\n\r\n": 400,
    }
    for request, status in cases.items():
        response = await plain(relay.http_listener.port, request)
        assert response.status == status, request
        assert response.header("location") is None, request
        assert response.closed, request
        _assert_bare(response)


@pytest.mark.asyncio(loop_scope="module")
async def test_http_acme_challenge_path_is_404_for_now(relay: Relay) -> None:
    assert relay.http_listener is not None
    request = b"GET /.well-known/acme-challenge/abc123 HTTP/1.1\r\nHost: homeport.localhost\r\n\r\n"
    response = await plain(relay.http_listener.port, request)
    assert response.status == 404
    assert response.header("location") is None
    _assert_bare(response)


@pytest.mark.asyncio(loop_scope="module")
async def test_http_parser_errors_carry_no_banner_and_no_hsts(relay: Relay) -> None:
    assert relay.http_listener is not None
    response = await plain(relay.http_listener.port, b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 400
    assert response.header("server") is None
    assert response.header("strict-transport-security") is None
    assert response.closed


def test_redirect_target_uses_the_public_https_port() -> None:
    config = RelayConfig(data_dir=Path("/nonexistent"), listen_port=8443, public_port=443)
    assert (
        redirect_target(config, "homeport.localhost:80", "/a?b") == "https://homeport.localhost/a?b"
    )
    assert redirect_target(config, "homeport.localhost", "//evil.example/") == (
        "https://homeport.localhost//evil.example/"  # a path on our host, not another authority
    )
    assert redirect_target(config, "homeport.localhost", "http://evil.example/") is None


def test_http_listener_is_off_unless_asked_for(tmp_path: Path) -> None:
    args = build_parser().parse_args(["relay", "--data-dir", str(tmp_path)])
    config = relay_config(args)
    assert config.http_listen_port is None
    assert config.tls_profile == "modern"
    argv = ["relay", "--data-dir", str(tmp_path), "--http-listen", "127.0.0.1:8080"]
    args = build_parser().parse_args([*argv, "--tls-profile", "intermediate"])
    config = relay_config(args)
    assert (config.http_listen_host, config.http_listen_port) == ("127.0.0.1", 8080)
    assert config.tls_profile == "intermediate"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["relay", "--tls-profile", "old"])


# --------------------------------------------------------------- security.txt

_FIELD = re.compile(r"([A-Za-z-]+): (.+)")


@pytest.mark.asyncio(loop_scope="module")
async def test_security_txt_on_the_account_host(relay: Relay) -> None:
    port = relay.config.listen_port
    before = datetime.now(UTC).replace(microsecond=0)
    request = f"GET /.well-known/security.txt HTTP/1.1\r\nHost: {ACCOUNT}:{port}\r\n\r\n"
    response = await exchange(port, ACCOUNT, _ca(relay), request.encode())
    after = datetime.now(UTC)
    assert response.status == 200
    assert response.header("content-type") == "text/plain; charset=utf-8"
    assert response.header("strict-transport-security") is not None
    assert response.header("server") is None
    lines = response.body.decode("utf-8").splitlines()
    fields = dict(m.groups() for line in lines if (m := _FIELD.fullmatch(line)))
    assert len(fields) == len(lines) == 5
    assert fields["Contact"] == "mailto:security@homeport.example"
    assert fields["Canonical"] == f"https://{ACCOUNT}:{port}/.well-known/security.txt"
    assert fields["Preferred-Languages"] == "en"
    assert fields["Policy"].startswith("https://")
    expires = datetime.strptime(fields["Expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before + timedelta(days=365) <= expires <= after + timedelta(days=365)


@pytest.mark.asyncio(loop_scope="module")
async def test_security_txt_is_not_served_on_tenant_hosts(relay: Relay) -> None:
    port = relay.config.listen_port
    tenant = f"{new_instance_id()}.home.localhost"
    request = f"GET /.well-known/security.txt HTTP/1.1\r\nHost: {tenant}:{port}\r\n\r\n"
    response = await exchange(port, tenant, _ca(relay), request.encode())
    assert response.status != 200
    assert b"Contact:" not in response.body


def test_security_txt_expiry_is_computed_at_serve_time() -> None:
    config = RelayConfig(data_dir=Path("/nonexistent"))
    moment = datetime(2030, 2, 3, 4, 5, 6, 789, tzinfo=UTC)
    text = security_txt(config, now=moment).text or ""
    assert "Expires: 2031-02-03T04:05:06Z\n" in text


def test_security_txt_contact_matches_security_md() -> None:
    config = RelayConfig(data_dir=Path("/nonexistent"))
    address = config.security_contact.removeprefix("mailto:")
    policy = (REPO / "SECURITY.md").read_text(encoding="utf-8")
    assert f"**{address}**" in policy
    assert "security.txt" in policy


# ------------------------------------------------------------------ banners

MALFORMED = [
    b"G@T / HTTP/1.1\r\nHost: homeport.localhost\r\n\r\n",  # bad method token
    b"GET / HTTP/1.1\r\nHost: homeport.localhost\r\nBad Name: x\r\n\r\n",  # space in name
    b"GET / HTTP/1.1\r\nHost: homeport.localhost\r\nX: a\x00b\r\n\r\n",  # NUL in value
    b"GET / HTTP/9.9\r\nHost: homeport.localhost\r\n\r\n",  # unknown version
]


@pytest.mark.asyncio(loop_scope="module")
async def test_parser_rejections_over_tls_carry_no_banner(relay: Relay) -> None:
    port = relay.config.listen_port
    for request in MALFORMED:
        response = await exchange(port, ACCOUNT, _ca(relay), request)
        assert 400 <= response.status < 600, request
        assert response.header("server") is None, (request, response.headers)
        assert response.header("x-powered-by") is None
        assert response.header("strict-transport-security") is not None, request
        assert response.header("x-content-type-options") == "nosniff"
        assert response.closed, request


@pytest.mark.asyncio(loop_scope="module")
async def test_routed_responses_carry_no_banner(relay: Relay) -> None:
    port = relay.config.listen_port
    for host in (ACCOUNT, "unknown.example"):
        request = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        response = await exchange(port, ACCOUNT, _ca(relay), request)
        assert response.header("server") is None, host
        assert response.header("strict-transport-security") is not None, host


def test_security_txt_fields_come_from_the_relay_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMEPORT_SECURITY_CONTACT", "mailto:psirt@relay.example")
    config = relay_config(build_parser().parse_args(["relay", "--data-dir", str(tmp_path)]))
    text = security_txt(config).text or ""
    assert "Contact: mailto:psirt@relay.example\n" in text
    assert "Policy: https://homeport.example/SECURITY.md\n" in text
