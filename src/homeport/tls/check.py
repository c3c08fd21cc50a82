"""Checks on a certificate before the relay serves it (R-TLS-06/07).

An operator-supplied ``--tls-cert`` that is expired, not yet valid, for the
wrong names, paired with the wrong key, or that carries the root would make
every browser refuse the relay (or grade it down) while the relay looks
healthy. The relay refuses to start with it instead, and says why. The same
check guards every renewed ACME certificate before it replaces the live one.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

__all__ = ["CertificateProblem", "check_certificate_files", "name_covered"]

#: R-TLS-06: RSA keys below this are refused (ECDSA P-256/P-384 preferred).
MIN_RSA_BITS = 2048


class CertificateProblem(ValueError):
    """The certificate files cannot be served; the message says what to fix."""


def name_covered(name: str, sans: Sequence[str]) -> bool:
    """Whether DNS name ``name`` matches a SAN, a wildcard covering one label (RFC 6125)."""
    name = name.lower().rstrip(".")
    for san in (s.lower().rstrip(".") for s in sans):
        if san == name:
            return True
        if san.startswith("*.") and "." in name and name.split(".", 1)[1] == san[2:]:
            return True
    return False


def check_certificate_files(
    cert_path: Path, key_path: Path, names: Sequence[str], *, now: dt.datetime | None = None
) -> x509.Certificate:
    """Return the leaf of ``cert_path`` or raise :class:`CertificateProblem`.

    ``names`` are the host names it must be valid for (a wildcard entry such
    as ``*.home.example`` must be covered by the same wildcard).
    """
    moment = now or dt.datetime.now(dt.UTC)
    where = f"TLS certificate {cert_path}"
    try:
        certs = x509.load_pem_x509_certificates(cert_path.read_bytes())
    except FileNotFoundError as exc:
        raise CertificateProblem(f"{where}: no such file") from exc
    except ValueError as exc:
        raise CertificateProblem(f"{where}: no PEM certificate in it") from exc
    leaf, chain = certs[0], certs[1:]
    if moment < leaf.not_valid_before_utc:
        raise CertificateProblem(
            f"{where}: not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    if moment >= leaf.not_valid_after_utc:
        raise CertificateProblem(
            f"{where}: expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        sans = []
    missing = [n for n in names if not name_covered(n, sans)]
    if missing:
        raise CertificateProblem(
            f"{where}: not valid for {', '.join(missing)} (it names {', '.join(sans) or 'nothing'})"
        )
    if any(c.subject == c.issuer for c in chain):
        raise CertificateProblem(
            f"{where}: contains a self-signed root; serve leaf + intermediates only"
        )
    # Each certificate must be issued by the next: a wrong or misordered
    # intermediate is an incomplete chain to every client (R-TLS-07).
    for position, (child, parent) in enumerate(itertools.pairwise(certs), start=1):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise CertificateProblem(
                f"{where}: certificate {position + 1} did not issue certificate {position}; "
                "order the file leaf first, then each issuer"
            ) from exc
    public = leaf.public_key()
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        raise CertificateProblem(f"{where}: RSA key of {public.key_size} bits is too weak")
    if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise CertificateProblem(f"{where}: key type {type(public).__name__} not supported")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise CertificateProblem(f"TLS key {key_path}: no such file") from exc
    except (ValueError, TypeError) as exc:
        raise CertificateProblem(f"TLS key {key_path}: not an unencrypted PEM key") from exc
    if key.public_key() != public:
        raise CertificateProblem(f"TLS key {key_path} does not belong to {cert_path}")
    return leaf
