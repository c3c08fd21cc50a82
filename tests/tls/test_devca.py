"""The development CA: profile of its certificates, file modes, reissue rules."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from homeport.keys import InsecureKeyFileError
from homeport.tls.devca import (
    DevCA,
    DevCAError,
    create_independent_ca,
    ensure_dev_ca,
)

NAMES = ["relay.home.localhost", "*.home.localhost"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _leaf(path: Path) -> x509.Certificate:
    (cert,) = _certs(path)
    return cert


@pytest.fixture
def ca(tmp_path: Path) -> DevCA:
    return ensure_dev_ca(tmp_path / "data")


# -- the CA ---------------------------------------------------------------------


def test_dev_ca_profile_and_files(tmp_path: Path) -> None:
    ca = ensure_dev_ca(tmp_path / "data")
    tls = tmp_path / "data" / "tls"
    assert ca.cert_path == tls / "dev-ca.pem"
    assert ca.key_path == tls / "dev-ca.key"
    assert _mode(ca.key_path) == 0o600
    assert _mode(tls) == 0o700
    cert = ca.certificate
    assert cert.subject == cert.issuer
    (cn,) = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert cn.value == f"Homeport development CA ({socket.gethostname()})"[:64]
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime < dt.timedelta(days=3651)


def test_dev_ca_is_loaded_not_recreated(tmp_path: Path) -> None:
    first = ensure_dev_ca(tmp_path)
    second = ensure_dev_ca(tmp_path)
    assert second.certificate == first.certificate
    assert second.private_key.private_numbers() == first.private_key.private_numbers()


def test_dev_ca_refuses_world_readable_key(tmp_path: Path) -> None:
    ca = ensure_dev_ca(tmp_path)
    ca.key_path.chmod(0o644)
    with pytest.raises(InsecureKeyFileError):
        ensure_dev_ca(tmp_path)


def test_dev_ca_refuses_to_overwrite_unusable_key(tmp_path: Path) -> None:
    ca = ensure_dev_ca(tmp_path)
    ca.key_path.write_bytes(b"not a key")
    with pytest.raises(DevCAError):
        ensure_dev_ca(tmp_path)
    assert ca.key_path.read_bytes() == b"not a key"


def test_dev_ca_certificate_recreated_from_existing_key(tmp_path: Path) -> None:
    ca = ensure_dev_ca(tmp_path)
    ca.cert_path.unlink()
    again = ensure_dev_ca(tmp_path)
    assert again.private_key.private_numbers() == ca.private_key.private_numbers()
    assert again.cert_path.exists()


def test_dev_ca_certificate_for_another_key_is_replaced(tmp_path: Path) -> None:
    ca = ensure_dev_ca(tmp_path)
    other = create_independent_ca(tmp_path / "other")
    ca.cert_path.write_bytes(other.cert_path.read_bytes())
    again = ensure_dev_ca(tmp_path)
    assert again.certificate.public_key() == ca.private_key.public_key()


def test_independent_ca_looks_alike_but_is_unrelated(tmp_path: Path, ca: DevCA) -> None:
    rogue = create_independent_ca(tmp_path / "rogue")
    assert rogue.certificate.subject == ca.certificate.subject  # same look-alike name
    assert rogue.certificate.public_key() != ca.certificate.public_key()
    cert_path, _ = rogue.issue_server_certificate(NAMES, tmp_path / "rogue-leaf")
    with pytest.raises(InvalidSignature):
        _leaf(cert_path).verify_directly_issued_by(ca.certificate)


# -- server certificates ----------------------------------------------------------


def test_server_certificate_profile(tmp_path: Path, ca: DevCA) -> None:
    cert_path, key_path = ca.issue_server_certificate(NAMES, tmp_path / "srv")
    assert (cert_path.name, key_path.name) == ("server.pem", "server.key")
    assert _mode(key_path) == 0o600
    leaf = _leaf(cert_path)  # exactly one certificate: the root is never served
    leaf.verify_directly_issued_by(ca.certificate)
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    public = leaf.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == public
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == NAMES
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(days=89) < lifetime <= dt.timedelta(days=90, minutes=5)


def test_names_are_normalised_and_ips_sorted_out(tmp_path: Path, ca: DevCA) -> None:
    cert_path, _ = ca.issue_server_certificate(
        ["Relay.Home.Localhost.", "10.0.0.2"], tmp_path, ip_addresses=()
    )
    san = _leaf(cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["relay.home.localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.2")]


@pytest.mark.parametrize(
    "names", [[], ["bad_name.example"], ["a..b"], ["*.*.example"], ["x" * 64 + ".example"]]
)
def test_invalid_names_refused(tmp_path: Path, ca: DevCA, names: list[str]) -> None:
    with pytest.raises(ValueError, match="name"):
        ca.issue_server_certificate(names, tmp_path, ip_addresses=())


@pytest.mark.parametrize("days", [0, -1, 398])
def test_invalid_lifetime_refused(tmp_path: Path, ca: DevCA, days: int) -> None:
    with pytest.raises(ValueError, match="days"):
        ca.issue_server_certificate(NAMES, tmp_path, days=days)


def test_reused_when_still_good(tmp_path: Path, ca: DevCA) -> None:
    cert_path, key_path = ca.issue_server_certificate(NAMES, tmp_path)
    before = (cert_path.read_bytes(), key_path.read_bytes())
    ca.issue_server_certificate(NAMES, tmp_path)
    ca.issue_server_certificate(NAMES[:1], tmp_path)  # a subset of names is covered
    assert (cert_path.read_bytes(), key_path.read_bytes()) == before


def test_reissued_when_a_name_is_missing(tmp_path: Path, ca: DevCA) -> None:
    cert_path, key_path = ca.issue_server_certificate(NAMES[:1], tmp_path)
    old_serial, old_key = _leaf(cert_path).serial_number, key_path.read_bytes()
    ca.issue_server_certificate(NAMES, tmp_path)
    leaf = _leaf(cert_path)
    assert leaf.serial_number != old_serial
    assert key_path.read_bytes() != old_key
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == set(NAMES)


def test_reissued_when_an_ip_is_missing(tmp_path: Path, ca: DevCA) -> None:
    cert_path, _ = ca.issue_server_certificate(NAMES, tmp_path, ip_addresses=())
    old_serial = _leaf(cert_path).serial_number
    ca.issue_server_certificate(NAMES, tmp_path)
    assert _leaf(cert_path).serial_number != old_serial


def test_reissued_when_expiring_within_30_days(tmp_path: Path, ca: DevCA) -> None:
    cert_path, _ = ca.issue_server_certificate(NAMES, tmp_path, days=10)
    serial = _leaf(cert_path).serial_number
    # A short-lived cert asked for again with the same lifetime is still fine...
    ca.issue_server_certificate(NAMES, tmp_path, days=10)
    assert _leaf(cert_path).serial_number == serial
    # ...but with the normal 90-day profile it expires within 30 days: reissue.
    ca.issue_server_certificate(NAMES, tmp_path)
    leaf = _leaf(cert_path)
    assert leaf.serial_number != serial
    assert leaf.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=89)


def test_reissued_when_from_another_ca(tmp_path: Path, ca: DevCA) -> None:
    rogue = create_independent_ca(tmp_path / "rogue")
    cert_path, _ = rogue.issue_server_certificate(NAMES, tmp_path / "srv")
    ca.issue_server_certificate(NAMES, tmp_path / "srv")
    _leaf(cert_path).verify_directly_issued_by(ca.certificate)


def test_reissued_when_key_does_not_match(tmp_path: Path, ca: DevCA) -> None:
    cert_path, key_path = ca.issue_server_certificate(NAMES, tmp_path / "a")
    _, other_key = ca.issue_server_certificate(NAMES, tmp_path / "b")
    key_path.write_bytes(other_key.read_bytes())
    serial = _leaf(cert_path).serial_number
    ca.issue_server_certificate(NAMES, tmp_path / "a")
    assert _leaf(cert_path).serial_number != serial


def test_reissued_when_key_file_is_exposed(tmp_path: Path, ca: DevCA) -> None:
    _, key_path = ca.issue_server_certificate(NAMES, tmp_path)
    key_path.chmod(0o644)
    exposed = key_path.read_bytes()
    ca.issue_server_certificate(NAMES, tmp_path)
    assert key_path.read_bytes() != exposed  # a possibly copied key is never reused
    assert _mode(key_path) == 0o600


def test_reissued_when_files_are_missing_or_garbage(tmp_path: Path, ca: DevCA) -> None:
    cert_path, key_path = ca.issue_server_certificate(NAMES, tmp_path)
    cert_path.write_bytes(b"garbage")
    ca.issue_server_certificate(NAMES, tmp_path)
    _leaf(cert_path).verify_directly_issued_by(ca.certificate)
    key_path.unlink()
    ca.issue_server_certificate(NAMES, tmp_path)
    assert key_path.exists()
