"""ACME DNS-01 through RFC 2136 dynamic updates signed with TSIG (RFC 8945).

Works with any server that takes TSIG-signed updates: BIND, Knot, PowerDNS
and many providers. Needed for the tenant wildcard ``*.<tenant-domain>``:
RFC 8555 §7.1.4 allows only DNS-01 for wildcards.

Threats handled (R-ACME-04/07):

* A DNS key on an internet-facing server is a standing risk: whoever steals
  it can change the zone. ``_acme-challenge.<name>`` may be a CNAME into a
  separate validation zone (RFC 8555 §8.4 follows CNAMEs); the solver follows
  it and updates the *target*, so the key needs update rights on the
  validation zone only, and ``zone`` (``--dns-zone``) refuses any target
  outside it before anything is sent.
* Records exist only during validation: each TXT value is added, and removed
  afterwards by value (never the whole RRset, so the apex and the wildcard,
  or two relays, cannot delete each other's values).
* The CA is asked to validate only once the primary serves every value,
  queried directly (no resolver cache in between), within a bounded wait.

Blocking (dnspython's sync API): called from the bot's worker thread.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update
from acme import challenges
from josepy.jwk import JWK

__all__ = ["DnsUpdateError", "Rfc2136Solver", "TsigKey", "load_tsig_key"]

log = logging.getLogger(__name__)

_ALGORITHMS = {
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}
_BIND_KEY = re.compile(r'key\s+"?(?P<name>[A-Za-z0-9._-]+)"?\s*\{(?P<body>.*?)\}\s*;', re.S)
_BIND_ALG = re.compile(r'algorithm\s+"?(?P<alg>[A-Za-z0-9-]+)"?\s*;')
_BIND_SECRET = re.compile(r'secret\s+"(?P<secret>[^"]+)"\s*;')
_MAX_CNAME_HOPS = 8


class DnsUpdateError(Exception):
    """A dynamic update, or the wait for its record, failed; the message says how."""


@dataclass(frozen=True)
class TsigKey:
    name: str
    algorithm: str
    secret: str

    def to_dnspython(self) -> dns.tsig.Key:
        return dns.tsig.Key(self.name, self.secret, _ALGORITHMS[self.algorithm])

    def __repr__(self) -> str:  # never print the secret
        return f"TsigKey(name={self.name!r}, algorithm={self.algorithm!r})"


def load_tsig_key(path: Path) -> TsigKey:
    """Read a TSIG key file.

    Accepts BIND's ``tsig-keygen`` output (``key "name" { algorithm ...;
    secret "...";};``) or the one-line ``algorithm:name:secret`` form of
    ``knsupdate -y`` (the comment line Knot's ``keymgr -t`` prints). Only
    HMAC-SHA256/384/512.
    The file holds a secret: it must not be readable by other users.
    """
    mode = path.stat().st_mode & 0o077
    if mode:
        raise DnsUpdateError(f"{path}: readable by other users; chmod 600 it")
    text = path.read_text()
    if match := _BIND_KEY.search(text):
        alg, secret_match = _BIND_ALG.search(match["body"]), _BIND_SECRET.search(match["body"])
        if alg is None or secret_match is None:
            raise DnsUpdateError(f"{path}: key block needs an algorithm and a secret")
        name, algorithm, secret = match["name"], alg["alg"], secret_match["secret"]
    else:
        parts = text.strip().split(":")
        if len(parts) != 3:
            raise DnsUpdateError(f"{path}: not a TSIG key file (BIND key block or alg:name:secret)")
        algorithm, name, secret = parts
    algorithm = algorithm.lower()
    if algorithm not in _ALGORITHMS:
        raise DnsUpdateError(
            f"{path}: TSIG algorithm {algorithm!r} not accepted (use {', '.join(_ALGORITHMS)})"
        )
    try:
        raw = base64.b64decode(secret, validate=True)
    except binascii.Error as exc:
        raise DnsUpdateError(f"{path}: TSIG secret is not base64") from exc
    if len(raw) < 16:
        raise DnsUpdateError(f"{path}: TSIG secret shorter than 128 bits")
    return TsigKey(name.rstrip("."), algorithm, secret)


class Rfc2136Solver:
    """DNS-01 solver: TXT records by dynamic update on the primary ``server:port``."""

    challenge_type = "dns-01"

    def __init__(
        self,
        server: str,
        port: int,
        key: TsigKey,
        *,
        zone: str | None = None,
        ttl: int = 60,
        propagation_timeout: float = 120.0,
        poll_interval: float = 1.0,
        query_timeout: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.server = server
        self.port = port
        self._key = key.to_dnspython()
        self.zone = dns.name.from_text(zone) if zone else None
        self.ttl = ttl
        self.propagation_timeout = propagation_timeout
        self.poll_interval = poll_interval
        self.query_timeout = query_timeout
        self._sleep = sleep
        #: (zone, owner, TXT value) added and not yet removed
        self.records: list[tuple[dns.name.Name, dns.name.Name, str]] = []

    # --------------------------------------------------------- solver API

    def prepare(
        self, name: str, challenge: challenges.KeyAuthorizationChallenge, account_key: JWK
    ) -> None:
        if not isinstance(challenge, challenges.DNS01):
            raise TypeError("not a dns-01 challenge")
        value = str(challenge.validation(account_key))
        owner = self.validation_owner(name.removeprefix("*."))
        zone = self.zone_for(owner)
        self._update(zone, owner, value, add=True)
        self.records.append((zone, owner, value))
        log.info("acme.dns_record_added", extra={"owner": owner.to_text(), "zone": zone.to_text()})

    def wait_ready(self) -> None:
        """Block until the primary serves every added value (bounded)."""
        deadline = time.monotonic() + self.propagation_timeout
        pending = list(self.records)
        while pending:
            pending = [r for r in pending if r[2] not in self._txt_values(r[1])]
            if not pending:
                return
            if time.monotonic() >= deadline:
                owners = ", ".join(sorted({r[1].to_text() for r in pending}))
                raise DnsUpdateError(f"TXT records not served after update: {owners}")
            self._sleep(self.poll_interval)

    def cleanup(self) -> None:
        while self.records:
            zone, owner, value = self.records.pop()
            try:
                self._update(zone, owner, value, add=False)
            except (DnsUpdateError, OSError, dns.exception.DNSException) as exc:
                # Left behind, a stale TXT value proves nothing to anyone else.
                log.warning(
                    "acme.dns_cleanup_failed", extra={"owner": owner.to_text(), "error": str(exc)}
                )

    # ------------------------------------------------------------ lookups

    def validation_owner(self, name: str) -> dns.name.Name:
        """``_acme-challenge.<name>``, after any CNAME chain the primary serves."""
        owner = dns.name.from_text(f"_acme-challenge.{name}")
        for _ in range(_MAX_CNAME_HOPS):
            response = self._query(owner, dns.rdatatype.CNAME)
            rrset = next(
                (r for r in response.answer if r.name == owner and r.rdtype == dns.rdatatype.CNAME),
                None,
            )
            if rrset is None:
                return owner
            target: dns.name.Name = rrset[0].target
            log.info("acme.dns_cname", extra={"from": owner.to_text(), "to": target.to_text()})
            owner = target
        raise DnsUpdateError(f"_acme-challenge.{name}: CNAME chain longer than {_MAX_CNAME_HOPS}")

    def zone_for(self, owner: dns.name.Name) -> dns.name.Name:
        """The zone holding ``owner``: ``--dns-zone`` if set (owner must be inside), else SOA."""
        if self.zone is not None:
            if not owner.is_subdomain(self.zone):
                raise DnsUpdateError(
                    f"{owner.to_text()} is outside the DNS zone {self.zone.to_text()} "
                    "this relay may update; fix the _acme-challenge CNAME or --dns-zone"
                )
            return self.zone
        response = self._query(owner, dns.rdatatype.SOA)
        for section in (response.answer, response.authority):
            for rrset in section:
                if rrset.rdtype == dns.rdatatype.SOA:
                    return rrset.name
        raise DnsUpdateError(f"{self.server}:{self.port} is not authoritative for {owner}")

    def _txt_values(self, owner: dns.name.Name) -> set[str]:
        response = self._query(owner, dns.rdatatype.TXT)
        values: set[str] = set()
        for rrset in response.answer:
            if rrset.name == owner and rrset.rdtype == dns.rdatatype.TXT:
                values.update(b"".join(r.strings).decode() for r in rrset)
        return values

    def _query(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
        query = dns.message.make_query(qname, rdtype)
        query.flags &= ~dns.flags.RD  # ask the primary itself, no recursion
        try:
            response = dns.query.tcp(
                query, self._address(), timeout=self.query_timeout, port=self.port
            )
        except (OSError, dns.exception.DNSException) as exc:
            raise DnsUpdateError(f"DNS query to {self.server}:{self.port} failed: {exc}") from exc
        if response.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise DnsUpdateError(
                f"DNS query for {qname} at {self.server}:{self.port}: "
                f"{dns.rcode.to_text(response.rcode())}"
            )
        return response

    def _address(self) -> str:
        """The primary's IP address; a host name is looked up each time (it may move)."""
        try:
            ipaddress.ip_address(self.server)
            return self.server
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(self.server, self.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise DnsUpdateError(f"DNS server {self.server}: cannot resolve ({exc})") from exc
        return str(infos[0][4][0])

    def _update(self, zone: dns.name.Name, owner: dns.name.Name, value: str, *, add: bool) -> None:
        update = dns.update.UpdateMessage(zone, keyring=self._key)
        txt = '"' + value + '"'  # base64url: nothing to escape
        if add:
            update.add(owner, self.ttl, dns.rdatatype.TXT, txt)
        else:
            update.delete(owner, dns.rdatatype.TXT, txt)
        try:
            response = dns.query.tcp(
                update, self._address(), timeout=self.query_timeout, port=self.port
            )
        except dns.tsig.PeerError as exc:
            raise DnsUpdateError(f"DNS server rejected the TSIG key: {exc}") from exc
        except (OSError, dns.exception.DNSException) as exc:
            raise DnsUpdateError(f"DNS update to {self.server}:{self.port} failed: {exc}") from exc
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            raise DnsUpdateError(
                f"DNS update of {owner.to_text()} in zone {zone.to_text()} refused: "
                f"{dns.rcode.to_text(rcode)} (does the key's update-policy allow TXT there?)"
            )
