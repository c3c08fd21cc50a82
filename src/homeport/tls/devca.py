"""A local development certificate authority for ``homeport dev`` and tests.

Production relays get publicly trusted certificates from their ACME bot;
this CA exists so that development and tests run the *same* verifying TLS
code paths (hostname check, chain check, channel binding) instead of
switching verification off. Certificates follow the production profile
(R-TLS-06/07): ECDSA P-256, SHA-256, serverAuth, names in SAN only, and the
served chain never includes the root.

Files, under ``<data_dir>/tls/``: ``dev-ca.pem`` (public, 0644) and
``dev-ca.key`` (0600). Trust the CA in a client with
``client_context(extra_ca=ca.cert_path)``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from homeport.keys import (
    InsecureKeyFileError,
    KeyFileError,
    read_secret_file,
    write_secret_file,
)

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "SERVER_CERT_FILE",
    "SERVER_KEY_FILE",
    "DevCA",
    "DevCAError",
    "create_independent_ca",
    "ensure_dev_ca",
]

CA_CERT_FILE = "dev-ca.pem"
CA_KEY_FILE = "dev-ca.key"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"

CA_VALIDITY = dt.timedelta(days=3650)
RENEW_BEFORE = dt.timedelta(days=30)
# CA/Browser Forum ceiling; Mozilla "modern" wants <= 90 (the default).
MAX_LEAF_DAYS = 397
# Tolerates small clock differences between the issuing and the verifying host.
_BACKDATE = dt.timedelta(minutes=5)
_MAX_CN = 64  # RFC 5280 ub-common-name

_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class DevCAError(Exception):
    """The development CA's files exist but cannot be used."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _dev_ca_name() -> str:
    prefix = "Homeport development CA ("
    host = socket.gethostname() or "localhost"
    return prefix + host[: _MAX_CN - len(prefix) - 1] + ")"


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_public_file(path: Path, data: bytes) -> None:
    """Atomically replace a public (certificate) file, mode 0644."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    data = read_secret_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyFileError(f"{path} is not an ECDSA P-256 key")
    return key


def _load_first_certificate(path: Path) -> x509.Certificate | None:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return None
    return certs[0]


def _make_ca_certificate(key: ec.EllipticCurvePrivateKey, common_name: str) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Homeport development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:_MAX_CN]),
        ]
    )
    now = _now()
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        # pathlen 0: even if this dev CA is trusted somewhere, it cannot mint sub-CAs.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _usable_ca_certificate(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return False
    if _spki(public) != _spki(key.public_key()):
        return False
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca and cert.not_valid_after_utc - _now() > RENEW_BEFORE


def _normalise_dns_name(name: str) -> str:
    """Lower-case LDH name, optionally with one leading ``*.`` wildcard label."""
    lowered = name.strip().lower().rstrip(".")
    body = lowered[2:] if lowered.startswith("*.") else lowered
    if not body or len(lowered) > 253 or not all(_LABEL_RE.fullmatch(p) for p in body.split(".")):
        raise ValueError(f"not a valid DNS name for a certificate: {name!r}")
    return lowered


def _split_names(
    names: Sequence[str], ip_addresses: Sequence[str]
) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    dns: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for value in [*names, *ip_addresses]:
        try:
            ip = ipaddress.ip_address(value.strip())
        except ValueError:
            entry = _normalise_dns_name(value)
            if entry not in dns:
                dns.append(entry)
        else:
            if ip not in ips:
                ips.append(ip)
    if not dns and not ips:
        raise ValueError("a server certificate needs at least one name")
    return dns, ips


@dataclass(frozen=True)
class DevCA:
    """A loaded CA: its certificate, its key and where they live."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path

    def issue_server_certificate(
        self,
        names: Sequence[str],
        dest_dir: Path,
        *,
        ip_addresses: Sequence[str] = ("127.0.0.1", "::1"),
        days: int = 90,
    ) -> tuple[Path, Path]:
        """Write (or reuse) ``dest_dir/server.pem`` and ``dest_dir/server.key``.

        ``names`` are DNS names, wildcards allowed (``*.home.localhost``);
        IP literals among them are put in the SAN as IP addresses. The chain
        file holds the leaf only: this CA is the root, and a root is never
        sent (R-TLS-07) - clients must already trust it.

        The existing pair is reused unless it lacks a requested name or
        address, is not from this CA, does not match its key, or expires
        within 30 days (or within a third of ``days``, for short test
        lifetimes). Returns ``(cert_path, key_path)``.
        """
        if not 1 <= days <= MAX_LEAF_DAYS:
            raise ValueError(f"days must be between 1 and {MAX_LEAF_DAYS}")
        dns, ips = _split_names(names, ip_addresses)
        validity = dt.timedelta(days=days)
        renew_before = min(RENEW_BEFORE, validity / 3)
        cert_path = dest_dir / SERVER_CERT_FILE
        key_path = dest_dir / SERVER_KEY_FILE
        if self._reusable(cert_path, key_path, dns, ips, renew_before):
            return cert_path, key_path

        key = _new_key()
        cert = self._sign_leaf(key, dns, ips, validity)
        # Key first: a crash in between leaves a mismatched pair, which the
        # next call detects and reissues.
        write_secret_file(key_path, _key_pem(key), replace=True)
        _write_public_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path

    def _reusable(
        self,
        cert_path: Path,
        key_path: Path,
        dns: list[str],
        ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
        renew_before: dt.timedelta,
    ) -> bool:
        cert = _load_first_certificate(cert_path)
        if cert is None:
            return False
        try:
            key = _load_ec_key(key_path)  # an insecure key file is replaced, not reused
            cert.verify_directly_issued_by(self.certificate)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (OSError, KeyFileError, ValueError, TypeError, InvalidSignature):
            return False
        except x509.ExtensionNotFound:
            return False
        public = cert.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or _spki(public) != _spki(
            key.public_key()
        ):
            return False
        have_dns = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
        have_ips = set(san.get_values_for_type(x509.IPAddress))
        now = _now()
        return (
            set(dns) <= have_dns
            and set(ips) <= have_ips
            and cert.not_valid_before_utc <= now
            and cert.not_valid_after_utc - now > renew_before
        )

    def _sign_leaf(
        self,
        key: ec.EllipticCurvePrivateKey,
        dns: list[str],
        ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
        validity: dt.timedelta,
    ) -> x509.Certificate:
        # The CN is decorative (clients match SAN only); RFC 5280 wants the
        # SAN critical when the subject is empty.
        cn = dns[0] if dns and len(dns[0]) <= _MAX_CN else None
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
        general_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
        general_names += [x509.IPAddress(ip) for ip in ips]
        ca_public = self.private_key.public_key()
        now = _now()
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(general_names), critical=cn is None)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
            )
            .sign(self.private_key, hashes.SHA256())
        )


def _open_or_create_ca(cert_path: Path, key_path: Path, common_name: str) -> DevCA:
    try:
        key = _load_ec_key(key_path)
    except FileNotFoundError:
        key = _new_key()
        try:
            write_secret_file(key_path, _key_pem(key))
        except FileExistsError:  # a concurrent creator won: use its key
            key = _load_ec_key(key_path)
    except InsecureKeyFileError:
        raise
    except KeyFileError as exc:
        # Refuse rather than overwrite: the file may be someone's real key.
        raise DevCAError(f"cannot use development CA key: {exc}") from exc

    cert = _load_first_certificate(cert_path)
    if cert is None or not _usable_ca_certificate(cert, key):
        # Missing, for another key, or near expiry: re-sign with the same key.
        cert = _make_ca_certificate(key, common_name)
        _write_public_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return DevCA(certificate=cert, private_key=key, cert_path=cert_path, key_path=key_path)


def ensure_dev_ca(data_dir: Path) -> DevCA:
    """Load the development CA under ``data_dir/tls``, creating it if needed.

    ECDSA P-256 root valid 10 years, named "Homeport development CA
    (<hostname>)"; key file 0600 in a 0700 directory. A key file other
    users can read is refused (:class:`~homeport.keys.InsecureKeyFileError`).
    """
    tls_dir = data_dir / "tls"
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return _open_or_create_ca(tls_dir / CA_CERT_FILE, tls_dir / CA_KEY_FILE, _dev_ca_name())


def create_independent_ca(dest_dir: Path, *, common_name: str | None = None) -> DevCA:
    """Create a brand-new CA in ``dest_dir`` (``ca.pem`` / ``ca.key``).

    For tests: a second, unrelated CA whose certificates look just as valid
    (by default even the same look-alike name as the dev CA), standing in for
    a mis-issuing or attacker-controlled CA in man-in-the-middle tests.
    Always fresh: existing files in ``dest_dir`` are replaced.
    """
    dest_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = dest_dir / "ca.pem", dest_dir / "ca.key"
    key = _new_key()
    cert = _make_ca_certificate(key, common_name or _dev_ca_name())
    write_secret_file(key_path, _key_pem(key), replace=True)
    _write_public_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return DevCA(certificate=cert, private_key=key, cert_path=cert_path, key_path=key_path)
