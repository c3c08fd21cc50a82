"""The relay's certificate-bot options (``--acme-*``, ``--dns-*``), parsed and checked.

Kept apart from ``homeport.cli`` so the options, their checks and their help
live next to the code that uses them (``homeport.relay.tls``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CHALLENGES", "AcmeSettings", "acme_settings", "add_acme_arguments"]

#: ways to prove the account host; the tenant wildcard always uses DNS-01
CHALLENGES = ("http-01", "tls-alpn-01")
DNS_PORT = 53


@dataclass(frozen=True, slots=True)
class AcmeSettings:
    #: ACME directory URL, e.g. https://acme-v02.api.letsencrypt.org/directory
    directory: str
    email: str | None = None
    #: extra CA file trusted for the directory's HTTPS (pebble's test CA)
    ca_file: Path | None = None
    #: how the account host is proved: ``http-01`` (port 80) or ``tls-alpn-01``
    challenge: str = "http-01"
    #: primary DNS server taking RFC 2136 updates; None: no tenant wildcard by DNS-01
    dns_server: str | None = None
    dns_port: int = DNS_PORT
    dns_tsig_key_file: Path | None = None
    #: the only zone the key may update (the CNAME-delegated validation zone)
    dns_zone: str | None = None

    @property
    def dns01(self) -> bool:
        return self.dns_server is not None


def add_acme_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("certificates from an ACME CA (Let's Encrypt)")
    group.add_argument(
        "--acme-directory",
        dest="acme_directory",
        help="ACME directory URL; turns on the certificate bot (default: off)",
    )
    group.add_argument("--acme-email", dest="acme_email", help="contact for the ACME account")
    group.add_argument(
        "--acme-ca-file", dest="acme_ca_file", help="CA file for the directory's HTTPS (tests)"
    )
    group.add_argument(
        "--acme-challenge",
        dest="acme_challenge",
        choices=CHALLENGES,
        help="how the account host is proved (default http-01, needs --http-listen on port 80)",
    )
    group.add_argument(
        "--dns-server",
        dest="dns_server",
        help="host[:port] of the primary DNS server taking TSIG-signed updates (RFC 2136), "
        "for the tenant wildcard by DNS-01",
    )
    group.add_argument(
        "--dns-tsig-key-file",
        dest="dns_tsig_key_file",
        help="TSIG key file (tsig-keygen output, or algorithm:name:secret), mode 0600",
    )
    group.add_argument(
        "--dns-zone",
        dest="dns_zone",
        help="the only zone the key may update (e.g. the zone _acme-challenge is CNAMEd into)",
    )


def acme_settings(get: Callable[[str], Any]) -> AcmeSettings | None:
    """Settings from an option lookup (flag, environment, TOML); None when ACME is off.

    Raises ``SystemExit`` with a message naming the option on bad input.
    """
    directory = get("acme_directory")
    if not directory:
        for name in ("dns_server", "dns_tsig_key_file", "dns_zone", "acme_email"):
            if get(name):
                raise SystemExit(f"error: --{name.replace('_', '-')} needs --acme-directory")
        return None
    if not str(directory).startswith("https://"):
        raise SystemExit(f"error: --acme-directory must be an https:// URL: {directory!r}")
    challenge = str(get("acme_challenge") or "http-01").lower()
    if challenge not in CHALLENGES:
        raise SystemExit(f"error: --acme-challenge must be one of {', '.join(CHALLENGES)}")
    server, port = get("dns_server"), DNS_PORT
    key_file = get("dns_tsig_key_file")
    if server:
        host, sep, port_text = str(server).rpartition(":")
        if sep and port_text.isdigit():
            server, port = host.strip("[]"), int(port_text)
        if not key_file:
            raise SystemExit("error: --dns-server needs --dns-tsig-key-file")
    elif key_file or get("dns_zone"):
        raise SystemExit("error: --dns-tsig-key-file and --dns-zone need --dns-server")
    ca_file = get("acme_ca_file")
    return AcmeSettings(
        directory=str(directory),
        email=str(get("acme_email")) if get("acme_email") else None,
        ca_file=Path(ca_file).expanduser() if ca_file else None,
        challenge=challenge,
        dns_server=str(server) if server else None,
        dns_port=port,
        dns_tsig_key_file=Path(key_file).expanduser() if key_file else None,
        dns_zone=str(get("dns_zone")).rstrip(".").lower() if get("dns_zone") else None,
    )
