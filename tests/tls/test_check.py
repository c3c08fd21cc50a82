"""Operator-supplied certificates are checked before they are served (R-TLS-06/07)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dns.rdata
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from dns.rdtypes.ANY.CAA import CAA
from relay_process import run_homeport

from homeport.relay.app import Relay
from homeport.relay.config import RelayConfig
from homeport.tls.caa import caa_records
from homeport.tls.check import CertificateProblem, check_certificate_files, name_covered
from homeport.tls.devca import create_independent_ca

ACCOUNT = "account.example.net"
NAMES = [ACCOUNT, "*.home.example.net"]
NOW = dt.datetime.now(dt.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_pair(
    directory: Path,
    names: list[str],
    *,
    start: dt.datetime = NOW - dt.timedelta(days=1),
    days: int = 90,
    with_root: bool = False,
) -> tuple[Path, Path]:
    """A leaf signed by a fresh CA, written as chain file + key file."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "test root")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=10))
        .not_valid_after(NOW + dt.timedelta(days=1000))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    certs = [leaf, ca] if with_root else [leaf]
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    key_path.write_bytes(_pem_key(key))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_good_certificate_passes(tmp_path: Path) -> None:
    cert, key = write_pair(tmp_path, NAMES)
    leaf = check_certificate_files(cert, key, [ACCOUNT, "*.home.example.net"])
    assert leaf.not_valid_after_utc > NOW


@pytest.mark.parametrize(
    ("kwargs", "names", "message"),
    [
        ({"start": NOW - dt.timedelta(days=100)}, NAMES, "expired on"),
        ({"start": NOW + dt.timedelta(days=2)}, NAMES, "not valid before"),
        ({}, ["other.example.net", "*.home.example.net"], "not valid for account.example.net"),
        ({}, [ACCOUNT], r"not valid for \*\.home\.example\.net"),
        ({"with_root": True}, NAMES, "self-signed root"),
    ],
)
def test_bad_certificate_refused_with_reason(
    tmp_path: Path, kwargs: dict[str, object], names: list[str], message: str
) -> None:
    cert, key = write_pair(tmp_path, names, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(CertificateProblem, match=message):
        check_certificate_files(cert, key, NAMES)


def test_wrong_or_misordered_intermediate_refused(tmp_path: Path) -> None:
    """A leaf followed by a certificate that did not issue it: an incomplete chain."""
    ca = create_independent_ca(tmp_path / "ca")
    cert, key = ca.issue_server_certificate(NAMES, tmp_path / "tls")
    unrelated = write_pair(tmp_path / "other", NAMES)[0].read_bytes()
    fake = tmp_path / "fake.pem"
    fake.write_bytes(cert.read_bytes() + unrelated)
    with pytest.raises(CertificateProblem, match="did not issue"):
        check_certificate_files(fake, key, NAMES)
    check_certificate_files(cert, key, NAMES)  # the leaf alone is fine


def test_key_mismatch_and_missing_files(tmp_path: Path) -> None:
    cert, _ = write_pair(tmp_path / "a", NAMES)
    _, other_key = write_pair(tmp_path / "b", NAMES)
    with pytest.raises(CertificateProblem, match="does not belong"):
        check_certificate_files(cert, other_key, NAMES)
    with pytest.raises(CertificateProblem, match="no such file"):
        check_certificate_files(tmp_path / "nope.pem", other_key, NAMES)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(CertificateProblem, match="no PEM certificate"):
        check_certificate_files(garbage, other_key, NAMES)


def test_wildcard_matching() -> None:
    assert name_covered("a.home.example.net", ["*.home.example.net"])
    assert name_covered("*.home.example.net", ["*.home.example.net"])
    assert not name_covered("a.b.home.example.net", ["*.home.example.net"])
    assert not name_covered("home.example.net", ["*.home.example.net"])
    assert name_covered("Account.Example.Net.", [ACCOUNT])


def test_relay_refuses_to_start_on_an_expired_certificate(tmp_path: Path) -> None:
    cert, key = write_pair(tmp_path / "tls", NAMES, start=NOW - dt.timedelta(days=91))
    config = RelayConfig(
        data_dir=tmp_path / "relay",
        account_host=ACCOUNT,
        tenant_domain="home.example.net",
        tls_cert=cert,
        tls_key=key,
    )
    with pytest.raises(CertificateProblem, match="expired"):
        Relay(config)


async def test_cli_says_why(tmp_path: Path) -> None:
    ca = create_independent_ca(tmp_path / "ca")
    cert, key = ca.issue_server_certificate(["wrong.example.net"], tmp_path / "tls")
    with pytest.raises(AssertionError, match=r"not valid for homeport\.localhost"):
        await run_homeport(
            "relay",
            "--data-dir",
            str(tmp_path / "relay"),
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
            timeout=60,
        )


def test_caa_records_parse_and_bind_to_the_account() -> None:
    """R-ACME-05: the lines are valid zone-file CAA records with RFC 8657 parameters."""
    url = "https://acme-v02.api.letsencrypt.org/acme/acct/123456"
    lines = caa_records("relay.example", "example-homes.net", url, iodef="mailto:sec@relay.example")
    records: dict[str, set[tuple[str, str]]] = {}
    for line in lines:
        owner, klass, rdtype, rest = line.split(" ", 3)
        assert (klass, rdtype) == ("IN", "CAA")
        rdata = dns.rdata.from_text("IN", "CAA", rest)
        assert isinstance(rdata, CAA)
        records.setdefault(owner, set()).add((rdata.tag.decode(), rdata.value.decode()))
    assert records["relay.example."] == {
        ("issue", f"letsencrypt.org; accounturi={url}; validationmethods=http-01,tls-alpn-01"),
        ("issuewild", ";"),
        ("iodef", "mailto:sec@relay.example"),
    }
    assert records["example-homes.net."] == {
        ("issue", ";"),
        ("issuewild", f"letsencrypt.org; accounturi={url}; validationmethods=dns-01"),
        ("iodef", "mailto:sec@relay.example"),
    }
    with pytest.raises(ValueError, match="CAA"):
        caa_records("relay.example", "homes.example", 'https://x/"; issue "evil.example')
    with pytest.raises(ValueError, match="iodef"):
        caa_records("relay.example", "homes.example", url, iodef="javascript:x")
