"""The certificate bot inside the relay, end to end (R-ACME-01/03/04, R-TLS-07).

A real relay with ``--acme-challenge tls-alpn-01`` (on its own TLS port) or
``http-01`` (on its port-80 listener) and DNS-01 through BIND, against pebble:
it starts on a placeholder, obtains the account host's certificate and the
tenant wildcard (DNS-01),
serves each by SNI, and renews both while an add-on tunnel and a keep-alive
connection stay open: the open ones keep working on the old session, new
handshakes get the new chain.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import ssl
from pathlib import Path

import pytest
from bind import Zone, named_available, start_named
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pebble import pebble_available, start_pebble
from ports import listening_socket, reserve_port
from relay_process import RelayProcess
from stack import start_stack

from homeport.addon.client import State
from homeport.relay.app import Relay
from homeport.relay.config import RelayConfig
from homeport.tls.acme_settings import AcmeSettings
from homeport.tls.served import ACCOUNT, TENANT

pytestmark = [
    pytest.mark.skipif(not pebble_available(), reason="scripts/system-deps: pebble"),
    pytest.mark.skipif(not named_available(), reason="scripts/system-deps: bind9"),
    pytest.mark.timeout(300),
]

ACCOUNT_HOST = "homeport.localhost"
TENANT_DOMAIN = "home.localhost"
ZONE = Zone(
    "localhost",
    records="homeport IN A 127.0.0.1\n",
    grants=(f"name _acme-challenge.{TENANT_DOMAIN}. TXT",),
)


async def peer_chain(
    port: int, name: str, ca: Path
) -> tuple[x509.Certificate, asyncio.StreamReader, asyncio.StreamWriter]:
    """A verifying TLS connection (trusting ``ca`` only) to ``name``; its leaf."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["http/1.1"])
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=name), 20
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der), reader, writer


async def get_security_txt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One keep-alive request on an open connection; the status line."""
    writer.write(f"GET /.well-known/security.txt HTTP/1.1\r\nHost: {ACCOUNT_HOST}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), 20)
    return head.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("challenge", ["tls-alpn-01", "http-01"])
async def test_relay_obtains_serves_and_renews_without_dropping(
    tmp_path: Path, challenge: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="homeport.relay.tls")
    sock, http_port = listening_socket(), reserve_port()
    port = sock.getsockname()[1]
    with (
        start_named(tmp_path / "named", [ZONE]) as named,
        start_pebble(
            tmp_path / "pebble",
            http_port=http_port,
            tls_port=port,
            dns_port=named.port,
            validity_seconds=45 * 86400,
        ) as pebble,
    ):
        root = tmp_path / "pebble-root.pem"
        root.write_bytes(pebble.root_pem())
        config = RelayConfig(
            data_dir=tmp_path / "relay",
            account_host=ACCOUNT_HOST,
            tenant_domain=TENANT_DOMAIN,
            listen_port=port,
            http_listen_port=http_port if challenge == "http-01" else None,
            drain_seconds=2.0,
            acme=AcmeSettings(
                directory=pebble.directory_url,
                ca_file=pebble.ca_bundle,
                challenge=challenge,
                dns_server="127.0.0.1",
                dns_port=named.port,
                dns_tsig_key_file=named.key_file,
            ),
        )

        async def issued(relay: Relay) -> None:
            keeper = relay.tls.keeper
            assert keeper is not None
            async with asyncio.timeout(150):
                while keeper.renewals < 2:
                    await asyncio.sleep(0.2)

        async with start_stack(
            tmp_path, config=config, sock=sock, relay_ca=root, before_addon=issued
        ) as stack:
            keeper = stack.relay.tls.keeper
            assert keeper is not None
            acme_dir = config.data_dir / "acme"
            for sub in ("account-host", "tenant-wildcard"):
                assert (acme_dir / sub / "key.pem").stat().st_mode & 0o777 == 0o600
            assert (acme_dir / "account.key").stat().st_mode & 0o777 == 0o600

            # SNI picks the certificate; both chain to pebble's root (leaf + intermediate).
            account1, reader, writer = await peer_chain(port, ACCOUNT_HOST, root)
            tenant_host = stack.config.tenant_host(stack.instance_id)
            tenant1, _, tw = await peer_chain(port, tenant_host, root)
            tw.close()
            sans = account1.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            assert sans.value.get_values_for_type(x509.DNSName) == [ACCOUNT_HOST]
            sans = tenant1.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            assert sans.value.get_values_for_type(x509.DNSName) == [f"*.{TENANT_DOMAIN}"]
            served = x509.load_pem_x509_certificates(stack.relay.tls.cert.read_bytes())
            assert served[0] == account1
            assert len(served) >= 2
            assert all(c.subject != c.issuer for c in served)  # the root is never sent
            # R-ACME-05: the CAA records for this account are suggested once.
            caa = [r for r in caplog.records if r.message == "acme.caa_records"]
            assert len(caa) == 1
            assert any("accounturi=https://" in line for line in caa[0].records)  # type: ignore[attr-defined]
            assert await get_security_txt(reader, writer) == b"HTTP/1.1 200 OK"

            tunnel = stack.relay.hub.tunnel_for(stack.instance_id)
            assert tunnel is not None
            connects = sum(1 for s in stack.statuses if s.state is State.CONNECTED)

            # Renewal is due 31 days in (a third of 45 days left): renew both, live.
            later = dt.datetime.now(dt.UTC) + dt.timedelta(days=31)
            keeper._now = lambda: later
            await asyncio.wait_for(keeper.check_once(), 150)
            assert keeper.renewals == 4
            assert all(m.failures == 0 for m in keeper.managed)
            # A single relay keeps them in its own database too (sealed), as a cluster does.
            store = stack.relay.tls.store
            assert store is not None
            assert {k: v for k, (_, v) in (await store.stamps()).items()} == {ACCOUNT: 2, TENANT: 2}

            account2, _, w2 = await peer_chain(port, ACCOUNT_HOST, root)
            tenant2, _, tw = await peer_chain(port, tenant_host, root)
            tw.close()
            w2.close()
            assert account2.serial_number != account1.serial_number
            assert tenant2.serial_number != tenant1.serial_number
            assert account2.public_key() != account1.public_key()  # a fresh key each time
            # The channel binding follows the served certificate.
            der = account2.public_bytes(serialization.Encoding.DER)
            assert stack.relay.tls.account_cert_sha256() == hashlib.sha256(der).digest()
            assert stack.relay.tls.served.pair(ACCOUNT) is not None
            assert stack.relay.tls.served.pair(TENANT) is not None

            # Nothing open was dropped: the old keep-alive connection still answers
            # on its old session, and the tunnel is the same one.
            assert await get_security_txt(reader, writer) == b"HTTP/1.1 200 OK"
            writer.close()
            assert stack.relay.hub.tunnel_for(stack.instance_id) is tunnel
            assert stack.addon.status.state is State.CONNECTED
            assert sum(1 for s in stack.statuses if s.state is State.CONNECTED) == connects


async def test_homeport_relay_command_gets_its_certificates(tmp_path: Path) -> None:
    """The deployed command: ``homeport relay --acme-* --dns-*``, as its own process."""
    port = reserve_port()
    with (
        start_named(tmp_path / "named", [ZONE]) as named,
        start_pebble(tmp_path / "pebble", http_port=1, tls_port=port, dns_port=named.port) as p,
    ):
        root = tmp_path / "pebble-root.pem"
        root.write_bytes(p.root_pem())
        relay = RelayProcess(
            tmp_path / "relay",
            port=port,
            extra_args=(
                "--account-host", ACCOUNT_HOST,
                "--tenant-domain", TENANT_DOMAIN,
                "--acme-directory", p.directory_url,
                "--acme-ca-file", str(p.ca_bundle),
                "--acme-challenge", "tls-alpn-01",
                "--dns-server", f"127.0.0.1:{named.port}",
                "--dns-tsig-key-file", str(named.key_file),
            ),
        )  # fmt: skip
        await relay.start(timeout=60)
        try:
            for name in (ACCOUNT_HOST, f"abc.{TENANT_DOMAIN}"):
                async with asyncio.timeout(150):
                    while True:  # the placeholder until the bot has the real one
                        try:
                            leaf, _, writer = await peer_chain(port, name, root)
                        except ssl.SSLCertVerificationError:
                            await asyncio.sleep(0.5)
                            continue
                        writer.close()
                        break
                assert leaf.not_valid_after_utc > dt.datetime.now(dt.UTC)
            # A graceful restart serves the stored certificates at once (no new order).
            assert await relay.stop() == 0
            await relay.start(timeout=60)
            for name in (ACCOUNT_HOST, f"abc.{TENANT_DOMAIN}"):
                _, _, writer = await peer_chain(port, name, root)
                writer.close()
        finally:
            await relay.close()
        assert relay.log_text().count("acme.renewed") == 2  # both from the first run only
