"""The relay as a scanner sees it: sslyze against a relay process, Mozilla's profiles, an A+ grade.

The relay runs as a separate process (``relay_process.RelayProcess``), the way
it is deployed, once per ``--tls-profile``, with ``OPENSSL_CONF`` restricting
the key-exchange groups as docs/deploy.md's unit file does (R-TLS-05).
``sslyze`` (its Python API, in its own venv: ``sslyze_tool.py``) probes
protocols, suites, curves, the certificate chain, compression,
renegotiation, Heartbleed, CCS injection, ROBOT, TLS_FALLBACK_SCSV, early
data, tickets and HSTS; Mozilla's checker (5.7) must find no issue for the
profile; ``ssl_grade.grade`` turns the result into an SSL Labs-style grade
that must be A+ (R-TLS-11).  The grading rules themselves are unit-tested
below on hand-made summaries, so a grade of A+ cannot come from rules that
never fail.
"""

from __future__ import annotations

import asyncio
import copy
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from edge_checks import assert_relay_baseline, assert_relay_page
from rawhttp import exchange
from relay_process import RelayProcess
from ssl_grade import grade
from sslyze_tool import scan

ACCOUNT = "homeport.localhost"
#: R-TLS-05: exactly X25519, P-256, P-384, through the OpenSSL configuration the relay's
#: systemd unit ships with (Python 3.11 can set only one group itself).
OPENSSL_GROUPS = Path(__file__).resolve().parents[2] / "packaging" / "openssl-groups.cnf"


@dataclass
class ProfiledRelay(RelayProcess):
    """A relay process with extra environment (its TLS profile, OPENSSL_CONF)."""

    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(self.extra_env)
        return env


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["modern", "intermediate"])
async def scanned(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[str, ProfiledRelay, dict[str, Any]]]:
    profile = str(request.param)
    tmp_path = tmp_path_factory.mktemp(f"scan-{profile}")
    relay = ProfiledRelay(
        tmp_path / "relay",
        extra_env={"OPENSSL_CONF": str(OPENSSL_GROUPS), "HOMEPORT_TLS_PROFILE": profile},
    )
    try:
        await relay.start()
        report = await scan("127.0.0.1", relay.port, ACCOUNT, relay.ca_path)
        yield profile, relay, report
    finally:
        await relay.close()


@pytest.mark.timeout(600)
@pytest.mark.asyncio(loop_scope="module")
async def test_scanner_finds_an_a_plus_configuration(
    scanned: tuple[str, ProfiledRelay, dict[str, Any]],
) -> None:
    profile, _relay, report = scanned
    offered = {version for version, suites in report["protocols"].items() if suites}
    assert offered == ({"TLSv1.3"} if profile == "modern" else {"TLSv1.2", "TLSv1.3"})
    suites = [s for group in report["protocols"].values() for s in group]
    assert all(s["aead"] and s["forward_secret"] for s in suites), suites  # R-TLS-04
    assert all(s["key_size"] >= 128 for s in suites)
    assert report["curves"] == ["X25519", "secp256r1", "secp384r1"]  # R-TLS-05
    leaf = report["leaf"]
    assert (leaf["key_type"], leaf["curve"], leaf["signature_hash"]) == (
        "EC",
        "secp256r1",
        "sha256",
    )  # R-TLS-06
    assert leaf["trusted"]
    assert leaf["name_matches"]
    assert not leaf["expired"]
    assert not leaf["sends_root"]  # R-TLS-07
    assert leaf["chain_complete"]
    assert leaf["lifespan_days"] <= 90
    assert {ACCOUNT, "*.home.localhost"} <= set(leaf["names"])
    # R-TLS-08/09/10
    assert not report["compression"]
    assert not report["heartbleed"]
    assert not report["ccs_injection"]
    assert not report["robot_vulnerable"]
    assert not report["client_renegotiation"]
    assert report["fallback_scsv"]
    assert not report["early_data"]
    assert report["tickets"] in ("SERVER_IS_TLS_1_3_ONLY", "NOT_SUPPORTED")
    # R-HSTS-01 as the scanner reads it
    assert report["hsts"] == {"max_age": 63072000, "include_subdomains": True, "preload": True}
    # Mozilla's own checker: compliant with the profile the relay runs.
    assert report["mozilla"][profile] == {}, report["mozilla"]
    result = grade(report)
    assert result.caps == []
    assert result.warnings == []
    assert result.letter == "A+", result
    assert result.score >= 90


@pytest.mark.timeout(300)
@pytest.mark.asyncio(loop_scope="module")
async def test_relay_process_answers_carry_the_headers(
    scanned: tuple[str, ProfiledRelay, dict[str, Any]],
) -> None:
    _profile, relay, _report = scanned
    port = relay.port
    tenant = "a" * 26 + ".home.localhost"
    csp_marker = "frame-ancestors 'none'"
    cases = [
        (ACCOUNT, f"GET /signin HTTP/1.1\r\nHost: {ACCOUNT}:{port}\r\n\r\n", 200, True),
        (ACCOUNT, f"GET /nope HTTP/1.1\r\nHost: {ACCOUNT}:{port}\r\n\r\n", 404, True),
        (ACCOUNT, f"GET / HTTP/1.1\r\nHost: evil.example:{port}\r\n\r\n", 421, False),
        (ACCOUNT, "G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400, False),
        (tenant, f"GET /api/ HTTP/1.1\r\nHost: {tenant}:{port}\r\n\r\n", 401, False),
    ]
    for sni, request, status, page in cases:
        answer = await exchange(port, sni, relay.ca_path, request.encode())
        assert answer.status == status, request
        if page:
            csp = dict(answer.headers)["content-security-policy"]
            assert csp_marker in csp
            assert_relay_page(answer.headers, csp, what=request)
        else:
            assert_relay_baseline(answer.headers, what=request)


@pytest.mark.timeout(300)
@pytest.mark.asyncio(loop_scope="module")
async def test_certificate_names_are_checked(
    scanned: tuple[str, ProfiledRelay, dict[str, Any]],
) -> None:
    """Every served name verifies with the stdlib client; any other name is refused."""
    _profile, relay, _report = scanned

    context = ssl.create_default_context(cafile=str(relay.ca_path))
    for name in (ACCOUNT, "b" * 26 + ".home.localhost"):
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", relay.port, ssl=context, server_hostname=name
        )
        writer.close()
    for name in ("evil.example", "a.b.home.localhost", "home.localhost"):
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(
                "127.0.0.1", relay.port, ssl=context, server_hostname=name
            )


# -------------------------------------------------------- the grading rules

GOOD: dict[str, Any] = {
    "protocols": {
        "SSLv2": [],
        "SSLv3": [],
        "TLSv1.0": [],
        "TLSv1.1": [],
        "TLSv1.2": [],
        "TLSv1.3": [
            {"name": "TLS_AES_128_GCM_SHA256", "key_size": 128, "anonymous": False,
             "export": False, "aead": True, "forward_secret": True},
            {"name": "TLS_AES_256_GCM_SHA384", "key_size": 256, "anonymous": False,
             "export": False, "aead": True, "forward_secret": True},
        ],
    },
    "leaf": {"key_type": "EC", "key_size": 256, "signature_hash": "sha256", "trusted": True,
             "expired": False, "name_matches": True, "chain_complete": True},
    "compression": False, "heartbleed": False, "ccs_injection": False,
    "robot_vulnerable": False, "insecure_renegotiation": False, "fallback_scsv": True,
    "hsts": {"max_age": 63072000, "include_subdomains": True, "preload": True},
}  # fmt: skip

CBC_NO_FS = {
    "name": "TLS_RSA_WITH_AES_128_CBC_SHA",
    "key_size": 128,
    "anonymous": False,
    "export": False,
    "aead": False,
    "forward_secret": False,
}


def _with(**changes: Any) -> dict[str, Any]:
    summary = copy.deepcopy(GOOD)
    for path, value in changes.items():
        target = summary
        *parents, last = path.split("__")
        for key in parents:
            target = target[key]
        target[last] = value
    return summary


def test_grade_of_a_good_server_is_a_plus_96() -> None:
    result = grade(GOOD)
    assert (result.letter, result.score) == ("A+", 96.0)


@pytest.mark.parametrize(
    ("changes", "letter"),
    [
        ({"hsts": None}, "A-"),
        ({"hsts": {"max_age": 86400, "include_subdomains": True, "preload": False}}, "A-"),
        ({"protocols__TLSv1.0": [CBC_NO_FS]}, "B"),
        ({"protocols__SSLv3": [CBC_NO_FS]}, "C"),
        ({"protocols__SSLv2": [CBC_NO_FS]}, "F"),
        ({"compression": True}, "C"),
        ({"heartbleed": True}, "F"),
        ({"robot_vulnerable": True}, "F"),
        ({"leaf__trusted": False}, "T"),
        ({"leaf__expired": True}, "T"),
        ({"leaf__signature_hash": "sha1"}, "T"),
        ({"leaf__name_matches": False}, "M"),
        ({"leaf__chain_complete": False}, "B"),
        ({"leaf__key_type": "RSA", "leaf__key_size": 1024}, "B"),
    ],
)
def test_grade_caps_and_warnings(changes: dict[str, Any], letter: str) -> None:
    assert grade(_with(**changes)).letter == letter


def test_grade_caps_for_missing_forward_secrecy_aead_and_tls13() -> None:
    only_cbc = copy.deepcopy(GOOD)
    only_cbc["protocols"]["TLSv1.3"] = []
    only_cbc["protocols"]["TLSv1.2"] = [CBC_NO_FS]
    result = grade(only_cbc)
    assert result.letter == "B"
    assert "B: no forward secrecy" in result.caps
    assert "B: no AEAD suites" in result.caps
    assert "no TLS 1.3" in result.warnings
    # TLS 1.2 + 1.3 with ECDHE-AEAD and HSTS is A+ as well (checklist 0.1).
    mixed = copy.deepcopy(GOOD)
    mixed["protocols"]["TLSv1.2"] = [
        {"name": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "key_size": 128, "anonymous": False,
         "export": False, "aead": True, "forward_secret": True},
    ]  # fmt: skip
    assert grade(mixed).letter == "A+"
    mixed["fallback_scsv"] = False
    assert grade(mixed).letter == "A-"
