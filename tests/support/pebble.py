"""Let's Encrypt's test CA ``pebble`` (Debian package) on loopback, for ACME tests.

:func:`start_pebble` runs ``pebble-challtestsrv`` as a DNS server answering
every A query with 127.0.0.1 (so any test name, e.g. ``account.relay.test``,
resolves to loopback for pebble's validation) and ``pebble`` itself with:

* its directory on ``https://127.0.0.1:<port>/dir``, served with a
  certificate from a fresh test CA (the Debian package ships no test
  certificates): ``Pebble.ca_bundle`` is that CA, to trust the directory;
* HTTP-01 validations sent to ``127.0.0.1:<http_port>`` (the caller's
  responder), TLS-ALPN-01 to ``<tls_port>``;
* ``PEBBLE_VA_NOSLEEP=1`` and nonce rejection at pebble's default 5 %
  unless ``nonce_reject`` says otherwise.

Everything binds 127.0.0.1; both processes are killed on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ports import reserve_port

from homeport.tls.devca import create_independent_ca

PEBBLE = "/usr/bin/pebble"
CHALLTESTSRV = "/usr/bin/pebble-challtestsrv"


def pebble_available() -> bool:
    return shutil.which(PEBBLE) is not None and shutil.which(CHALLTESTSRV) is not None


@dataclass
class Pebble:
    directory_url: str
    management_url: str
    ca_bundle: Path
    http_port: int
    tls_port: int
    dns_port: int
    challtestsrv_management: str
    workdir: Path

    def root_pem(self, index: int = 0) -> bytes:
        """Pebble's (random, per-run) issuing root, from its management interface."""
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        with urllib.request.urlopen(
            f"{self.management_url}/roots/{index}", context=context, timeout=5
        ) as response:
            return bytes(response.read())


def _wait_tcp(port: int, proc: subprocess.Popen[bytes], deadline: float, log: Path) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening; log: {log.read_text(errors='replace')[-2000:]}")


@contextlib.contextmanager
def start_pebble(
    workdir: Path,
    *,
    http_port: int,
    tls_port: int | None = None,
    nonce_reject: int | None = None,
    validity_seconds: int | None = None,
    dns_port: int | None = None,
    authz_reuse: int | None = None,
) -> Iterator[Pebble]:
    """``dns_port``: a DNS server on 127.0.0.1 for pebble to resolve with (DNS-01
    tests, e.g. ``tests/support/bind.py``) instead of ``pebble-challtestsrv``;
    ``authz_reuse``: percent of valid authorizations pebble reuses (its default 50;
    0 validates every order)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca = create_independent_ca(workdir / "ca", common_name="pebble listener test CA")
    cert_path, key_path = ca.issue_server_certificate(["localhost"], workdir / "listener")
    external_dns = dns_port is not None
    port, mgmt, dns_mgmt = reserve_port(), reserve_port(), reserve_port()
    dns_port = dns_port if dns_port is not None else reserve_port(udp=True)
    tls_port = tls_port if tls_port is not None else reserve_port()
    config: dict[str, object] = {
        "listenAddress": f"127.0.0.1:{port}",
        "managementListenAddress": f"127.0.0.1:{mgmt}",
        "certificate": str(cert_path),
        "privateKey": str(key_path),
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }
    if validity_seconds is not None:
        config["certificateValidityPeriod"] = validity_seconds
    config_path = workdir / "pebble-config.json"
    config_path.write_text(json.dumps({"pebble": config}))

    env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
    env["PEBBLE_VA_NOSLEEP"] = "1"
    if nonce_reject is not None:
        env["PEBBLE_WFE_NONCEREJECT"] = str(nonce_reject)
    if authz_reuse is not None:
        env["PEBBLE_AUTHZREUSE"] = str(authz_reuse)
    dns_log, pebble_log = workdir / "challtestsrv.log", workdir / "pebble.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        deadline = time.monotonic() + 15
        if not external_dns:
            with dns_log.open("wb") as out:
                dns = subprocess.Popen(
                    [
                        CHALLTESTSRV,
                        "-defaultIPv4", "127.0.0.1",
                        "-defaultIPv6", "",
                        "-dns01", f"127.0.0.1:{dns_port}",
                        "-http01", "",
                        "-https01", "",
                        "-tlsalpn01", "",
                        "-management", f"127.0.0.1:{dns_mgmt}",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                )  # fmt: skip
            procs.append(dns)
            _wait_tcp(dns_mgmt, dns, deadline, dns_log)
        with pebble_log.open("wb") as out:
            pebble = subprocess.Popen(
                [PEBBLE, "-config", str(config_path), "-dnsserver", f"127.0.0.1:{dns_port}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=workdir,
            )
        procs.append(pebble)
        _wait_tcp(port, pebble, deadline, pebble_log)
        yield Pebble(
            directory_url=f"https://localhost:{port}/dir",
            management_url=f"https://localhost:{mgmt}",
            ca_bundle=ca.cert_path,
            http_port=http_port,
            tls_port=tls_port,
            dns_port=dns_port,
            challtestsrv_management=f"http://127.0.0.1:{dns_mgmt}",
            workdir=workdir,
        )
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
