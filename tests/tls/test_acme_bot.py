"""The certificate bot against pebble on loopback (R-ACME-01/02/03/06/07), HTTP-01."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pebble import Pebble, pebble_available, start_pebble

from homeport.relay.config import RelayConfig
from homeport.relay.edge import ACME_CHALLENGE_PREFIX, PlainHttpListener
from homeport.tls.acme_bot import (
    AcmeBot,
    AcmeBotError,
    Http01Responder,
    RetryPolicy,
    renewal_decision,
)

NAME = "account.relay.test"
needs_pebble = pytest.mark.skipif(not pebble_available(), reason="scripts/system-deps: pebble")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
async def port80(tmp_path: Path) -> AsyncIterator[tuple[PlainHttpListener, Http01Responder]]:
    """The relay's real plain-HTTP listener, consulting a bot responder."""
    responder = Http01Responder()
    config = RelayConfig(data_dir=tmp_path / "relay", http_listen_port=0)
    listener = PlainHttpListener(config, keepalive_timeout=5, acme_responder=responder)
    await listener.start()
    try:
        yield listener, responder
    finally:
        await listener.stop()


def make_bot(pebble: Pebble, root: Path, responder: Http01Responder, **kw: object) -> AcmeBot:
    return AcmeBot(
        pebble.directory_url,
        root / "acme" / "account.key",
        root / "certs",
        [NAME],
        responder,
        pebble.ca_bundle,
        **kw,  # type: ignore[arg-type]
    )


def check_issued(bot: AcmeBot, pebble: Pebble) -> x509.Certificate:
    certs = x509.load_pem_x509_certificates(bot.cert_path.read_bytes())
    leaf, chain = certs[0], certs[1:]
    # Name, key type, and the key on disk is the certificate's key.
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [NAME]
    key = serialization.load_pem_private_key(bot.key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert leaf.public_key() == key.public_key()
    account_key = serialization.load_pem_private_key(
        bot.account_key_path.read_bytes(), password=None
    )
    assert isinstance(account_key, ec.EllipticCurvePrivateKey)
    assert account_key.curve.name == "secp256r1"
    assert account_key.public_key() != key.public_key()  # separate keys (R-ACME-02)
    assert mode(bot.key_path) == 0o600
    assert mode(bot.account_key_path) == 0o600
    # Full chain: leaf + intermediate(s), no root; each signed by the next,
    # the last by pebble's root.
    assert chain, "intermediates missing"
    assert all(c.subject != c.issuer for c in chain)
    for child, parent in itertools.pairwise(certs):
        child.verify_directly_issued_by(parent)
    root = x509.load_pem_x509_certificate(pebble.root_pem())
    chain[-1].verify_directly_issued_by(root)
    assert bot.responder is not None
    assert len(bot.responder) == 0
    return leaf


@needs_pebble
async def test_issue_by_http01_and_reuse_account(
    tmp_path: Path, port80: tuple[PlainHttpListener, Http01Responder]
) -> None:
    listener, responder = port80
    with start_pebble(tmp_path / "pebble", http_port=listener.port) as pebble:
        bot = make_bot(pebble, tmp_path, responder)
        started = time.monotonic()
        first = await asyncio.wait_for(bot.obtain_async(), 60)
        elapsed = time.monotonic() - started
        leaf1 = check_issued(bot, pebble)
        assert first.certificate == leaf1
        account_url = bot.saved_account_url()
        assert account_url == first.account_url
        account_key = bot.account_key_path.read_bytes()

        # A second run (a fresh bot, as after a restart) reuses the account.
        again = make_bot(pebble, tmp_path, responder)
        second = await asyncio.wait_for(again.obtain_async(), 60)
        leaf2 = check_issued(again, pebble)
        assert second.account_url == account_url
        assert again.account_key_path.read_bytes() == account_key
        assert leaf2.serial_number != leaf1.serial_number
        assert leaf2.public_key() != leaf1.public_key()  # a fresh certificate key
        assert elapsed < 30


@needs_pebble
async def test_default_nonce_rejection_loop(
    tmp_path: Path, port80: tuple[PlainHttpListener, Http01Responder]
) -> None:
    """N=3 full issuances with pebble's default 5 % nonce rejection all succeed."""
    listener, responder = port80
    with start_pebble(tmp_path / "pebble", http_port=listener.port) as pebble:
        started = time.monotonic()
        for i in range(3):
            bot = make_bot(pebble, tmp_path / f"run{i}", responder)
            await asyncio.wait_for(bot.obtain_async(), 60)
            check_issued(bot, pebble)
        assert time.monotonic() - started < 120


@needs_pebble
async def test_heavy_nonce_rejection_is_retried(
    tmp_path: Path, port80: tuple[PlainHttpListener, Http01Responder]
) -> None:
    """At 60 % rejection the library's single retry is not enough; ours is (R-ACME-06)."""
    listener, responder = port80
    with start_pebble(tmp_path / "pebble", http_port=listener.port, nonce_reject=60) as pebble:
        retries = 0
        for i in range(3):
            bot = make_bot(
                pebble,
                tmp_path / f"run{i}",
                responder,
                retry=RetryPolicy(step_attempts=10, base_delay=0.1),
            )
            await asyncio.wait_for(bot.obtain_async(), 90)
            check_issued(bot, pebble)
            retries += bot.step_retries
        assert retries > 0  # P(no double rejection in 3 runs) is ~2e-5 at 60 %


@needs_pebble
async def test_failed_validation_backs_off_and_gives_up(
    tmp_path: Path, port80: tuple[PlainHttpListener, Http01Responder]
) -> None:
    """A responder the listener does not consult: validation fails, bounded retries."""
    listener, _served = port80
    unserved = Http01Responder()
    sleeps: list[float] = []
    with start_pebble(tmp_path / "pebble", http_port=listener.port, nonce_reject=0) as pebble:
        bot = make_bot(
            pebble,
            tmp_path,
            unserved,
            retry=RetryPolicy(order_attempts=2),
            sleep=sleeps.append,
        )
        with pytest.raises(AcmeBotError):
            await asyncio.wait_for(bot.obtain_async(), 60)
    assert len(sleeps) == 1
    assert sleeps[0] > 0
    assert not bot.cert_path.exists()
    assert not bot.key_path.exists()
    assert len(unserved) == 0


async def test_responder_answers_only_live_tokens(
    port80: tuple[PlainHttpListener, Http01Responder],
) -> None:
    listener, responder = port80
    base = f"http://127.0.0.1:{listener.port}{ACME_CHALLENGE_PREFIX}"
    token = "tok_EN-abc123"
    async with aiohttp.ClientSession() as http:

        async def fetch(path: str, method: str = "GET") -> tuple[int, bytes]:
            async with http.request(
                method,
                base + path,
                headers={"Host": "homeport.localhost"},
                allow_redirects=False,
            ) as r:
                return r.status, await r.read()

        assert await fetch(token) == (404, b"")
        responder.add(token, f"{token}.thumbprint")
        status, body = await fetch(token)
        assert (status, body) == (200, f"{token}.thumbprint".encode())
        assert (await fetch("unknown-token"))[0] == 404
        assert (await fetch(token + "x"))[0] == 404
        assert (await fetch(token + "/x"))[0] == 404
        assert (await fetch(token + "?a=1"))[0] == 404
        assert (await fetch(token, "POST"))[0] == 404
        responder.remove(token)
        assert (await fetch(token))[0] == 404
    assert responder.get("not a token!") is None
    with pytest.raises(ValueError, match="token"):
        responder.add("bad/token", "x")


# ------------------------------------------------------------- renewal


def make_cert(start: dt.datetime, lifetime: dt.timedelta) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, NAME)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + lifetime)
        .sign(key, hashes.SHA256())
    )


T0 = dt.datetime(2028, 3, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize("days", [90, 64, 45])
def test_renew_at_one_third_left(days: int) -> None:
    life = dt.timedelta(days=days)
    cert = make_cert(T0, life)
    renew_at = T0 + life * 2 / 3
    assert renewal_decision(cert, T0).renew is False
    before = renewal_decision(cert, renew_at - dt.timedelta(minutes=1))
    assert before.renew is False
    assert before.renew_at == renew_at
    after = renewal_decision(cert, renew_at + dt.timedelta(minutes=1))
    assert after.renew is True
    assert after.remaining == life / 3 - dt.timedelta(minutes=1)
    assert renewal_decision(cert, T0 + life + dt.timedelta(days=1)).renew is True


def test_short_lived_certificate() -> None:
    cert = make_cert(T0, dt.timedelta(hours=7))
    assert not renewal_decision(cert, T0 + dt.timedelta(hours=4)).renew
    assert renewal_decision(cert, T0 + dt.timedelta(hours=5)).renew


def test_alert_under_14_days(caplog: pytest.LogCaptureFixture) -> None:
    cert = make_cert(T0, dt.timedelta(days=90))
    with caplog.at_level(logging.WARNING, logger="homeport.tls.acme_bot"):
        quiet = renewal_decision(cert, T0 + dt.timedelta(days=75, hours=23))
        assert quiet.renew
        assert not quiet.alert
        assert not caplog.records
        loud = renewal_decision(cert, T0 + dt.timedelta(days=76, hours=1))
    assert loud.alert
    assert loud.renew
    assert [r.message for r in caplog.records] == ["acme.certificate_expiring"]


def test_no_certificate_means_renew_now() -> None:
    decision = renewal_decision(None, T0)
    assert decision.renew
    assert decision.renew_at == T0
    with pytest.raises(ValueError, match="timezone"):
        renewal_decision(None, dt.datetime(2028, 1, 1))


def test_group_readable_account_key_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "account.key"
    key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o640)
    bot = AcmeBot("https://127.0.0.1:1/dir", key, tmp_path / "c", [NAME], Http01Responder())
    with pytest.raises(AcmeBotError, match="readable"):
        bot.obtain()


@needs_pebble
async def test_renewal_of_a_45_day_pebble_certificate(
    tmp_path: Path, port80: tuple[PlainHttpListener, Http01Responder]
) -> None:
    """A real 45-day certificate: renew at 30 days in, alert under 14 days left."""
    listener, responder = port80
    days45 = 45 * 86400
    with start_pebble(tmp_path / "pebble", http_port=listener.port, validity_seconds=days45) as p:
        bot = make_bot(p, tmp_path, responder)
        assert bot.needs_renewal(dt.datetime.now(dt.UTC)).renew  # nothing yet
        issued = await asyncio.wait_for(bot.obtain_async(), 60)
    leaf = issued.certificate
    start = leaf.not_valid_before_utc
    lifetime = leaf.not_valid_after_utc - start
    assert abs(lifetime - dt.timedelta(days=45)) < dt.timedelta(hours=1)
    assert not bot.needs_renewal(start + dt.timedelta(days=29)).renew
    # At 31 days exactly 14 days (less pebble's inclusive last second) are left.
    late = bot.needs_renewal(start + dt.timedelta(days=30, hours=12))
    assert late.renew
    assert not late.alert
    assert bot.needs_renewal(start + dt.timedelta(days=32)).alert
