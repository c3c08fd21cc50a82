"""DNS-01 by RFC 2136 + TSIG against a real BIND on loopback, and pebble (R-ACME-01/04/07)."""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.name
import dns.query
import dns.rdatatype
import pytest
from acme import challenges
from bind import Named, Zone, named_available, start_named
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from josepy import b64encode
from josepy.jwk import JWKEC
from pebble import pebble_available, start_pebble

from homeport.tls.acme_bot import AcmeBot, RetryPolicy
from homeport.tls.dns01 import DnsUpdateError, Rfc2136Solver, TsigKey, load_tsig_key

pytestmark = pytest.mark.skipif(not named_available(), reason="scripts/system-deps: bind9")

ZONES = [
    Zone(
        "relay.test",
        records=(
            "account IN A 127.0.0.1\n"
            # The tenant domain's challenge name is delegated to the validation zone.
            "_acme-challenge.home IN CNAME home.validation.test.\n"
        ),
        grants=("name _acme-challenge.account.relay.test. TXT",),
    ),
    Zone("validation.test", grants=("subdomain validation.test. TXT",)),
]


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Named]:
    with start_named(tmp_path_factory.mktemp("named"), ZONES) as server:
        yield server


def solver(named: Named, **kw: object) -> Rfc2136Solver:
    return Rfc2136Solver(
        "127.0.0.1",
        named.port,
        load_tsig_key(named.key_file),
        poll_interval=0.2,
        **kw,  # type: ignore[arg-type]
    )


def txt(named: Named, owner: str) -> set[str]:
    response = dns.query.tcp(
        dns.message.make_query(owner, dns.rdatatype.TXT), "127.0.0.1", port=named.port, timeout=5
    )
    name = dns.name.from_text(owner)
    return {
        b"".join(r.strings).decode()
        for rrset in response.answer
        if rrset.name == name and rrset.rdtype == dns.rdatatype.TXT
        for r in rrset
    }


def dns01() -> challenges.DNS01:
    return challenges.DNS01(token=secrets.token_bytes(32))


ACCOUNT = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))


def test_direct_record_added_seen_and_removed(named: Named) -> None:
    s = solver(named)
    chall = dns01()
    s.prepare("account.relay.test", chall, ACCOUNT)
    s.wait_ready()
    assert txt(named, "_acme-challenge.account.relay.test") == {chall.validation(ACCOUNT)}
    s.cleanup()
    assert txt(named, "_acme-challenge.account.relay.test") == set()
    assert not s.records


def test_cname_followed_and_values_removed_one_by_one(named: Named) -> None:
    """Apex and wildcard share one owner: both values coexist, each removed by value."""
    s = solver(named, zone="validation.test")
    apex, wild = dns01(), dns01()
    s.prepare("home.relay.test", apex, ACCOUNT)
    s.prepare("*.home.relay.test", wild, ACCOUNT)
    s.wait_ready()
    values = {apex.validation(ACCOUNT), wild.validation(ACCOUNT)}
    assert txt(named, "home.validation.test") == values
    other = solver(named, zone="validation.test")
    mine = dns01()
    other.prepare("home.relay.test", mine, ACCOUNT)
    s.cleanup()
    # Someone else's value (another relay's concurrent order) survives our cleanup.
    assert txt(named, "home.validation.test") == {mine.validation(ACCOUNT)}
    other.cleanup()
    assert txt(named, "home.validation.test") == set()


def test_server_given_by_name(named: Named) -> None:
    first = socket.getaddrinfo("localhost", named.port, type=socket.SOCK_STREAM)[0][4][0]
    if first != "127.0.0.1":
        pytest.skip("localhost resolves to ::1 first here; named listens on 127.0.0.1 only")
    s = Rfc2136Solver("localhost", named.port, load_tsig_key(named.key_file), poll_interval=0.2)
    s.prepare("account.relay.test", dns01(), ACCOUNT)
    s.wait_ready()
    s.cleanup()
    unknown = Rfc2136Solver("no-such-host.invalid", named.port, load_tsig_key(named.key_file))
    with pytest.raises(DnsUpdateError, match="cannot resolve"):
        unknown.prepare("account.relay.test", dns01(), ACCOUNT)


def test_key_cannot_touch_other_names(named: Named) -> None:
    s = solver(named)
    with pytest.raises(DnsUpdateError, match="REFUSED"):
        s.prepare("other.relay.test", dns01(), ACCOUNT)
    assert not s.records


def test_target_outside_configured_zone_refused_before_sending(named: Named) -> None:
    s = solver(named, zone="validation.test")
    with pytest.raises(DnsUpdateError, match=r"outside the DNS zone validation\.test"):
        s.prepare("account.relay.test", dns01(), ACCOUNT)
    assert txt(named, "_acme-challenge.account.relay.test") == set()


def test_wrong_tsig_secret_refused(named: Named) -> None:
    forged = TsigKey(named.key_name, "hmac-sha256", base64.b64encode(b"k" * 32).decode())
    s = Rfc2136Solver("127.0.0.1", named.port, forged)
    with pytest.raises(DnsUpdateError, match=r"TSIG|NOTAUTH"):
        s.prepare("account.relay.test", dns01(), ACCOUNT)


def test_record_never_served_times_out(named: Named) -> None:
    s = solver(named, propagation_timeout=0.5)
    s.records.append(
        (
            dns.name.from_text("relay.test"),
            dns.name.from_text("_acme-challenge.account.relay.test"),
            "never-added",
        )
    )
    with pytest.raises(DnsUpdateError, match="not served"):
        s.wait_ready()


def test_tsig_key_files(tmp_path: Path) -> None:
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    bind = tmp_path / "bind.key"
    bind.write_text(f'key "relay-acme." {{\n\talgorithm hmac-sha512;\n\tsecret "{secret}";\n}};\n')
    bind.chmod(0o600)
    assert load_tsig_key(bind) == TsigKey("relay-acme", "hmac-sha512", secret)
    assert secret not in repr(load_tsig_key(bind))
    knot = tmp_path / "knot.key"
    knot.write_text(f"hmac-sha256:relay-acme:{secret}\n")
    knot.chmod(0o600)
    assert load_tsig_key(knot) == TsigKey("relay-acme", "hmac-sha256", secret)
    knot.chmod(0o644)
    with pytest.raises(DnsUpdateError, match="readable by other users"):
        load_tsig_key(knot)
    md5 = tmp_path / "md5.key"
    md5.write_text(f"hmac-md5:relay-acme:{secret}\n")
    md5.chmod(0o600)
    with pytest.raises(DnsUpdateError, match="hmac-md5"):
        load_tsig_key(md5)
    short = tmp_path / "short.key"
    short.write_text(f"hmac-sha256:relay-acme:{b64encode(b'short').decode()}=\n")
    short.chmod(0o600)
    with pytest.raises(DnsUpdateError):
        load_tsig_key(short)


@pytest.mark.skipif(not pebble_available(), reason="scripts/system-deps: pebble")
async def test_wildcard_issued_by_dns01_through_cname(tmp_path: Path, named: Named) -> None:
    """Pebble resolves through BIND: ``*.home.relay.test`` and its apex, DNS-01 via CNAME."""
    names = ["*.home.relay.test", "home.relay.test"]
    s = solver(named, zone="validation.test")
    with start_pebble(tmp_path / "pebble", http_port=1, dns_port=named.port) as pebble:
        bot = AcmeBot(
            pebble.directory_url,
            tmp_path / "acme" / "account.key",
            tmp_path / "certs",
            names,
            s,
            pebble.ca_bundle,
            retry=RetryPolicy(order_attempts=2),
        )
        issued = await asyncio.wait_for(bot.obtain_async(), 120)
    san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sorted(san.value.get_values_for_type(x509.DNSName)) == sorted(names)
    assert issued.chain
    assert txt(named, "home.validation.test") == set()  # removed after validation
    assert not s.records
