"""End-to-end benchmark: Homeport's relay path and its C reference, against direct.

Run: ``.venv/bin/python bench/run.py`` (full run, about 5 minutes on 2 cores)
or ``--quick`` (a smoke run of about a minute).  See ``bench/README.md``.

Everything runs on loopback, in separate processes (the Python ones on uvloop):

* the backend: ``bench/backend.py``, the stand-in (``homeport.standin``)
  served over TLS for the *direct* path and over plain HTTP on loopback for
  the add-on's hop to it;
* the relay: ``homeport relay`` (TLS with its dev CA, SQLite in a temporary
  data dir);
* the add-on: ``homeport addon``, linked with ``homeport admin``;
* the C reference (``bench/nginx_ref.py``): two nginx processes in the relay's
  and the add-on's places, TLS to the first, TLS again to the second, plain
  HTTP to the same backend (skipped, with a message, if nginx is missing);
* this process: the load generator (aiohttp client, keep-alive pool) and the
  sampler of CPU time (``/proc/<pid>/stat``) and RSS (``/proc/<pid>/status``
  every 100 ms).

Every path is TLS 1.3 from the client; the relay path adds the relay, the
tunnel (one WSS connection) and the add-on's plain-HTTP hop, the nginx path
the same three legs in C.  Every loop is bounded by a count and a time cap.
Prints one JSON line per measurement, then a table of figures and ratios
against direct and against nginx, and the targets of issue #10 (PASS/MISS;
the exit code does not depend on them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from yarl import URL

import nginx_ref
from homeport.addon.client import LocalhostResolver
from homeport.tls.devca import create_independent_ca

HERE = Path(__file__).resolve().parent
KiB = 1024
MiB = 1024 * 1024
MB = 10**6  # throughput is in MB/s, 1 MB = 10**6 bytes
EMAIL = "bench@example.com"
PASSWORD = "correct horse battery staple 42"  # a throwaway account in a temp dir
ACCOUNT_HOST = "homeport.localhost"
TENANT_DOMAIN = "home.localhost"
SESSION_COOKIE = "__Host-homeport_session"
BODY_CHUNK = 256 * KiB
WS_MESSAGE = "x" * KiB
SMALL_PATH = "/status/204"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count() or 1

# Targets of issue #10 for Homeport, against direct and the two-nginx reference measured
# in the same run (printed with PASS/MISS; they do not change the exit code).
TARGET_GET_ADDED_MS = 0.3  # GET c=1: p50 added over direct
TARGET_WS_ADDED_MS = 0.15  # WebSocket echo: p50 added over direct
TARGET_CPU_PER_EXCHANGE_VS_NGINX = 2.5  # relay+add-on CPU per request / per WS round trip
TARGET_GET_C32_VS_DIRECT = 0.6  # GET c=32 requests/s
TARGET_CPU_PER_MB_VS_NGINX = 1.2  # download and upload (their MB/s ratio: >= nginx's)
TARGET_WS_LOADED_OVER_IDLE = 2.0  # WS echo p50 under a saturating download / idle
#: "Flat": the relay's RSS may rise by at most this much over a whole transfer...
TARGET_RSS_GROWTH = 16 * MiB
#: ...and by at most this much over its second half (no trend with bytes moved).
TARGET_RSS_LATE_GROWTH = 2 * MiB
#: Flag a measurement when other work on the machine used more than this share of its CPUs.
NOISY_SHARE = 0.10


@dataclass(frozen=True)
class Plan:
    warmup: int
    get_c1: int
    get_c1_cap: float
    get_c32: int
    get_c32_cap: float
    ws: int
    ws_cap: float
    transfer: int
    transfer_cap: float
    transfer_rounds: int
    ws_load: int
    ws_load_cap: float


FULL = Plan(
    warmup=500,
    get_c1=15_000,
    get_c1_cap=30.0,
    get_c32=50_000,
    get_c32_cap=40.0,
    ws=15_000,
    ws_cap=20.0,
    transfer=256 * MiB,
    transfer_cap=60.0,
    transfer_rounds=5,
    ws_load=3_000,
    ws_load_cap=20.0,
)
QUICK = Plan(
    warmup=100,
    get_c1=1_000,
    get_c1_cap=5.0,
    get_c32=4_000,
    get_c32_cap=8.0,
    ws=1_000,
    ws_cap=5.0,
    transfer=64 * MiB,
    transfer_cap=20.0,
    transfer_rounds=1,
    ws_load=500,
    ws_load_cap=5.0,
)
GROUPS = ("get", "ws", "transfer", "wsload")
#: The proxied paths (``--path``); direct always runs, every ratio is against it.
PATHS = ("relay", "nginx")
#: The processes in the relay's and in the add-on's place on each proxied path
#: (nginx: master and worker of each; their CPU is summed per side).
SIDES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "relay": (("relay",), ("addon",)),
    "nginx": (("nginx_relay", "nginx_relay_worker"), ("nginx_addon", "nginx_addon_worker")),
}
#: CPU seconds the processes of the paths not being measured may use meanwhile (clock
#: ticks, housekeeping) before the run reports them as work left over.
LEFTOVER_CPU_S = 0.05
#: Body of the saturating download under the WebSocket (it is cut off when the echoes end).
ENDLESS = 1000 * 1000 * MiB


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, separators=(",", ":")), flush=True)


# ------------------------------------------------------------------ processes


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        text = fh.read()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss(pid: int) -> int:
    """VmRSS in bytes; 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


def system_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all CPUs; /proc/stat without idle, iowait)."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(v) for v in fh.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class Proc:
    """A child process whose output goes to files in the work dir (we poll them)."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name = name
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=workdir
            )
        self.pid = self.popen.pid

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = self.output()[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


async def wait_for_output(proc: Proc, pattern: str, timeout: float) -> re.Match[str]:
    regex = re.compile(pattern)
    async with asyncio.timeout(timeout):
        while True:
            match = regex.search(proc.output())
            if match:
                return match
            proc.check_alive()
            await asyncio.sleep(0.05)


async def cli(*args: str, stdin: bytes | None = None, timeout: float = 60) -> str:
    """Run ``homeport <args>`` to completion; returns stdout, raises on failure."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "homeport.cli",
        "--log-level",
        "warning",
        *args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    async with asyncio.timeout(timeout):
        out, err = await child.communicate(stdin)
    if child.returncode != 0:
        raise RuntimeError(f"homeport {' '.join(args)} failed: {err.decode(errors='replace')}")
    return out.decode()


def group_rss(pids: tuple[int, ...]) -> int:
    return sum(proc_rss(pid) for pid in pids)


class Sampler(threading.Thread):
    """Samples VmRSS of the watched groups of processes every ``interval`` seconds.

    A group is one side of a path (the relay, or an nginx master with its worker):
    its RSS is the sum of its processes'.
    """

    def __init__(self, groups: dict[str, tuple[int, ...]], interval: float = 0.1) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.groups = groups
        self.interval = interval
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            now = time.monotonic()
            self.samples.append((now, {n: group_rss(p) for n, p in self.groups.items()}))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=2)

    def between(self, start: float, end: float, name: str) -> list[tuple[float, int]]:
        return [(t, s[name]) for t, s in list(self.samples) if start <= t <= end]


@dataclass
class Usage:
    """CPU seconds of the watched processes and RSS of the sampled groups over one phase."""

    pids: dict[str, int]
    groups: dict[str, tuple[int, ...]]
    cpu_start: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    rss_start: dict[str, int] = field(default_factory=dict)
    rss_end: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    ended: float = 0.0

    busy_start: float = 0.0
    #: Busy CPU seconds of everything else on the machine (other jobs, kernel threads).
    other_cpu: float = 0.0

    def begin(self) -> None:
        self.rss_start = {n: group_rss(p) for n, p in self.groups.items()}
        self.cpu_start = {n: proc_cpu_seconds(p) for n, p in self.pids.items()}
        self.busy_start = system_busy_seconds()
        self.started = time.monotonic()

    def end(self) -> None:
        self.ended = time.monotonic()
        self.cpu = {n: proc_cpu_seconds(p) - self.cpu_start[n] for n, p in self.pids.items()}
        busy = system_busy_seconds() - self.busy_start
        self.other_cpu = max(0.0, busy - sum(self.cpu.values()))
        self.rss_end = {n: group_rss(p) for n, p in self.groups.items()}

    def rss_profile(self, sampler: Sampler, name: str) -> dict[str, float]:
        """Start, peak, end and growth (overall and over the second half), in MiB."""
        points = [(self.started, self.rss_start[name])]
        points += sampler.between(self.started, self.ended, name)
        points.append((self.ended, self.rss_end[name]))
        middle = (self.started + self.ended) / 2
        first_half_peak = max(r for t, r in points if t <= middle)
        peak = max(r for _, r in points)
        late_peak = max((r for t, r in points if t >= middle), default=peak)
        return {
            "rss_start_mib": round(self.rss_start[name] / MiB, 2),
            "rss_peak_mib": round(peak / MiB, 2),
            "rss_end_mib": round(self.rss_end[name] / MiB, 2),
            "rss_growth_mib": round((peak - self.rss_start[name]) / MiB, 2),
            "rss_late_growth_mib": round(max(0, late_peak - first_half_peak) / MiB, 2),
            "rss_samples": len(points),
        }


# ------------------------------------------------------------------ the stack


@dataclass
class Stack:
    workdir: Path
    backend: Proc
    direct_origin: str
    direct_ca: Path
    backend_plain_url: str
    #: Homeport's relay and add-on (None when ``--path`` leaves the relay path out).
    relay: Proc | None = None
    addon: Proc | None = None
    tenant_origin: str = ""
    relay_ca: Path = Path()
    #: The two-nginx reference (None when left out or when nginx is missing).
    nginx_relay: Proc | None = None
    nginx_addon: Proc | None = None
    nginx_origin: str = ""
    #: The nginx workers' pids by name (``nginx_relay_worker``, ``nginx_addon_worker``).
    nginx_workers: dict[str, int] = field(default_factory=dict)

    @property
    def procs(self) -> list[Proc]:
        parts = (self.nginx_relay, self.nginx_addon, self.addon, self.relay)
        return [*(p for p in parts if p is not None), self.backend]


async def start_stack(
    workdir: Path,
    log_level: str = "info",
    relay_extra: tuple[str, ...] = (),
    *,
    homeport: bool = True,
    nginx: str | None = None,
) -> Stack:
    """Backend, relay and add-on as separate processes; a user; the add-on linked.

    ``relay_extra``: more ``homeport relay`` flags (the flood workload sets limits);
    ``homeport=False`` leaves the relay and the add-on out; ``nginx``: the nginx
    binary, to start the two-nginx reference too.
    """
    python = sys.executable
    ca = create_independent_ca(workdir / "bench-ca", common_name="Homeport bench CA")
    cert, key = ca.issue_server_certificate(["localhost"], workdir / "backend-tls")
    tls_port, plain_port, relay_port = free_port(), free_port(), free_port()
    backend = Proc(
        "backend",
        [
            python,
            str(HERE / "backend.py"),
            f"--tls-port={tls_port}",
            f"--plain-port={plain_port}",
            f"--cert={cert}",
            f"--key={key}",
        ],
        workdir,
    )
    plain_url = f"http://127.0.0.1:{plain_port}"
    stack = Stack(
        workdir=workdir,
        backend=backend,
        direct_origin=f"https://localhost:{tls_port}",
        direct_ca=ca.cert_path,
        backend_plain_url=plain_url,
    )
    try:
        data_dir = workdir / "relay"
        relay_opts = [
            f"--data-dir={data_dir}",
            f"--account-host={ACCOUNT_HOST}",
            f"--tenant-domain={TENANT_DOMAIN}",
        ]
        if homeport:
            stack.relay = Proc(
                "relay",
                [
                    python,
                    "-m",
                    "homeport.cli",
                    f"--log-level={log_level}",
                    "relay",
                    f"--listen=127.0.0.1:{relay_port}",
                    *relay_opts,
                    *relay_extra,
                ],
                workdir,
            )
        await wait_for_output(backend, r"ready", 30)
        if nginx is not None:
            await start_nginx_pair(stack, nginx, plain_port, cert, key, ca.cert_path)
        if stack.relay is None:
            return stack
        await wait_for_output(stack.relay, r"Relay listening", 60)
        await cli("admin", "user", "create", EMAIL, *relay_opts, stdin=PASSWORD.encode() + b"\n")
        pubkey = (await cli("keys", "show", *relay_opts)).strip()
        stack.relay_ca = data_dir / "tls" / "dev-ca.pem"
        stack.addon = Proc(
            "addon",
            [
                python,
                "-m",
                "homeport.cli",
                f"--log-level={log_level}",
                "addon",
                f"--relay=wss://{ACCOUNT_HOST}:{relay_port}/v1/tunnel",
                f"--ha-url={plain_url}",
                f"--state-dir={workdir / 'addon'}",
                f"--relay-ca={stack.relay_ca}",
                f"--server-pubkey={pubkey}",
            ],
            workdir,
        )
        code = (await wait_for_output(stack.addon, r"Link code: (\S+)", 60)).group(1)
        await cli("admin", "link", code, EMAIL, *relay_opts)
        listing = json.loads(await cli("admin", "instance", "list", "--json", *relay_opts))
        (instance,) = [row["id"] for row in listing if row["owner"] == EMAIL]
        stack.tenant_origin = f"https://{instance}.{TENANT_DOMAIN}:{relay_port}"
    except BaseException:
        for proc in stack.procs:
            proc.stop()
        raise
    return stack


async def start_nginx_pair(
    stack: Stack, binary: str, backend_port: int, cert: Path, key: Path, ca: Path
) -> None:
    """The C reference (``bench/nginx_ref.py``): add-on nginx first, then the relay nginx."""
    relay_port, addon_port = free_port(), free_port()
    relay_side, addon_side = nginx_ref.write_pair(
        stack.workdir,
        relay_port=relay_port,
        addon_port=addon_port,
        backend_port=backend_port,
        cert=cert,
        key=key,
        ca=ca,
    )
    for side, port in ((addon_side, addon_port), (relay_side, relay_port)):
        proc = Proc(side.name, side.argv(binary), side.workdir)
        if side is relay_side:
            stack.nginx_relay = proc
        else:
            stack.nginx_addon = proc
        stack.nginx_workers[f"{side.name}_worker"] = await nginx_ready(proc, side, port)
    stack.nginx_origin = f"https://localhost:{relay_port}"


async def nginx_ready(proc: Proc, side: nginx_ref.NginxSide, port: int) -> int:
    """Wait until the master has its one worker and the port accepts; returns the worker's pid."""
    async with asyncio.timeout(30):
        while True:
            if proc.popen.poll() is not None:
                log = side.workdir / "error.log"
                tail = (log.read_text(errors="replace") if log.exists() else "")[-3000:]
                raise RuntimeError(f"{side.name} exited with {proc.popen.returncode}:\n{tail}")
            workers = nginx_ref.children(proc.pid)
            if len(workers) == 1:
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    await writer.wait_closed()
                    return workers[0]
            await asyncio.sleep(0.05)


def client_session(ca: Path, *, cookie: str | None = None) -> aiohttp.ClientSession:
    """The load generator's client: keep-alive pool, trusts ``ca``, no cookie jar."""
    context = ssl.create_default_context(cafile=str(ca))
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else None
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context, resolver=LocalhostResolver(), limit=64),
        cookie_jar=aiohttp.DummyCookieJar(),
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
    )


async def sign_in(stack: Stack, email: str = EMAIL) -> str:
    """Walk the sign-in like a browser (as ``tests/support/stack.py`` does); returns the token."""
    context = ssl.create_default_context(cafile=str(stack.relay_ca))
    account_origin = "https://" + ACCOUNT_HOST + ":" + str(URL(stack.tenant_origin).port)
    navigate = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context, resolver=LocalhostResolver()),
        cookie_jar=aiohttp.CookieJar(),
    ) as session:
        url = stack.tenant_origin + "/"
        for _ in range(10):
            async with session.get(url, headers=navigate, allow_redirects=False) as r:
                if r.status != 303:
                    await r.read()
                    break
                location = r.url.join(URL(r.headers["Location"]))
            if location.path == "/signin" and location.host == ACCOUNT_HOST:
                async with session.post(
                    str(location.with_query(None)),
                    data={
                        "email": email,
                        "password": PASSWORD,
                        "next": location.query.get("next", "/"),
                    },
                    headers={"Origin": account_origin},
                    allow_redirects=False,
                ) as r:
                    if r.status != 303:
                        raise RuntimeError(f"sign-in form answered HTTP {r.status}")
                    location = r.url.join(URL(r.headers["Location"]))
            url = str(location)
        else:
            raise RuntimeError("sign-in did not finish in 10 redirects")
        token = next((c.value for c in session.cookie_jar if c.key == SESSION_COOKIE), None)
        if token is None:
            raise RuntimeError("no tenant session cookie after sign-in")
        # The add-on may still be dialling in after its link: wait for the home to answer.
        async with asyncio.timeout(30):
            while True:
                async with session.get(stack.tenant_origin + "/", allow_redirects=False) as r:
                    await r.read()
                    if r.status == 200:
                        return token
                    if r.status != 503:
                        raise RuntimeError(f"tenant host answered HTTP {r.status} after sign-in")
                await asyncio.sleep(0.1)


# ---------------------------------------------------------------- workloads


async def small_gets(
    session: aiohttp.ClientSession, url: str, concurrency: int, count: int, cap: float
) -> dict[str, Any]:
    """``count`` GETs (or as many as fit in ``cap`` seconds) from ``concurrency`` workers."""
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.perf_counter() + cap

    async def worker() -> None:
        nonlocal issued, errors
        while issued < count and time.perf_counter() < deadline:
            issued += 1
            t0 = time.perf_counter_ns()
            try:
                async with session.get(url, allow_redirects=False) as r:
                    await r.read()
                    ok = r.status == 204
            except aiohttp.ClientError:
                ok = False
            latencies.append((time.perf_counter_ns() - t0) / 1e6)
            if not ok:
                errors += 1

    started = time.perf_counter()
    async with asyncio.timeout(cap + 30):
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "capped": len(latencies) < count,
        "seconds": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
    }


async def ws_echo(
    session: aiohttp.ClientSession, url: str, count: int, cap: float, warmup: int
) -> dict[str, Any]:
    """Round trips of a 1 KiB text message on one WebSocket, one at a time."""
    latencies: list[float] = []
    errors = 0
    async with asyncio.timeout(cap + warmup * 0.1 + 30):
        async with session.ws_connect(url, autoping=True, compress=0) as ws:
            for _ in range(warmup):
                await ws.send_str(WS_MESSAGE)
                await ws.receive(timeout=10)
            started = time.perf_counter()
            deadline = started + cap
            while len(latencies) < count and time.perf_counter() < deadline:
                t0 = time.perf_counter_ns()
                await ws.send_str(WS_MESSAGE)
                msg = await ws.receive(timeout=10)
                latencies.append((time.perf_counter_ns() - t0) / 1e6)
                if msg.type is not aiohttp.WSMsgType.TEXT or msg.data != WS_MESSAGE:
                    errors += 1
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        break
            elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "round_trips": len(latencies),
        # Every round trip inside the measured phase, warm-up included (for CPU per round trip).
        "exchanges": warmup + len(latencies),
        "errors": errors,
        "capped": len(latencies) < count,
        "seconds": round(elapsed, 3),
        "per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
    }


async def ws_echo_under_download(
    session: aiohttp.ClientSession, origin: str, count: int, cap: float, warmup: int
) -> dict[str, Any]:
    """WebSocket echo round trips alone, then while a download saturates the same path.

    The download (a practically endless body, read as fast as the client can) shares
    the tunnel with the WebSocket; the echoes start once it is flowing.  Idle and
    loaded are measured back to back on the same connection so the ratio compares
    like with like.
    """
    url = origin.replace("https://", "wss://") + "/ws/echo"
    idle = await ws_echo(session, url, count, cap, warmup)
    received = 0
    flowing = asyncio.Event()

    async def saturate() -> None:
        nonlocal received
        async with session.get(f"{origin}/bytes/{ENDLESS}") as r:
            try:
                async for chunk in r.content.iter_any():
                    received += len(chunk)
                    if received >= 16 * MiB:
                        flowing.set()
            finally:
                # Drop the connection, not just close it: a TLS close waits (up to
                # uvloop's 30 s shutdown timeout) for the peer's close_notify while
                # decrypting whatever still comes, and nginx, busy sending the endless
                # body, kept sending it: its workers, the backend and this client ran
                # flat out through the next workload (the transfers, every path's).
                connection = r.connection
                if connection is not None and connection.transport is not None:
                    connection.transport.abort()
                r.close()

    task = asyncio.create_task(saturate())
    try:
        async with asyncio.timeout(60):
            await flowing.wait()
        before = received
        started = time.perf_counter()
        loaded = await ws_echo(session, url, count, cap, warmup=50)
        elapsed = time.perf_counter() - started
        during = received - before
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await task
    return {
        "round_trips": loaded["round_trips"],
        "errors": idle["errors"] + loaded["errors"],
        "capped": loaded["capped"],
        "idle_p50_ms": idle["p50_ms"],
        "idle_p99_ms": idle["p99_ms"],
        "p50_ms": loaded["p50_ms"],
        "p99_ms": loaded["p99_ms"],
        "p50_loaded_over_idle": round(loaded["p50_ms"] / idle["p50_ms"], 2),
        "p99_loaded_over_idle": round(loaded["p99_ms"] / idle["p99_ms"], 2),
        "download_mb_per_s": round(during / MB / elapsed, 1),
    }


async def download(
    session: aiohttp.ClientSession, origin: str, total: int, cap: float
) -> dict[str, Any]:
    received = 0
    capped = False
    status = 0
    started = time.perf_counter()
    try:
        async with asyncio.timeout(cap):
            async with session.get(f"{origin}/bytes/{total}") as r:
                status = r.status
                async for chunk in r.content.iter_any():
                    received += len(chunk)
    except TimeoutError:
        capped = True
    elapsed = time.perf_counter() - started
    return {
        "bytes": received,
        "errors": int(status != 200 or (received != total and not capped)),
        "capped": capped,
        "seconds": round(elapsed, 3),
        "mb_per_s": round(received / MB / elapsed, 1),
    }


async def upload(
    session: aiohttp.ClientSession, origin: str, total: int, cap: float
) -> dict[str, Any]:
    block = (bytes(range(256)) * (BODY_CHUNK // 256))[:BODY_CHUNK]
    sent = 0
    capped = False
    answer: dict[str, Any] = {}

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        while sent < total:
            piece = block if total - sent >= len(block) else block[: total - sent]
            sent += len(piece)
            yield piece

    started = time.perf_counter()
    try:
        async with asyncio.timeout(cap):
            async with session.put(
                f"{origin}/upload",
                data=body(),
                headers={"Content-Length": str(total), "Content-Type": "application/octet-stream"},
            ) as r:
                answer = await r.json() if r.status == 200 else {"status": r.status}
    except TimeoutError:
        capped = True
    elapsed = time.perf_counter() - started
    return {
        "bytes": sent,
        "errors": int(not capped and answer.get("length") != total),
        "capped": capped,
        "seconds": round(elapsed, 3),
        "mb_per_s": round(sent / MB / elapsed, 1),
    }


# ------------------------------------------------------------------ the run


@dataclass
class Results:
    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        emit(record)

    def get(self, figure: str, path: str) -> dict[str, Any] | None:
        for record in self.records:
            if (
                record["figure"] == figure
                and record["path"] == path
                and record.get("round", "all") == "all"
            ):
                return record
        return None


#: The RSS groups sampled for the relay's and the add-on's place on each proxied path.
RSS_GROUPS = {"relay": ("relay", "addon"), "nginx": ("nginx_relay", "nginx_addon")}


@dataclass
class Watch:
    """What the run watches: CPU per process, RSS per side, and the RSS sampler."""

    pids: dict[str, int]
    groups: dict[str, tuple[int, ...]]
    sampler: Sampler


async def measure(
    results: Results,
    figure: str,
    path: str,
    watch: Watch,
    run: Callable[[], Any],
    *,
    round_number: int | None = None,
) -> dict[str, Any]:
    usage = Usage(watch.pids, watch.groups)
    usage.begin()
    record: dict[str, Any] = {"figure": figure, "path": path}
    if round_number is not None:
        record["round"] = round_number
    record.update(await run())
    usage.end()
    record["cpu_s"] = {name: round(seconds, 3) for name, seconds in usage.cpu.items()}
    # Other load on the machine skews every figure: record it beside them.
    record["other_cpu_share"] = round(usage.other_cpu / (usage.ended - usage.started) / CPUS, 3)
    sides = SIDES.get(path)
    # The path's own processes; those of the other paths should idle meanwhile: work
    # left over from an earlier workload (a body still flowing) would skew the figures.
    own = {"client", "backend", *(name for side in sides or () for name in side)}
    record["other_paths_cpu_s"] = round(
        sum(seconds for name, seconds in usage.cpu.items() if name not in own), 3
    )
    relay_addon = 0.0
    if sides is not None:
        relay_cpu, addon_cpu = (sum(usage.cpu[name] for name in side) for side in sides)
        relay_addon = relay_cpu + addon_cpu
        record["relay_cpu_s"] = round(relay_cpu, 4)
        record["addon_cpu_s"] = round(addon_cpu, 4)
        record["relay_addon_cpu_s"] = round(relay_addon, 4)
    if "bytes" in record:
        megabytes = max(record["bytes"], 1) / MB
        record["path_cpu_s"] = round(sum(usage.cpu[n] for n in own), 4)
        record["cpu_s_per_mb_all"] = round(record["path_cpu_s"] / megabytes, 6)
        if sides is not None:
            record["relay_addon_cpu_s_per_mb"] = round(relay_addon / megabytes, 6)
            relay_group, addon_group = RSS_GROUPS[path]
            record["relay"] = usage.rss_profile(watch.sampler, relay_group)
            record["addon"] = usage.rss_profile(watch.sampler, addon_group)
    elif sides is not None:
        for count_key, figure_key in (
            ("requests", "relay_addon_cpu_us_per_request"),
            ("exchanges", "relay_addon_cpu_us_per_round_trip"),
        ):
            if record.get(count_key):
                record[figure_key] = round(relay_addon / record[count_key] * 1e6, 1)
    results.add(record)
    return record


async def run_benchmark(
    plan: Plan,
    groups: set[str],
    paths: tuple[str, ...],
    nginx: str | None,
    profile_dir: Path | None,
    log_level: str,
) -> Results:
    """Direct plus the proxied ``paths`` (``nginx``: the binary, or None to leave it out)."""
    results = Results()
    with tempfile.TemporaryDirectory(prefix="homeport-bench-") as tmp:
        workdir = Path(tmp)
        setup_started = time.monotonic()
        stack = await start_stack(
            workdir,
            log_level,
            homeport="relay" in paths,
            nginx=nginx if "nginx" in paths else None,
        )
        profilers: list[subprocess.Popen[bytes]] = []
        sampler: Sampler | None = None
        try:
            token = await sign_in(stack) if stack.relay is not None else ""
            emit(
                {
                    "setup": "ready",
                    "seconds": round(time.monotonic() - setup_started, 2),
                    "python": platform.python_version(),
                    "aiohttp": aiohttp.__version__,
                    "nginx": nginx_ref.nginx_version(nginx)
                    if stack.nginx_relay and nginx
                    else None,
                    "cpus": CPUS,
                    "loadavg": os.getloadavg(),
                    "direct": "client -TLS-> backend",
                    "relay": "client -TLS-> relay -TLS tunnel-> add-on -plain HTTP-> backend",
                    "nginx_path": "client -TLS-> nginx -TLS-> nginx -plain HTTP-> backend",
                    "paths": ["direct", *paths],
                    "backend_for_addon": stack.backend_plain_url,
                    "transfer_bytes": plan.transfer,
                    "relay_addon_log_level": log_level,
                }
            )
            pids = {"backend": stack.backend.pid, "client": os.getpid()}
            rss_groups: dict[str, tuple[int, ...]] = {}
            sessions = {"direct": (client_session(stack.direct_ca), stack.direct_origin)}
            if stack.relay is not None and stack.addon is not None:
                pids |= {"relay": stack.relay.pid, "addon": stack.addon.pid}
                rss_groups |= {"relay": (stack.relay.pid,), "addon": (stack.addon.pid,)}
                sessions["relay"] = (
                    client_session(stack.relay_ca, cookie=token),
                    stack.tenant_origin,
                )
            if stack.nginx_relay is not None and stack.nginx_addon is not None:
                pids |= {"nginx_relay": stack.nginx_relay.pid, "nginx_addon": stack.nginx_addon.pid}
                pids |= stack.nginx_workers
                for master in (stack.nginx_relay, stack.nginx_addon):
                    rss_groups[master.name] = (
                        master.pid,
                        stack.nginx_workers[master.name + "_worker"],
                    )
                sessions["nginx"] = (client_session(stack.direct_ca), stack.nginx_origin)
            sampler = Sampler(rss_groups)
            sampler.start()
            if profile_dir is not None:
                profilers = start_profilers(profile_dir, stack)
            try:
                await run_workloads(
                    plan, groups, results, sessions, Watch(pids, rss_groups, sampler)
                )
            finally:
                for session, _ in sessions.values():
                    await session.close()
        finally:
            if sampler is not None:
                sampler.stop()
            for proc in stack.procs:
                proc.stop()
            for profiler in profilers:
                try:
                    profiler.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    profiler.kill()
            leaked = [p.name for p in (stack.relay, stack.addon) if p and "Traceback" in p.output()]
            if leaked:
                emit({"warning": "tracebacks in the output of " + ", ".join(leaked)})
            for nginx_proc in (stack.nginx_relay, stack.nginx_addon):
                if nginx_proc is None:
                    continue
                log = workdir / nginx_proc.name / "error.log"
                if log.exists() and "[error]" in log.read_text():
                    emit(
                        {
                            "warning": f"errors in {nginx_proc.name}'s error log",
                            "log": log.read_text()[-2000:],
                        }
                    )
    return results


async def run_workloads(
    plan: Plan,
    groups: set[str],
    results: Results,
    sessions: dict[str, tuple[aiohttp.ClientSession, str]],
    watch: Watch,
) -> None:
    paths = tuple(sessions)
    if "get" in groups:
        for concurrency, count, cap in (
            (1, plan.get_c1, plan.get_c1_cap),
            (32, plan.get_c32, plan.get_c32_cap),
        ):
            for path in paths:
                session, origin = sessions[path]
                url = origin + SMALL_PATH
                await small_gets(session, url, concurrency, plan.warmup, cap)  # warm-up

                def run(
                    s: aiohttp.ClientSession = session,
                    u: str = url,
                    c: int = concurrency,
                    n: int = count,
                    limit: float = cap,
                ) -> Any:
                    return small_gets(s, u, c, n, limit)

                await measure(results, f"get_c{concurrency}", path, watch, run)
    if "ws" in groups:
        for path in paths:
            session, origin = sessions[path]
            url = origin.replace("https://", "wss://") + "/ws/echo"

            def run_ws(s: aiohttp.ClientSession = session, u: str = url) -> Any:
                return ws_echo(s, u, plan.ws, plan.ws_cap, plan.warmup)

            await measure(results, "ws_echo", path, watch, run_ws)
    if "wsload" in groups:
        for path in paths:
            session, origin = sessions[path]

            def run_wsload(s: aiohttp.ClientSession = session, o: str = origin) -> Any:
                return ws_echo_under_download(s, o, plan.ws_load, plan.ws_load_cap, plan.warmup)

            await measure(results, "ws_under_download", path, watch, run_wsload)
    if "transfer" in groups:
        for path in paths:
            session, origin = sessions[path]
            await download(session, origin, 4 * MiB, 30)  # warm-up
        every: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
        for name, transfer in (("download", download), ("upload", upload)):
            rounds: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
            for number in range(1, plan.transfer_rounds + 1):
                # Alternate which path goes first, so neither always follows the other.
                for path in paths if number % 2 else tuple(reversed(paths)):
                    session, origin = sessions[path]

                    def run_transfer(
                        s: aiohttp.ClientSession = session,
                        o: str = origin,
                        t: Callable[..., Any] = transfer,
                    ) -> Any:
                        return t(s, o, plan.transfer, plan.transfer_cap)

                    record = await measure(
                        results, name, path, watch, run_transfer, round_number=number
                    )
                    rounds[path].append(record)
                    every[path].append(record)
            for path in paths:
                results.add(summarise_transfers(name, path, rounds[path]))
        for path in paths:
            if path in SIDES:
                results.add(summarise_memory(path, every[path]))


def side_memory(mems: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's RSS over consecutive transfers: the worst one, and first start to last end."""
    return {
        "rss_start_mib": mems[0]["rss_start_mib"],
        "rss_peak_mib": max(m["rss_peak_mib"] for m in mems),
        "rss_end_mib": mems[-1]["rss_end_mib"],
        "rss_growth_mib": max(m["rss_growth_mib"] for m in mems),
        "rss_late_growth_mib": max(m["rss_late_growth_mib"] for m in mems),
        "rss_growth_over_rounds_mib": round(mems[-1]["rss_end_mib"] - mems[0]["rss_start_mib"], 2),
    }


def is_flat(mem: dict[str, Any]) -> bool:
    """Flat: bounded growth within every transfer, none in its second half, none across them."""
    return bool(
        mem["rss_growth_mib"] * MiB <= TARGET_RSS_GROWTH
        and mem["rss_late_growth_mib"] * MiB <= TARGET_RSS_LATE_GROWTH
        and mem["rss_growth_over_rounds_mib"] * MiB <= TARGET_RSS_GROWTH
    )


def summarise_memory(path: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """RSS of both sides over every transfer of the path, downloads then uploads (GBs in all)."""
    return {
        "figure": "transfers_memory",
        "path": path,
        "round": "all",
        "transfers": len(rounds),
        "bytes": sum(r["bytes"] for r in rounds),
        "relay": side_memory([r["relay"] for r in rounds]),
        "addon": side_memory([r["addon"] for r in rounds]),
    }


def summarise_transfers(figure: str, path: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median rate over the rounds; CPU per MB over all bytes; the worst RSS behaviour."""
    rates = sorted(r["mb_per_s"] for r in rounds)
    total_bytes = sum(r["bytes"] for r in rounds)
    megabytes = max(total_bytes, 1) / MB
    summary: dict[str, Any] = {
        "figure": figure,
        "path": path,
        "round": "all",
        "rounds": len(rounds),
        "bytes": total_bytes,
        "errors": sum(r["errors"] for r in rounds),
        "capped": any(r["capped"] for r in rounds),
        "mb_per_s": rates[len(rates) // 2],
        "mb_per_s_min": rates[0],
        "mb_per_s_max": rates[-1],
        "cpu_s_per_mb_all": round(sum(r["path_cpu_s"] for r in rounds) / megabytes, 6),
    }
    if path in SIDES:
        summary["relay_addon_cpu_s_per_mb"] = round(
            sum(r["relay_addon_cpu_s"] for r in rounds) / megabytes, 6
        )
        for side in ("relay", "addon"):
            summary[side] = side_memory([r[side] for r in rounds])
    return summary


# ----------------------------------------------------------------- profiling


def start_profilers(profile_dir: Path, stack: Stack) -> list[subprocess.Popen[bytes]]:
    """py-spy (if installed) on the relay and the add-on until they exit."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        emit({"warning": "py-spy is not installed in the venv; --profile ignored"})
        return []
    profile_dir.mkdir(parents=True, exist_ok=True)
    profilers = []
    for proc in (stack.relay, stack.addon):
        if proc is None:
            continue
        out = profile_dir / f"{proc.name}.txt"
        profilers.append(
            subprocess.Popen(
                [
                    str(py_spy),
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(out),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return profilers


def summarise_profile(path: Path, top: int = 20) -> str:
    """Top functions by own samples and by inclusive samples, from py-spy's raw output."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack_text.split(";")
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        return f"{path.name}: no samples\n"
    lines = [f"{path.name}: {total} samples"]
    for title, table in (("own", own), ("inclusive", inclusive)):
        lines.append(f"  top by {title} time:")
        for frame, count in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"    {100 * count / total:5.1f}%  {frame}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------- report

#: Column order of the table; "relay" is Homeport's path.
COLUMNS = ("direct", "relay", "nginx")
TITLES = {"direct": "direct", "relay": "homeport", "nginx": "nginx (C)"}


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


class Report:
    """Reads the summary records of one run: figures, ratios, added latency."""

    def __init__(self, results: Results) -> None:
        self.results = results

    def value(self, figure: str, path: str, key: str, side: str | None = None) -> float | None:
        record = self.results.get(figure, path)
        if record is None:
            return None
        if side is not None:
            record = record.get(side) or {}
        found = record.get(key)
        return float(found) if found is not None else None

    def added(self, figure: str, path: str, key: str = "p50_ms") -> float | None:
        """``path``'s figure minus direct's (latency added by the path)."""
        own, direct = self.value(figure, path, key), self.value(figure, "direct", key)
        return None if own is None or direct is None else own - direct

    def vs_direct(self, figure: str, path: str, key: str) -> float | None:
        return ratio(self.value(figure, path, key), self.value(figure, "direct", key))

    def vs_nginx(self, figure: str, key: str) -> float | None:
        return ratio(self.value(figure, "relay", key), self.value(figure, "nginx", key))


def table(results: Results) -> str:
    """Figures of direct | homeport | nginx, with the ratios against direct and against nginx."""
    report = Report(results)
    rows: list[tuple[str, ...]] = []

    def row(label: str, cells: dict[str, str], *ratios: float | None) -> None:
        if all(cell == "-" for cell in cells.values()):
            return  # a workload or path that did not run
        padded = [*ratios, None, None, None][:3]
        rows.append(
            (
                label,
                *(cells.get(path, "-") for path in COLUMNS),
                *(fmt(r) if r is not None else "" for r in padded),
            )
        )

    def plain(label: str, figure: str, key: str, digits: int = 2, scale: float = 1.0) -> None:
        cells = {}
        for path in COLUMNS:
            v = report.value(figure, path, key)
            cells[path] = fmt(v * scale if v is not None else None, digits)
        row(label, cells)

    def latency(label: str, figure: str, key: str) -> None:
        cells = {}
        for path in COLUMNS:
            v = report.value(figure, path, key)
            extra = report.added(figure, path, key) if path != "direct" else None
            cells[path] = fmt(v, 3) + (f" ({extra:+.3f})" if extra is not None else "")
        row(label, cells)

    def rate(label: str, figure: str, key: str, digits: int = 0, spread: bool = False) -> None:
        cells = {}
        for path in COLUMNS:
            record = results.get(figure, path)
            if record is None or record.get(key) is None:
                continue
            cells[path] = fmt(record[key], digits)
            if spread:
                cells[path] += f" ({record['mb_per_s_min']:.0f}-{record['mb_per_s_max']:.0f})"
        row(
            label,
            cells,
            report.vs_direct(figure, "relay", key),
            report.vs_direct(figure, "nginx", key),
            report.vs_nginx(figure, key),
        )

    def cpu(label: str, figure: str, key: str, digits: int, scale: float) -> None:
        cells = {}
        for path in ("relay", "nginx"):
            v = report.value(figure, path, key)
            cells[path] = fmt(v * scale if v is not None else None, digits)
        row(label, cells, None, None, report.vs_nginx(figure, key))

    def memory(label: str, figure: str, side: str) -> None:
        cells = {}
        for path in ("relay", "nginx"):
            record = results.get(figure, path)
            if record is None:
                continue
            mem = record[side]
            cells[path] = (
                f"{mem['rss_start_mib']:.1f}->{mem['rss_end_mib']:.1f} "
                f"peak {mem['rss_peak_mib']:.1f} (+{mem['rss_growth_mib']:.1f}"
                f"/+{mem['rss_late_growth_mib']:.1f})"
            )
        row(label, cells)

    for figure, label in (("get_c1", "GET c=1"), ("get_c32", "GET c=32")):
        latency(f"{label} p50 ms (added)", figure, "p50_ms")
        latency(f"{label} p99 ms (added)", figure, "p99_ms")
        rate(f"{label} requests/s", figure, "rps")
        cpu(f"{label} relay+add-on CPU us/request", figure, "relay_addon_cpu_us_per_request", 0, 1)
    latency("WS echo p50 ms (added)", "ws_echo", "p50_ms")
    latency("WS echo p99 ms (added)", "ws_echo", "p99_ms")
    rate("WS echo round trips/s", "ws_echo", "per_second")
    cpu(
        "WS echo relay+add-on CPU us/round trip",
        "ws_echo",
        "relay_addon_cpu_us_per_round_trip",
        0,
        1,
    )
    plain("WS idle p50 ms", "ws_under_download", "idle_p50_ms", 3)
    plain("WS under download p50 ms", "ws_under_download", "p50_ms", 3)
    plain("WS under download / idle, p50", "ws_under_download", "p50_loaded_over_idle")
    plain("WS under download / idle, p99", "ws_under_download", "p99_loaded_over_idle")
    plain("download beside the WS MB/s", "ws_under_download", "download_mb_per_s", 1)
    for figure in ("download", "upload"):
        rate(f"{figure} MB/s median (min-max)", figure, "mb_per_s", 1, spread=True)
        cpu(f"{figure} relay+add-on CPU ms/MB", figure, "relay_addon_cpu_s_per_mb", 2, 1e3)
        plain(f"{figure} CPU ms/MB, all processes", figure, "cpu_s_per_mb_all", 2, 1e3)
        memory(f"{figure} relay-side RSS MiB", figure, "relay")
        memory(f"{figure} add-on-side RSS MiB", figure, "addon")
    moved = report.value("transfers_memory", "relay", "bytes") or report.value(
        "transfers_memory", "nginx", "bytes"
    )
    if moved:
        memory(f"all transfers ({moved / 1e9:.2f} GB) relay RSS", "transfers_memory", "relay")
        memory(f"all transfers ({moved / 1e9:.2f} GB) add-on RSS", "transfers_memory", "addon")
    header = (
        "figure",
        *(TITLES[p] for p in COLUMNS),
        "homeport/direct",
        "nginx/direct",
        "homeport/nginx",
    )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(header)),
        "  ".join("-" * w for w in widths),
    ]
    for r in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip())
    return "\n".join(lines)


def targets(results: Results) -> str:
    """Issue #10's targets for Homeport, judged against direct and nginx of the same run.

    A verdict needs every figure it compares; "-" when one is missing (a path or a
    workload left out, or nginx not installed).
    """
    report = Report(results)
    lines: list[tuple[bool | None, str, str]] = []

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:+.3f} ms"

    def times(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}x"

    for figure, label, limit in (
        ("get_c1", "GET c=1", TARGET_GET_ADDED_MS),
        ("ws_echo", "WS echo", TARGET_WS_ADDED_MS),
    ):
        added = report.added(figure, "relay")
        lines.append(
            (
                None if added is None else added <= limit,
                f"{label}: p50 added over direct <= {limit} ms",
                f"homeport {ms(added)} (nginx {ms(report.added(figure, 'nginx'))})",
            )
        )
    for figure, label, key, unit in (
        ("get_c32", "GET c=32", "relay_addon_cpu_us_per_request", "us/request"),
        ("ws_echo", "WS echo", "relay_addon_cpu_us_per_round_trip", "us/round trip"),
    ):
        r = report.vs_nginx(figure, key)
        home, ref = report.value(figure, "relay", key), report.value(figure, "nginx", key)
        lines.append(
            (
                None if r is None else r <= TARGET_CPU_PER_EXCHANGE_VS_NGINX,
                f"{label}: relay+add-on CPU <= {TARGET_CPU_PER_EXCHANGE_VS_NGINX}x nginx",
                f"{fmt(home, 0)} vs {fmt(ref, 0)} {unit} = {times(r)}",
            )
        )
    r = report.vs_direct("get_c32", "relay", "rps")
    lines.append(
        (
            None if r is None else r >= TARGET_GET_C32_VS_DIRECT,
            f"GET c=32: requests/s >= {TARGET_GET_C32_VS_DIRECT}x direct",
            f"homeport {times(r)} (nginx {times(report.vs_direct('get_c32', 'nginx', 'rps'))})",
        )
    )
    for figure in ("download", "upload"):
        key = "relay_addon_cpu_s_per_mb"
        r = report.vs_nginx(figure, key)
        home, ref = report.value(figure, "relay", key), report.value(figure, "nginx", key)
        lines.append(
            (
                None if r is None else r <= TARGET_CPU_PER_MB_VS_NGINX,
                f"{figure}: relay+add-on CPU per MB <= {TARGET_CPU_PER_MB_VS_NGINX}x nginx",
                f"{fmt(home and home * 1e3)} vs {fmt(ref and ref * 1e3)} ms/MB = {times(r)}",
            )
        )
        home_r = report.vs_direct(figure, "relay", "mb_per_s")
        ref_r = report.vs_direct(figure, "nginx", "mb_per_s")
        lines.append(
            (
                None if home_r is None or ref_r is None else home_r >= ref_r,
                f"{figure}: MB/s ratio to direct >= nginx's",
                f"homeport {times(home_r)}, nginx {times(ref_r)}",
            )
        )
    loaded = report.value("ws_under_download", "relay", "p50_loaded_over_idle")
    lines.append(
        (
            None if loaded is None else loaded <= TARGET_WS_LOADED_OVER_IDLE,
            f"WS echo p50 under a saturating download <= {TARGET_WS_LOADED_OVER_IDLE:g}x idle",
            f"homeport {times(loaded)} (nginx "
            f"{times(report.value('ws_under_download', 'nginx', 'p50_loaded_over_idle'))})",
        )
    )
    memory = results.get("transfers_memory", "relay")
    if memory is None:
        lines.append((None, "relay RSS flat over all transfers", "- (no transfers)"))
    else:
        gigabytes = memory["bytes"] / 1e9
        for side, name in (("relay", "relay"), ("addon", "add-on")):
            mem = memory[side]
            lines.append(
                (
                    is_flat(mem) if side == "relay" else None,
                    f"{name} RSS over all transfers ({gigabytes:.2f} GB)"
                    + (" flat" if side == "relay" else " (measured, no target)"),
                    f"{mem['rss_growth_over_rounds_mib']:+.1f} MiB first start to last end,"
                    f" worst transfer +{mem['rss_growth_mib']:.1f}"
                    f" (second half +{mem['rss_late_growth_mib']:.1f}),"
                    f" peak {mem['rss_peak_mib']:.1f} MiB",
                )
            )
    width = max(len(text) for _, text, _ in lines)
    out = ["Targets (issue #10): Homeport against direct and the two-nginx reference, same run"]
    for ok, text, figures in lines:
        verdict = "-   " if ok is None else ("PASS" if ok else "MISS")
        if "no target" in text:
            verdict = "    "
        out.append(f"  {verdict}  {text.ljust(width)}  {figures}")
    return "\n".join(out)


def notes(results: Results, plan: Plan, skipped: str | None) -> str:
    errors = [
        f"{r['figure']}/{r['path']}: {r['errors']} errors"
        for r in results.records
        if r.get("errors")
    ]
    capped = [f"{r['figure']}/{r['path']}" for r in results.records if r.get("capped")]
    leftover = [
        f"{r['figure']}/{r['path']}{'#' + str(r['round']) if 'round' in r else ''}"
        f" {r['other_paths_cpu_s']:.2f}"
        for r in results.records
        if r.get("other_paths_cpu_s", 0) > LEFTOVER_CPU_S
    ]
    measured = [r for r in results.records if "other_cpu_share" in r]
    noisy = [r for r in measured if r["other_cpu_share"] > NOISY_SHARE]
    busy = [
        f"{r['figure']}/{r['path']}{'#' + str(r['round']) if 'round' in r else ''}"
        f" {r['other_cpu_share']:.0%}"
        for r in noisy
    ]
    if len(noisy) > 6:  # a busy machine: the range says it, a list would not be read
        shares = sorted(r["other_cpu_share"] for r in noisy)
        busy = [
            f"{len(noisy)} of {len(measured)} measurements, {shares[0]:.0%}-{shares[-1]:.0%}"
            f" (median {shares[len(shares) // 2]:.0%})"
        ]
    paragraphs = [
        "",
        "Direct: client -TLS 1.3-> backend.  Homeport: client -TLS 1.3-> relay -tunnel on TLS"
        " 1.3 (ALPN homeport-tunnel/1)-> add-on -plain HTTP on loopback-> the same backend."
        "  nginx (C): the same three legs"
        " through two nginx processes (worker_processes 1 each, bench/nginx_ref.py): client"
        " -TLS 1.3-> 'relay' nginx -TLS 1.3, keep-alive pool-> 'add-on' nginx -plain HTTP,"
        f" keep-alive-> backend.  All processes on {CPUS} CPUs shared by client, relay,"
        " add-on, nginx and backend.",
        "Added = the path's figure minus direct's.  Relay+add-on CPU = user+sys"
        " (/proc/<pid>/stat) of the processes in the relay's and the add-on's places (nginx:"
        " master and worker of each), per exchange (warm-up excluded for GETs, included in"
        " both count and CPU for WS echo) or per MB moved.",
        f"Transfers: {plan.transfer // MiB} MiB each, {plan.transfer_rounds} round(s) per path"
        " (MB/s: median; RSS: start->end, peak (+worst growth over a transfer/+over its"
        " second half); 'all transfers' = from the first download's start to the last"
        " upload's end).  MB = 10**6 bytes.",
        f"GET = {SMALL_PATH}; WS = 1 KiB text echo on /ws/echo, one message at a time.  WS"
        " under download: the same echo, idle and then beside an endless GET /bytes/… read"
        " flat out on the same path (same tunnel on the relay path; its own connections on"
        " the nginx path).",
        f"'flat' = relay RSS growth <= {TARGET_RSS_GROWTH // MiB} MiB over each transfer and"
        f" over all of them, <= {TARGET_RSS_LATE_GROWTH // MiB} MiB over a transfer's second"
        " half.",
    ]
    text = [""]
    if skipped:
        text.append(f"NO C REFERENCE in this run: {skipped}")
    if errors:
        text.append("ERRORS: " + "; ".join(errors))
    if busy:
        text.append(
            "NOISY: other work used this share of the machine's CPUs during: " + ", ".join(busy)
        )
    if capped:
        text.append("hit the time cap (fewer than planned): " + ", ".join(capped))
    if leftover:
        text.append(
            "LEFTOVER WORK: processes of another path were busy (CPU seconds) during: "
            + ", ".join(leftover)
        )
    paragraphs += text
    return "\n".join(textwrap.fill(p, width=100) if p else p for p in paragraphs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run")
    parser.add_argument(
        "--only", action="append", choices=GROUPS, help="run only these workloads (repeatable)"
    )
    parser.add_argument(
        "--path",
        action="append",
        choices=PATHS,
        help="measure only these proxied paths beside direct (repeatable; default: both;"
        " relay = Homeport, nginx = the two-nginx C reference)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        type=Path,
        help="record the relay and the add-on with py-spy into DIR and print hot spots",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        help="log level of the relay and the add-on (default info, as shipped; their logs"
        " go to files in the temporary work dir)",
    )
    parser.add_argument(
        "--flood",
        nargs="?",
        const="8M",
        metavar="BANDWIDTH",
        help="run only the flood workload (bench/flood.py): another home's latency while one"
        " home floods, without and with --tenant-bandwidth BANDWIDTH (default 8M)",
    )
    args = parser.parse_args()
    if args.flood is not None:
        return run_flood_main(args)
    plan = QUICK if args.quick else FULL
    groups = set(args.only or GROUPS)
    paths = tuple(p for p in PATHS if p in (args.path or PATHS))
    nginx = nginx_ref.find_nginx() if "nginx" in paths else None
    skipped = None
    if "nginx" in paths and nginx is None:
        skipped = nginx_ref.INSTALL_HINT
        if args.path:  # asked for by name: nothing to measure it against
            print(f"bench/run.py: {skipped}", file=sys.stderr)
            return 2
        print(f"bench/run.py: skipping the nginx column: {skipped}", file=sys.stderr)
        paths = tuple(p for p in paths if p != "nginx")
    results = uvloop.run(run_benchmark(plan, groups, paths, nginx, args.profile, args.log_level))
    print()
    print(table(results))
    print()
    print(targets(results))
    print(notes(results, plan, skipped))
    if args.profile is not None:
        for name in ("relay", "addon"):
            path = args.profile / f"{name}.txt"
            if path.exists():
                print()
                print(summarise_profile(path))
    return 0


def run_flood_main(args: argparse.Namespace) -> int:
    from flood import flood_table, run_flood

    async def go() -> list[dict[str, Any]]:
        with tempfile.TemporaryDirectory(prefix="homeport-flood-") as tmp:
            return await run_flood(
                Path(tmp), quick=args.quick, bandwidth=args.flood, log_level=args.log_level
            )

    records = uvloop.run(go())
    print()
    print(flood_table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
