"""Certificates in a cluster: one renewer at a time, stored sealed, served by every node.

Real parts only: pebble (Let's Encrypt's test CA), two relays (node A and node B)
in this process on one real PostgreSQL database and one real ``redis-server``,
both with the certificate bot on (HTTP-01). Pebble's HTTP-01 validations go to
a small TCP forwarder standing in for the load balancer on port 80: it sends
each connection to node B while B listens, else to node A (health-checked
failover), so the validations of A's orders are answered by B, from the
database. The served certificate is read from real TLS handshakes.

The story: both keepers run and exactly one node orders; the other serves the
new certificate without a restart (told by a sealed Redis notice; with Redis
down, by its poll); the lease holder dies mid-lease and the other takes over
only after the lease expired; the dead holder's token can no longer write; a
tampered row is refused and never served.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import logging
import secrets
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography import x509
from pebble import pebble_available, start_pebble
from ports import listening_socket, reserve_port
from postgres import TEMPLATE, PostgresServer
from prometheus_client import generate_latest
from redis_server import RedisServer
from sqlalchemy import select, update
from stack import seed_dev_ca

from homeport.accounts import Database
from homeport.accounts.models import CertificateRow
from homeport.accounts.models import RenewalLease as LeaseRow
from homeport.accounts.secretbox import KEY_FILE_NAME, SecretBox
from homeport.relay.app import Relay
from homeport.relay.config import RelayConfig
from homeport.relay.metrics import RelayCollector, certificate_gauges, metrics_registry
from homeport.tls.acme_settings import AcmeSettings
from homeport.tls.devca import DevCA
from homeport.tls.keeper import CertificateKeeper
from homeport.tls.lease import RenewalLease
from homeport.tls.store import CertificateStore, FencingError

pytestmark = [
    pytest.mark.skipif(not pebble_available(), reason="scripts/system-deps: pebble"),
    pytest.mark.timeout(300),
]

ACCOUNT_HOST = "homeport.localhost"
CLUSTER_KEY = b"test cluster key: 0123456789abcdefghijklmnopqrstuvwxyz"
LEASE_TTL = dt.timedelta(seconds=4)
#: Renewal is due after two thirds of pebble's 45 days.
DUE = dt.timedelta(days=31)


@contextlib.asynccontextmanager
async def port80(targets: list[int]) -> AsyncIterator[int]:
    """The load balancer's port 80: each connection to the first target that accepts it."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for port in targets:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
            return
        writer.close()

    port = reserve_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        yield port
    finally:
        server.close()


async def served_serial(port: int) -> int:
    """The serial of the account host's leaf that a new TLS handshake gets."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=ACCOUNT_HOST), 20
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der).serial_number


async def until(check: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    """Poll ``check`` (a value or an awaitable) until true; fail naming ``what``."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        pytest.fail(f"not within {timeout} s: {what}")


def keeper_of(relay: Relay) -> CertificateKeeper:
    keeper = relay.tls.keeper
    assert keeper is not None
    return keeper


def shifted_until_renewed(keeper: CertificateKeeper, renewals: int) -> None:
    """The keeper's clock runs ``DUE`` ahead until it has renewed ``renewals`` times in all."""
    keeper._now = lambda: (
        dt.datetime.now(dt.UTC) + (DUE if keeper.renewals < renewals else dt.timedelta(0))
    )


async def test_two_nodes_one_renewer_every_node_serves_it(
    tmp_path: Path,
    dev_ca: DevCA,
    postgres_template: PostgresServer,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    database = await postgres_template.create_database(template=TEMPLATE)
    url = postgres_template.database_url(database)
    cluster_key = tmp_path / "cluster.key"
    cluster_key.write_bytes(CLUSTER_KEY)
    box_key = secrets.token_bytes(32)  # the same secret-box key file on every node
    http = {"a": reserve_port(), "b": reserve_port()}
    socks = {"a": listening_socket(), "b": listening_socket()}
    # Port 80 goes to B while B is up: never to A, the node ordering in steps 1 to 3.
    async with port80([http["b"], http["a"]]) as lb_http:
        with start_pebble(
            tmp_path / "pebble", http_port=lb_http, validity_seconds=45 * 86400, authz_reuse=0
        ) as pebble:

            def node(name: str) -> Relay:
                data_dir = tmp_path / name
                seed_dev_ca(data_dir, dev_ca)
                (data_dir / KEY_FILE_NAME).write_bytes(box_key)
                (data_dir / KEY_FILE_NAME).chmod(0o600)
                relay = Relay(
                    RelayConfig(
                        data_dir=data_dir,
                        account_host=ACCOUNT_HOST,
                        listen_port=socks[name].getsockname()[1],
                        http_listen_port=http[name],
                        drain_seconds=1.0,
                        database_url=url,
                        redis_url=redis_server.url,
                        cluster_key_file=cluster_key,
                        acme=AcmeSettings(
                            directory=pebble.directory_url,
                            ca_file=pebble.ca_bundle,
                            challenge="http-01",
                        ),
                    )
                )
                keeper = keeper_of(relay)
                assert keeper.lease is not None
                keeper.lease.ttl = LEASE_TTL
                # Long polls: until step 3 only the Redis notice can wake a node.
                keeper.poll_interval = dt.timedelta(hours=1)
                return relay

            a, b = node("a"), node("b")
            port_a, port_b = (s.getsockname()[1] for s in (socks["a"], socks["b"]))
            ka, kb = keeper_of(a), keeper_of(b)
            db = Database(url)
            await db.connect()
            store = CertificateStore(db, SecretBox(box_key), node="test")
            a_stopped = False
            try:
                # 1. Both keepers run and want a certificate. B starts while another
                # node holds the lease, so A gets it when it starts, and orders; the
                # CA's validations reach B's port 80, which answers from the database.
                other = RenewalLease(db, "node-elsewhere")
                elsewhere = await other.acquire()
                assert elsewhere is not None
                await b.start(sock=socks["b"])
                assert kb.lease is not None
                await until(lambda: kb.lease.refusals >= 1, "B tried the lease")  # type: ignore[union-attr]
                placeholder = await served_serial(port_b)
                await other.release(elsewhere)
                await a.start(sock=socks["a"])
                await until(lambda: ka.renewals == 1, "A ordered")
                first = await served_serial(port_a)
                assert first != placeholder
                await until(lambda: kb.managed[0].version == 1, "B loaded version 1")
                assert await served_serial(port_b) == first  # no restart of B
                assert kb.renewals == 0  # B never ordered
                async with db.session() as s:
                    row = await s.get(CertificateRow, "account")
                    assert row is not None
                assert row.written_by == a.tls.node
                assert any(r.message == "cluster.certificate_notice" for r in caplog.records)

                # 2. A renews (due); B is told over Redis and serves the new one.
                shifted_until_renewed(ka, 2)
                ka.wake()
                await until(lambda: ka.renewals == 2, "A renewed")
                second = await served_serial(port_a)
                assert second != first
                await until(lambda: kb.managed[0].version == 2, "B loaded version 2")
                assert await served_serial(port_b) == second
                assert kb.renewals == 0

                # 3. Redis down: no notice, B's poll still finds the renewal.
                redis_server.stop()
                kb.poll_interval = dt.timedelta(seconds=1)
                kb.wake()  # adopt the short poll now (the store holds nothing newer yet)
                shifted_until_renewed(ka, 3)
                ka.wake()
                await until(lambda: ka.renewals == 3, "A renewed with Redis down")
                third = await served_serial(port_a)
                await until(lambda: kb.managed[0].version == 3, "B polled version 3")
                assert await served_serial(port_b) == third
                assert kb.renewals == 0

                # 4. A takes the lease for a renewal and dies holding it.
                assert ka.lease is not None
                held = await ka.lease.acquire()
                assert held is not None
                async with db.session() as s:
                    expires = (await s.scalars(select(LeaseRow.expires_at))).one()
                await a.stop()
                a_stopped = True
                shifted_until_renewed(kb, 1)
                kb.wake()
                await until(lambda: kb.renewals == 1, "B took over and renewed")
                async with db.session() as s:
                    row = await s.get(CertificateRow, "account")
                    assert row is not None
                assert row.written_by == b.tls.node
                assert row.fence == held.token + 1  # a newer fencing token
                assert row.updated_at >= expires  # not before A's lease ran out
                fourth = await served_serial(port_b)
                assert fourth not in (placeholder, first, second, third)

                # 5. A's old token cannot overwrite what B stored (fencing).
                stored = x509.load_pem_x509_certificates(row.chain_pem.encode())
                assert stored[0].serial_number == fourth
                chain = (tmp_path / "a" / "acme" / "account-host" / "cert.pem").read_bytes()
                key = (tmp_path / "a" / "acme" / "account-host" / "key.pem").read_bytes()
                with pytest.raises(FencingError):
                    await store.put("account", chain, key, fence=held.token)
                loaded = await store.load("account")
                assert loaded is not None
                assert loaded.version == row.version  # unchanged

                # 6. A tampered row (key bytes altered, version bumped) is refused, not served.
                sealed = bytearray(row.key_sealed)
                sealed[-1] ^= 1
                async with db.session(write=True) as s, s.begin():
                    await s.execute(
                        update(CertificateRow)
                        .where(CertificateRow.kind == "account")
                        .values(key_sealed=bytes(sealed), version=row.version + 1)
                    )
                assert b.tls.store is not None
                await until(lambda: b.tls.store.refused >= 1, "B refused the row")  # type: ignore[union-attr]
                await asyncio.sleep(2.5)  # two more polls: refused once, not at every poll
                assert await served_serial(port_b) == fourth
                refusals = [
                    r for r in caplog.records if r.message == "tls.stored_certificate_refused"
                ]
                assert len(refusals) == 1
                scrape = generate_latest(
                    metrics_registry(
                        RelayCollector(
                            list, lambda: 0, lambda: 0, gauges=certificate_gauges(b.tls.store)
                        )
                    )
                ).decode()
                assert "homeport_certificate_store_refused 1.0" in scrape
                assert "PRIVATE KEY" not in caplog.text
            finally:
                await db.close()
                await b.stop()
                if not a_stopped:
                    await a.stop()
                await postgres_template.drop_database(database)
