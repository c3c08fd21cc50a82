"""Scan one TLS server with sslyze's Python API; print a JSON summary (run under the sslyze venv).

Usage: ``python sslyze_scan.py HOST PORT SERVER_NAME CA_FILE``.  Runs every
scan command Mozilla's checker needs plus HTTP headers and early data,
checks the result against Mozilla's *modern* and *intermediate* profiles
(sslyze's bundled 5.7 JSON) and prints what ``ssl_grade.py`` and the tests
need: offered protocols and suites, curves, the certificate chain, the
vulnerability probes, HSTS, and Mozilla's issues per profile.  This file is
not imported by the tests (it needs sslyze, which lives in its own venv).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from sslyze import (
    CertificateInfoExtraArgument,
    RobotScanResultEnum,
    ScanCommand,
    ScanCommandAttemptStatusEnum,
    ScanCommandsExtraArguments,
    Scanner,
    ServerNetworkConfiguration,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanStatusEnum,
)
from sslyze.mozilla_tls_profile.tls_config_checker import (
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)

VERSIONS = {
    "SSLv2": "ssl_2_0_cipher_suites",
    "SSLv3": "ssl_3_0_cipher_suites",
    "TLSv1.0": "tls_1_0_cipher_suites",
    "TLSv1.1": "tls_1_1_cipher_suites",
    "TLSv1.2": "tls_1_2_cipher_suites",
    "TLSv1.3": "tls_1_3_cipher_suites",
}


ROBOT_VULNERABLE = (
    RobotScanResultEnum.VULNERABLE_STRONG_ORACLE,
    RobotScanResultEnum.VULNERABLE_WEAK_ORACLE,
)


def name_matches(names: list[str], host: str) -> bool:
    """RFC 6125: exact, or one wildcard as the whole left-most label."""
    host = host.lower().rstrip(".")
    for name in (n.lower() for n in names):
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def suite(accepted: Any, version: str) -> dict[str, Any]:
    cipher = accepted.cipher_suite
    name = cipher.name
    tls13 = version == "TLSv1.3"
    return {
        "name": name,
        "key_size": cipher.key_size,
        "anonymous": cipher.is_anonymous,
        "export": "EXPORT" in name,
        "aead": tls13 or any(m in name for m in ("_GCM_", "CHACHA20_POLY1305", "_CCM")),
        "forward_secret": tls13 or name.startswith(("TLS_ECDHE_", "TLS_DHE_")),
    }


def certificate_summary(result: Any, host: str) -> dict[str, Any]:
    deployment = result.certificate_deployments[0]
    chain = deployment.received_certificate_chain
    leaf = chain[0]
    key = leaf.public_key()
    key_type = "EC" if isinstance(key, EllipticCurvePublicKey) else "RSA"
    if not isinstance(key, EllipticCurvePublicKey | RSAPublicKey):
        key_type = type(key).__name__
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    trusted = any(r.was_validation_successful for r in deployment.path_validation_results)
    now = dt.datetime.now(dt.UTC)
    return {
        "key_type": key_type,
        "key_size": key.key_size if hasattr(key, "key_size") else 0,
        "curve": key.curve.name if isinstance(key, EllipticCurvePublicKey) else None,
        "signature_hash": getattr(leaf.signature_hash_algorithm, "name", ""),
        "names": names,
        "name_matches": name_matches(names, host),
        "trusted": trusted,
        "expired": leaf.not_valid_after_utc < now or leaf.not_valid_before_utc > now,
        "lifespan_days": (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days,
        "chain_length": len(chain),
        "sends_root": bool(deployment.received_chain_contains_anchor_certificate),
        "valid_order": deployment.received_chain_has_valid_order,
        "chain_complete": trusted and deployment.verified_certificate_chain is not None,
    }


def main(host: str, port: int, server_name: str, ca: Path) -> dict[str, Any]:
    commands = set(SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER) | {
        ScanCommand.HTTP_HEADERS,
        ScanCommand.TLS_1_3_EARLY_DATA,
        ScanCommand.SESSION_RESUMPTION,
    }
    request = ServerScanRequest(
        server_location=ServerNetworkLocation(hostname=server_name, port=port, ip_address=host),
        network_configuration=ServerNetworkConfiguration(
            tls_server_name_indication=server_name, network_timeout=20, network_max_retries=3
        ),
        scan_commands=commands,
        scan_commands_extra_arguments=ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=ca)
        ),
    )
    scanner = Scanner(per_server_concurrent_connections_limit=2, concurrent_server_scans_limit=1)
    scanner.queue_scans([request])
    (scanned,) = list(scanner.get_results())
    if scanned.scan_status is not ServerScanStatusEnum.COMPLETED:
        raise SystemExit(f"scan not completed: {scanned.connectivity_error_trace}")
    results = scanned.scan_result
    assert results is not None
    errors = {
        c.value: str(getattr(results, c.value).error_reason)
        for c in commands
        if getattr(results, c.value).status is not ScanCommandAttemptStatusEnum.COMPLETED
    }
    if errors:
        raise SystemExit(f"scan commands failed: {errors}")

    protocols = {
        version: [suite(s, version) for s in getattr(results, attr).result.accepted_cipher_suites]
        for version, attr in VERSIONS.items()
    }
    hsts_header = results.http_headers.result.strict_transport_security_header
    renegotiation = results.session_renegotiation.result
    mozilla: dict[str, dict[str, str]] = {}
    for profile in (TlsConfigurationEnum.MOZILLA_MODERN, TlsConfigurationEnum.MOZILLA_INTERMEDIATE):
        try:
            check_server_against_tls_configuration(scanned, MozillaTlsConfiguration.get(profile))
            mozilla[profile.value] = {}
        except ServerNotCompliantWithTlsConfiguration as exc:
            mozilla[profile.value] = exc.issues
    curves = results.elliptic_curves.result.supported_curves or []
    return {
        "protocols": protocols,
        "curves": sorted(c.name for c in curves),
        "leaf": certificate_summary(results.certificate_info.result, server_name),
        "compression": results.tls_compression.result.supports_compression,
        "heartbleed": results.heartbleed.result.is_vulnerable_to_heartbleed,
        "ccs_injection": results.openssl_ccs_injection.result.is_vulnerable_to_ccs_injection,
        "robot_vulnerable": results.robot.result.robot_result in ROBOT_VULNERABLE,
        "robot": results.robot.result.robot_result.value,
        "fallback_scsv": results.tls_fallback_scsv.result.supports_fallback_scsv,
        "secure_renegotiation": renegotiation.supports_secure_renegotiation,
        "client_renegotiation": renegotiation.is_vulnerable_to_client_renegotiation_dos,
        "insecure_renegotiation": bool(protocols["TLSv1.2"] or protocols["TLSv1.1"])
        and not renegotiation.supports_secure_renegotiation,
        "early_data": results.tls_1_3_early_data.result.supports_early_data,
        "tickets": str(results.session_resumption.result.tls_ticket_resumption_result.value),
        "hsts": None
        if hsts_header is None
        else {
            "max_age": hsts_header.max_age or 0,
            "include_subdomains": hsts_header.include_subdomains,
            "preload": hsts_header.preload,
        },
        "mozilla": mozilla,
    }


if __name__ == "__main__":
    host, port, server_name, ca = sys.argv[1:5]
    print(json.dumps(main(host, int(port), server_name, Path(ca)), indent=1))
