"""The renewal loop: due dates, back-off after failures, alert state (R-ACME-03/06)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import secrets
from pathlib import Path

import pytest
from ports import reserve_port
from sqlalchemy import delete

from homeport.accounts import Database, default_sqlite_url
from homeport.accounts.models import CertificateRow
from homeport.accounts.secretbox import SecretBox
from homeport.cli import build_parser, relay_config
from homeport.tls.acme_bot import AcmeBot, AcmeBotError, Http01Responder, RetryPolicy
from homeport.tls.acme_settings import acme_settings, add_acme_arguments
from homeport.tls.context import local_certificate_sha256
from homeport.tls.devca import create_independent_ca
from homeport.tls.keeper import CertificateKeeper, Managed
from homeport.tls.lease import RenewalLease
from homeport.tls.served import ACCOUNT, CertPair, ServedCertificates
from homeport.tls.store import CertificateStore

NAME = "account.relay.test"


def setup(tmp_path: Path) -> tuple[CertificateKeeper, Managed, list[dt.datetime]]:
    """A keeper whose bot talks to a port nobody listens on: every issuance fails."""
    ca = create_independent_ca(tmp_path / "ca")
    cert, key = ca.issue_server_certificate([NAME], tmp_path / "tls")
    served = ServedCertificates(
        CertPair(cert, key), account_names=[NAME], tenant_domain="home.relay.test"
    )
    bot = AcmeBot(
        f"https://127.0.0.1:{reserve_port()}/dir",
        tmp_path / "acme" / "account.key",
        tmp_path / "acme" / "account-host",
        [NAME],
        Http01Responder(),
        retry=RetryPolicy(step_attempts=2),
        sleep=lambda _s: None,
    )
    managed = Managed(ACCOUNT, bot)
    clock = [dt.datetime(2028, 3, 1, tzinfo=dt.UTC)]
    keeper = CertificateKeeper(
        served,
        [managed],
        now=lambda: clock[0],
        first_backoff=dt.timedelta(minutes=5),
        max_backoff=dt.timedelta(minutes=40),
    )
    return keeper, managed, clock


async def test_failures_back_off_exponentially_and_keep_serving(tmp_path: Path) -> None:
    keeper, managed, clock = setup(tmp_path)
    served_before = keeper.served.account_cert_sha256()
    waits = []
    for _ in range(6):
        wait = await asyncio.wait_for(keeper.check_once(), 60)
        waits.append(wait)
        assert managed.not_before is not None
        # Nothing is tried again before the back-off ends.
        clock[0] = managed.not_before - dt.timedelta(seconds=1)
        assert await keeper.check_once() == 1.0
        clock[0] = managed.not_before
    assert waits == [300.0, 600.0, 1200.0, 2400.0, 2400.0, 2400.0]  # capped
    assert managed.failures == 6
    assert managed.alert  # no certificate of its own yet
    assert keeper.renewals == 0
    assert keeper.served.account_cert_sha256() == served_before  # placeholder still served


async def test_run_survives_failures(tmp_path: Path) -> None:
    keeper, managed, _ = setup(tmp_path)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:
            raise asyncio.CancelledError
        await asyncio.sleep(0)

    keeper._sleep = sleep
    task = asyncio.create_task(keeper.run())
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 60)
    assert len(slept) == 3
    assert managed.failures >= 1


# ----------------------------------------------------------------- options


def test_acme_options_checked() -> None:

    parser = argparse.ArgumentParser()
    add_acme_arguments(parser)

    def parse(*argv: str) -> object:
        args = parser.parse_args(argv)
        return acme_settings(lambda name: getattr(args, name, None))

    assert parse() is None
    settings = parse(
        "--acme-directory", "https://acme.example/dir",
        "--acme-challenge", "tls-alpn-01",
        "--dns-server", "ns1.example.net:5353",
        "--dns-tsig-key-file", "/etc/homeport/tsig.key",
        "--dns-zone", "ACME.example.net.",
    )  # fmt: skip
    assert settings is not None
    assert (settings.dns_server, settings.dns_port, settings.dns_zone) == (
        "ns1.example.net",
        5353,
        "acme.example.net",
    )
    for argv, message in [
        (["--dns-server", "ns1"], "needs --acme-directory"),
        (["--acme-directory", "http://acme.example/dir"], "https://"),
        (["--acme-directory", "https://a/d", "--dns-server", "ns1"], "--dns-tsig-key-file"),
        (["--acme-directory", "https://a/d", "--dns-zone", "z"], "need --dns-server"),
    ]:
        with pytest.raises(SystemExit, match=message):
            parse(*argv)


def test_relay_command_line_reaches_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flags, environment and TOML all reach ``RelayConfig.acme`` (``homeport relay``)."""
    toml = tmp_path / "relay.toml"
    toml.write_text('[relay]\nacme-directory = "https://acme.example/dir"\ndns-zone = "acme.x"\n')
    monkeypatch.setenv("HOMEPORT_DNS_SERVER", "127.0.0.1:5353")
    args = build_parser().parse_args(
        ["relay", "--config", str(toml), "--acme-challenge", "tls-alpn-01",
         "--dns-tsig-key-file", "/k"]
    )  # fmt: skip
    config = relay_config(args)
    assert config.acme is not None
    assert config.acme.directory == "https://acme.example/dir"
    assert config.acme.challenge == "tls-alpn-01"
    assert (config.acme.dns_server, config.acme.dns_port) == ("127.0.0.1", 5353)
    assert config.acme.dns_tsig_key_file == Path("/k")
    assert config.acme.dns_zone == "acme.x"
    no_port80 = build_parser().parse_args(["relay", "--acme-directory", "https://a.example/d"])
    monkeypatch.delenv("HOMEPORT_DNS_SERVER")
    with pytest.raises(SystemExit, match="needs --http-listen"):
        relay_config(no_port80)


async def test_cancelled_bot_stops_without_waiting(tmp_path: Path) -> None:
    """Relay shutdown: a run in its worker thread stops instead of sleeping out its back-off."""
    bot = AcmeBot(
        f"https://127.0.0.1:{reserve_port()}/dir",
        tmp_path / "acme" / "account.key",
        tmp_path / "certs",
        [NAME],
        Http01Responder(),
        retry=RetryPolicy(step_attempts=50, base_delay=20.0, max_delay=60.0),
    )
    run = asyncio.create_task(bot.obtain_async())
    await asyncio.sleep(0.5)  # the first attempt fails (nothing listens); a long back-off begins
    started = asyncio.get_running_loop().time()
    bot.cancel()
    with pytest.raises(AcmeBotError, match="cancelled"):
        await asyncio.wait_for(run, 30)
    assert asyncio.get_running_loop().time() - started < 15


# ------------------------------------------------------------ shared store


async def test_a_relay_upgraded_with_its_own_certificate_stores_it_without_ordering(
    tmp_path: Path,
) -> None:
    """A relay that had an ACME certificate before the store existed puts it there
    under the lease (so other nodes can serve it) instead of ordering a new one."""
    keeper, managed, clock = setup(tmp_path)
    clock[0] = dt.datetime.now(dt.UTC)
    ca = create_independent_ca(tmp_path / "ca-own")
    cert, key = ca.issue_server_certificate([NAME], tmp_path / "own")
    managed.bot.cert_dir.mkdir(parents=True)
    managed.bot.cert_path.write_bytes(cert.read_bytes())
    managed.bot.key_path.write_bytes(key.read_bytes())
    database = Database(default_sqlite_url(tmp_path / "db"))
    await database.migrate()
    await database.connect()
    try:
        store = CertificateStore(database, SecretBox(secrets.token_bytes(32)), node="n1")
        keeper.store, keeper.lease = store, RenewalLease(database, "n1")
        stored: list[tuple[str, int]] = []
        keeper.on_stored = lambda kind, version: stored.append((kind, version))
        await asyncio.wait_for(keeper.check_once(), 60)
        assert stored == [(ACCOUNT, 1)]
        assert managed.failures == 0  # nothing was ordered (the CA is unreachable)
        loaded = await store.load(ACCOUNT)
        assert loaded is not None
        assert loaded.chain_pem == cert.read_bytes()
        # Another check finds nothing to do: no second write, no order.
        await asyncio.wait_for(keeper.check_once(), 60)
        assert stored == [(ACCOUNT, 1)]
        assert keeper.renewals == 0
    finally:
        await database.close()


async def test_a_node_that_cannot_open_the_stored_row_never_overwrites_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node with another secret-box key file (or facing a tampered row) must not
    replace the cluster's certificate with one sealed under its own key."""
    keeper, managed, clock = setup(tmp_path)
    clock[0] = dt.datetime.now(dt.UTC)
    ca = create_independent_ca(tmp_path / "ca-other")
    cert, key = ca.issue_server_certificate([NAME], tmp_path / "other")
    database = Database(default_sqlite_url(tmp_path / "db"))
    await database.migrate()
    await database.connect()
    try:
        right_box = SecretBox(secrets.token_bytes(32))
        held = await RenewalLease(database, "n0").acquire()
        assert held is not None
        await CertificateStore(database, right_box, node="n0").put(
            ACCOUNT, cert.read_bytes(), key.read_bytes(), fence=held.token
        )
        await RenewalLease(database, "n0").release(held)
        wrong = CertificateStore(database, SecretBox(secrets.token_bytes(32)), node="n1")
        keeper.store, keeper.lease = wrong, RenewalLease(database, "n1")
        before = keeper.served.account_cert_sha256()
        await asyncio.wait_for(keeper.check_once(), 60)
        assert wrong.refused == 1
        assert managed.refused == (1, 1)  # (fencing token, version)
        assert managed.failures == 0  # no order was even tried (its certificate is due)
        assert keeper.served.account_cert_sha256() == before
        assert any(r.message == "acme.renewal_skipped" for r in caplog.records)
        loaded = await CertificateStore(database, right_box, node="n0").load(ACCOUNT)
        assert loaded is not None
        assert loaded.version == 1  # untouched
    finally:
        await database.close()


async def test_a_row_deleted_and_stored_again_is_still_newer(tmp_path: Path) -> None:
    """Versions start again at 1 after an operator deletes a row (lost key file); the
    fencing token, which only grows, keeps the order, so every node loads the new one."""
    keeper, managed, clock = setup(tmp_path)
    clock[0] = dt.datetime.now(dt.UTC)
    database = Database(default_sqlite_url(tmp_path / "db"))
    await database.migrate()
    await database.connect()
    try:
        box = SecretBox(secrets.token_bytes(32))
        writer, lease = CertificateStore(database, box, node="n0"), RenewalLease(database, "n0")

        async def store_new(tag: str) -> bytes:
            ca = create_independent_ca(tmp_path / f"ca-{tag}")
            cert, key = ca.issue_server_certificate([NAME], tmp_path / tag)
            held = await lease.acquire()
            assert held is not None
            await writer.put(ACCOUNT, cert.read_bytes(), key.read_bytes(), fence=held.token)
            await lease.release(held)
            return cert.read_bytes()

        await store_new("1")
        await store_new("2")
        keeper.store, keeper.lease = (
            CertificateStore(database, box, node="n1"),
            RenewalLease(database, "n1"),
        )
        await asyncio.wait_for(keeper.check_once(), 60)
        assert managed.version == 2
        async with database.session(write=True) as s, s.begin():
            await s.execute(delete(CertificateRow))
        third = await store_new("3")
        await asyncio.wait_for(keeper.check_once(), 60)
        assert managed.version == 1
        assert managed.bot.cert_path.read_bytes() == third
        assert keeper.served.account_cert_sha256() == local_certificate_sha256(
            managed.bot.cert_path
        )
    finally:
        await database.close()
