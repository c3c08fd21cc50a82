"""A real authoritative DNS server (Debian's BIND ``named``) on loopback, for DNS-01 tests.

:func:`start_named` writes a config with one TSIG key and the given zones,
each with its own ``update-policy`` (so a test can prove the key may change
only ``_acme-challenge`` TXT records), starts ``named -g`` on a free port on
127.0.0.1 (UDP and TCP), waits until it answers, and stops it on exit.

Recursion is on for loopback clients only: pebble resolves through this
server like a CA through its resolver, and BIND follows a CNAME from one of
its zones into another only for recursive queries (an authoritative-only
answer stops at the CNAME, and pebble's resolver does not chase it).
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
from ports import reserve_port

NAMED = "/usr/sbin/named"
KEY_NAME = "homeport-acme"


def named_available() -> bool:
    return shutil.which(NAMED) is not None


@dataclass(frozen=True)
class Zone:
    name: str
    #: records after the SOA/NS, in zone-file syntax relative to the origin
    records: str = ""
    #: update-policy rules for the key, e.g. ``name _acme-challenge.x.test. TXT``
    grants: tuple[str, ...] = ()


@dataclass
class Named:
    port: int
    key_file: Path
    key_name: str
    secret: str
    workdir: Path


def _zone_file(zone: Zone) -> str:
    return (
        f"$ORIGIN {zone.name}.\n$TTL 60\n"
        f"@ IN SOA ns.{zone.name}. hostmaster.{zone.name}. 1 60 60 600 60\n"
        f"@ IN NS ns.{zone.name}.\nns IN A 127.0.0.1\n{zone.records}\n"
    )


@contextlib.contextmanager
def start_named(workdir: Path, zones: list[Zone]) -> Iterator[Named]:
    workdir.mkdir(parents=True, exist_ok=True)
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    key_block = f'key "{KEY_NAME}" {{\n\talgorithm hmac-sha256;\n\tsecret "{secret}";\n}};\n'
    key_file = workdir / "tsig.key"
    key_file.write_text(key_block)
    key_file.chmod(0o600)
    port = reserve_port(udp=True)
    zone_blocks = []
    for zone in zones:
        (workdir / f"{zone.name}.db").write_text(_zone_file(zone))
        grants = "".join(f"\t\tgrant {KEY_NAME} {g};\n" for g in zone.grants)
        policy = f"\tupdate-policy {{\n{grants}\t}};\n" if grants else "\tallow-update { none; };\n"
        zone_blocks.append(
            f'zone "{zone.name}" {{\n\ttype primary;\n\tfile "{zone.name}.db";\n{policy}}};\n'
        )
    conf = workdir / "named.conf"
    conf.write_text(
        key_block + "options {\n"
        f'\tdirectory "{workdir}";\n'
        f'\tpid-file "{workdir}/named.pid";\n'
        f'\tsession-keyfile "{workdir}/session.key";\n'
        f'\tmanaged-keys-directory "{workdir}";\n'
        f"\tlisten-on port {port} {{ 127.0.0.1; }};\n"
        "\tlisten-on-v6 { none; };\n"
        "\trecursion yes;\n\tallow-recursion { 127.0.0.1; };\n"
        "\tnotify no;\n"
        "\tdnssec-validation no;\n"
        "};\n"
        "controls { };\n" + "".join(zone_blocks)
    )
    log = workdir / "named.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [NAMED, "-g", "-4", "-n", "1", "-c", str(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    try:
        _wait_answering(port, zones[0].name, proc, log)
        yield Named(port, key_file, KEY_NAME, secret, workdir)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _wait_answering(port: int, zone: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    query = dns.message.make_query(zone, dns.rdatatype.SOA)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"named exited: {log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(OSError, dns.exception.DNSException):
            response = dns.query.tcp(query, "127.0.0.1", port=port, timeout=1)
            if response.answer:
                return
        time.sleep(0.2)
    raise TimeoutError(f"named not answering; log: {log.read_text(errors='replace')[-3000:]}")
