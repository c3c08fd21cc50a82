"""The C reference: Homeport's path built from two nginx processes.

``bench/run.py`` measures Homeport's relay path beside the same shape built
in C, so that its CPU and latency can be judged against what the shape
itself costs (issue #10):

    client -TLS 1.3-> "relay" nginx -TLS 1.3-> "add-on" nginx -HTTP-> backend

* the **relay nginx** terminates the client's TLS 1.3 with a certificate of
  the same kind as the relay's (ECDSA P-256 from a dev CA), and proxies to the
  add-on nginx over a second TLS 1.3 leg (verified against the bench CA) on
  pooled keep-alive connections;
* the **add-on nginx** terminates that leg and proxies plain HTTP on pooled
  keep-alive connections to the same backend the add-on uses.

Both pass WebSocket upgrades through (``Upgrade``/``Connection``), stream
request bodies (``proxy_request_buffering off``, as Homeport streams them)
and buffer responses in memory only (never to temp files: Homeport holds a
bounded window in memory too).  ``worker_processes 1`` each, with a master,
so each side is two processes whose CPU ``bench/run.py`` sums.  Where the
shapes differ: the add-on dials out to the relay and carries every stream
over one tunnel (on TLS, ALPN ``homeport-tunnel/1``), while the relay nginx
opens a pool of TLS connections to the add-on nginx, one per concurrent
exchange (HTTP/1.1 has no multiplexing).

Debian: ``apt-get install nginx-light`` (any nginx >= 1.19.5 with the
ssl module works; ``HOMEPORT_BENCH_NGINX`` names another binary).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: How to get the reference, printed when it is missing.
INSTALL_HINT = (
    "the two-nginx reference needs nginx (Debian: `apt-get install --no-install-recommends"
    " nginx-light`, as root; or set HOMEPORT_BENCH_NGINX to an nginx binary)"
)


def find_nginx() -> str | None:
    """The nginx binary to run, or None if there is none."""
    configured = os.environ.get("HOMEPORT_BENCH_NGINX")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def nginx_version(binary: str) -> str:
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    return (done.stderr or done.stdout).strip().removeprefix("nginx version: ")


def _user_line() -> str:
    """Run workers as the current user: a root master would otherwise switch them to nobody."""
    if os.geteuid() != 0:
        return ""  # the directive only applies (and is only allowed quietly) under root
    return f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"


def _common(workdir: Path) -> str:
    """Directives both processes share: paths in ``workdir``, no logs, keep-alive, streaming."""
    temp = "\n".join(
        f"    {kind}_temp_path {workdir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
worker_processes 1;
{_user_line()}
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
{temp}
    # Keep-alive without a per-connection request quota (Homeport has none).
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    # Bodies of any size, streamed upstream as they come (as Homeport does).
    client_max_body_size 0;
    client_body_buffer_size 256k;
    proxy_request_buffering off;
    # Responses buffered in memory only, 256 KiB per exchange (Homeport batches up
    # to 256 KiB per tunnel message); never in temp files.
    proxy_buffering on;
    proxy_buffer_size 64k;
    proxy_buffers 4 64k;
    proxy_busy_buffers_size 128k;
    proxy_max_temp_file_size 0;
    proxy_http_version 1.1;
    proxy_read_timeout 300s;
    proxy_send_timeout 300s;
    # An upgrade asks for "Connection: upgrade"; anything else keeps the upstream alive.
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        "" "";
    }}
"""


#: Inside each ``location``: a level with its own proxy_set_header inherits none from above.
PASS_HEADERS = """\
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
"""


def _upstream(name: str, port: int) -> str:
    return f"""\
    upstream {name} {{
        server 127.0.0.1:{port};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
"""


def _tls_server(port: int, cert: Path, key: Path) -> str:
    """A TLS 1.3-only listener, like ``homeport.tls.context.server_context`` (no tickets)."""
    return f"""\
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_session_tickets off;
"""


def relay_config(workdir: Path, port: int, addon_port: int, cert: Path, key: Path, ca: Path) -> str:
    """The "relay": TLS from the client, TLS again to the add-on nginx, forwarded headers."""
    return f"""\
{_common(workdir)}
{_upstream("addon", addon_port)}
    server {{
{_tls_server(port, cert, key)}
        location / {{
            proxy_pass https://addon;
{PASS_HEADERS}            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Forwarded-Host $host;
            proxy_ssl_protocols TLSv1.3;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;
        }}
    }}
}}
"""


def addon_config(workdir: Path, port: int, backend_port: int, cert: Path, key: Path) -> str:
    """The "add-on": TLS from the relay nginx, plain HTTP to the backend."""
    return f"""\
{_common(workdir)}
{_upstream("backend", backend_port)}
    server {{
{_tls_server(port, cert, key)}
        location / {{
            proxy_pass http://backend;
{PASS_HEADERS}        }}
    }}
}}
"""


@dataclass(frozen=True)
class NginxSide:
    """Where one nginx lives: its config and its prefix dir."""

    name: str
    workdir: Path
    config: Path

    def argv(self, binary: str) -> list[str]:
        # daemon off: the master stays our child; master_process on: master + 1 worker,
        # as nginx is deployed (bench/run.py counts the CPU of both).
        return [
            binary,
            "-p",
            str(self.workdir),
            "-c",
            str(self.config),
            "-e",
            str(self.workdir / "error.log"),
            "-g",
            "daemon off; master_process on;",
        ]


def write_pair(
    workdir: Path,
    *,
    relay_port: int,
    addon_port: int,
    backend_port: int,
    cert: Path,
    key: Path,
    ca: Path,
) -> tuple[NginxSide, NginxSide]:
    """Write both configs under ``workdir``; returns (relay side, add-on side)."""
    sides = []
    for name in ("nginx_relay", "nginx_addon"):
        side_dir = workdir / name
        side_dir.mkdir(parents=True)
        if name == "nginx_relay":
            text = relay_config(side_dir, relay_port, addon_port, cert, key, ca)
        else:
            text = addon_config(side_dir, addon_port, backend_port, cert, key)
        config = side_dir / "nginx.conf"
        config.write_text(text)
        sides.append(NginxSide(name, side_dir, config))
    return sides[0], sides[1]


def children(pid: int) -> list[int]:
    """Child pids of ``pid`` (an nginx master's workers)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(v) for v in text.split()]
    except FileNotFoundError:
        return []
