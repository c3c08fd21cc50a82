"""The floor of the relay's shape in Python: two byte pumps on uvloop beside Homeport and nginx.

Issue #10 asks whether the per-exchange targets (relay + add-on CPU per
request and per WebSocket round trip within 2.5x of two nginx processes) are
within reach of a Python relay.  This benchmark measures the cheapest Python
program of the same shape, so the answer is a measurement, not an opinion:

* ``--serve relay``: terminates the client's TLS 1.3 (the same
  ``server_context`` as the relay) and pumps the bytes, unparsed, into one
  verified TLS 1.3 connection per client connection to the next pump;
* ``--serve addon``: terminates that TLS and pumps the bytes into a plain
  connection to the backend.

Each pump is one ``asyncio.Protocol`` per direction on uvloop, ``write`` on
every ``data_received``, flow control by ``pause_reading``; no HTTP parsing,
no multiplexing, no gate, no header hygiene, no task per exchange.  Any relay
written in Python on uvloop's TLS does at least this much work per message:
the same wake-ups, the same TLS records, the same system calls as nginx.

Without ``--serve`` it runs the comparison: the backend, Homeport's relay and
add-on, the two-nginx reference (``bench/run.py``'s stack), the pump pair and
the other Python pairs (``PAIRS``: the pumps with the relay's parse, and the
two of ``bench/lean_path.py``), and measures GET c=1, GET c=32 and the
WebSocket echo (on every path but the lean pair, which carries GETs only) in
the same run, with the relay-side + add-on-side CPU per exchange of each
beside nginx's.  About four minutes; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httptools
import uvloop

import lean_path
import nginx_ref
import run as bench
from homeport.memory import configure_allocator
from homeport.tls.context import server_context


class Pump(asyncio.Protocol):
    """One side of a forwarded connection: what it reads, its peer writes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Pump | None = None
        self.pending: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's own transport classes

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def eof_received(self) -> bool | None:
        return None  # close this side; connection_lost closes the peer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class Downstream(Pump):
    """The accepted side: opens its upstream connection, then both pump.

    ``work``: called once for every read from the client (one per request,
    with one request at a time on each connection): ``bench/footprint.py``.
    """

    work: Callable[[], None] | None = None

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        super().__init__()
        self.target = (host, port, context)

    def data_received(self, data: bytes) -> None:
        if self.work is not None:
            self.work()
        super().data_received(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        host, port, context = self.target
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(
                Pump, host, port, ssl=context, server_hostname="localhost" if context else None
            )
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        if self.closed:
            if upstream.transport is not None:
                upstream.transport.close()
            return
        upstream.peer, self.peer = self, upstream
        assert upstream.transport is not None
        if self.pending:
            upstream.transport.writelines(self.pending)
            self.pending.clear()


class ParsedDownstream(lean_path.RequestCollector, Downstream):
    """The relay's pump, parsing every request with llhttp as a gate must.

    What the request's parse alone adds to the floor: the URL and every header
    collected as bytes, as Homeport's relay collects them, then the bytes
    pumped on unchanged.  After a WebSocket upgrade request the connection is
    the WebSocket's, and its bytes are pumped unparsed, as a relay with a
    tunnel connection of its own per browser connection could pump them.
    """

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        super().__init__(host, port, context)
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.reset_request()

    def data_received(self, data: bytes) -> None:
        if self.parser is not None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self.parser = None  # bytes after the upgrade request: the WebSocket's
            except httptools.HttpParserError:
                if self.transport is not None:
                    self.transport.close()
                return
        super().data_received(data)

    def on_message_complete(self) -> None:
        self.reset_request()


async def serve(args: argparse.Namespace) -> None:
    # glibc's mmap threshold fixed as Homeport's processes fix it: left dynamic,
    # whether uvloop's 256 KiB read buffers are mapped and unmapped on every read
    # depends on what the process happened to free first, and the floor's CPU
    # per request moved between 49 and 89 µs from one start to the next.
    configure_allocator()
    if args.work:
        import footprint  # only here: footprint.py imports this module

        kind, _, size = args.work.partition(":")
        Downstream.work = staticmethod(footprint.make_work(kind, int(size)))
    loop = asyncio.get_running_loop()
    tls_in = server_context(Path(args.cert), Path(args.key))
    tls_out: ssl.SSLContext | None = None
    if args.serve in ("relay", "parsed-relay"):
        tls_out = ssl.create_default_context(cafile=args.ca)
        tls_out.minimum_version = ssl.TLSVersion.TLSv1_3
    server = await loop.create_server(
        lambda: (ParsedDownstream if args.serve == "parsed-relay" else Downstream)(
            "127.0.0.1", args.upstream_port, tls_out
        ),
        "127.0.0.1",
        args.port,
        ssl=tls_in,
    )
    await lean_path.serve_until_signalled(server)


# ------------------------------------------------------------- the comparison

HERE = Path(__file__).resolve().parent
bench.SIDES["floor"] = (("floor_relay",), ("floor_addon",))
bench.TITLES["floor"] = "python floor"
bench.SIDES["lean"] = (("lean_relay",), ("lean_addon",))
bench.TITLES["lean"] = "lean protocol"
bench.SIDES["parsed"] = (("parsed_relay",), ("parsed_addon",))
bench.TITLES["parsed"] = "floor+parse"
bench.SIDES["raw"] = (("raw_relay",), ("raw_addon",))
bench.TITLES["raw"] = "raw heads"
#: The Python pairs beside Homeport and nginx, in their columns' order.
PAIRS = ("floor", "parsed", "lean", "raw")


async def start_pumps(
    workdir: Path,
    backend_plain_port: int,
    cert: Path,
    key: Path,
    ca: Path,
    kind: str = "floor",
    *,
    work: str = "",
) -> tuple[list[bench.Proc], str]:
    """The pair of processes of ``kind``: ``lean`` and ``raw`` (lean_path.py), ``parsed``
    (the relay pump parses), else byte pumps; ``work``: extra work per request in the
    relay pump (``bench/footprint.py``)."""
    relay_port, addon_port = bench.free_port(), bench.free_port()
    common = [sys.executable, str(HERE / "shape_floor.py"), f"--cert={cert}", f"--key={key}"]
    serve = {
        "parsed": ("parsed-relay", "addon"),
        "lean": ("lean-relay", "lean-addon"),
        "raw": ("raw-relay", "raw-addon"),
    }.get(kind, ("relay", "addon"))
    addon = bench.Proc(
        f"{kind}_addon",
        [
            *common,
            f"--serve={serve[1]}",
            f"--port={addon_port}",
            f"--upstream-port={backend_plain_port}",
        ],
        workdir,
    )
    # The lean relay dials its tunnel when it starts: the add-on must listen first.
    await bench.wait_for_output(addon, r"ready", 30)
    relay = bench.Proc(
        f"{kind}_relay",
        [
            *common,
            f"--serve={serve[0]}",
            f"--port={relay_port}",
            f"--upstream-port={addon_port}",
            f"--ca={ca}",
            *([f"--work={work}"] if work else []),
        ],
        workdir,
    )
    await bench.wait_for_output(relay, r"ready", 30)
    return [relay, addon], f"https://localhost:{relay_port}"


def backend_tls(stack: bench.Stack) -> tuple[Path, Path, int]:
    """The backend's certificate and key (the pumps serve the same) and its plain port."""
    tls_dir = stack.workdir / "backend-tls"
    plain_port = int(stack.backend_plain_url.rsplit(":", 1)[1])
    return tls_dir / "server.pem", tls_dir / "server.key", plain_port


@contextlib.asynccontextmanager
async def started_paths(
    nginx: str | None,
) -> AsyncIterator[tuple[dict[str, tuple[Any, str]], dict[str, int]]]:
    """Every path of the comparison, started: a client session and origin per path, and
    the pid of every process (Homeport's, the Python pairs', nginx's, the backend's)."""
    with tempfile.TemporaryDirectory(prefix="homeport-floor-") as tmp:
        workdir = Path(tmp)
        stack = await bench.start_stack(workdir, "warning", nginx=nginx)
        pumps: list[bench.Proc] = []
        sessions: dict[str, tuple[Any, str]] = {}
        try:
            token = await bench.sign_in(stack)
            cert, key, plain_port = backend_tls(stack)
            origins: dict[str, str] = {}
            for kind in PAIRS:
                procs, origins[kind] = await start_pumps(
                    workdir, plain_port, cert, key, stack.direct_ca, kind
                )
                pumps += procs
            assert stack.relay is not None
            assert stack.addon is not None
            pids = {
                "backend": stack.backend.pid,
                "client": os.getpid(),
                "relay": stack.relay.pid,
                "addon": stack.addon.pid,
                **{p.name: p.pid for p in pumps},
            }
            sessions = {
                "direct": (bench.client_session(stack.direct_ca), stack.direct_origin),
                "relay": (bench.client_session(stack.relay_ca, cookie=token), stack.tenant_origin),
                **{k: (bench.client_session(stack.direct_ca), o) for k, o in origins.items()},
            }
            if stack.nginx_relay is not None and stack.nginx_addon is not None:
                pids |= {"nginx_relay": stack.nginx_relay.pid, "nginx_addon": stack.nginx_addon.pid}
                pids |= stack.nginx_workers
                sessions["nginx"] = (bench.client_session(stack.direct_ca), stack.nginx_origin)
            yield sessions, pids
        finally:
            for session, _ in sessions.values():
                await session.close()
            for proc in [*pumps, *stack.procs]:
                proc.stop()


async def compare(plan: bench.Plan, nginx: str | None) -> bench.Results:
    results = bench.Results()
    async with started_paths(nginx) as (sessions, pids):
        watch = bench.Watch(pids, {}, bench.Sampler({}))
        await bench.run_workloads(plan, {"get"}, results, sessions, watch)
        # The lean pair carries GETs only (the raw pair and the parsing pump
        # pass a WebSocket's bytes through unparsed).
        with_ws = {p: value for p, value in sessions.items() if p != "lean"}
        await bench.run_workloads(plan, {"ws"}, results, with_ws, watch)
    return results


async def echo_rounds(rounds: int, nginx: str | None) -> str:
    """``--ws-rounds``: the WebSocket echo's p50 on every path that carries it, in rounds.

    Each round measures every path once (3,000 round trips after 200 of
    warm-up), starting one path further along the list each round, so that a
    drift of the machine falls on all of them alike; each path's added p50 is
    read against direct's in the same round.  Latency only: no CPU figures.
    """
    added: dict[str, list[float]] = {}
    async with started_paths(nginx) as (sessions, _):
        paths = [p for p in sessions if p != "lean"]
        others = [p for p in paths if p != "direct"]
        for number in range(rounds):
            turn = number % len(paths)
            p50 = {}
            for path in paths[turn:] + paths[:turn]:
                session, origin = sessions[path]
                url = origin.replace("https://", "wss://") + "/ws/echo"
                record = await bench.ws_echo(session, url, 3_000, 30.0, 200)
                if record["errors"]:
                    raise RuntimeError(f"{path}: {record['errors']} echoes came back wrong")
                p50[path] = record["p50_ms"]
            for path in others:
                added.setdefault(path, []).append(p50[path] - p50["direct"])
            cells = "  ".join(
                f"{bench.TITLES.get(p, p)} {p50[p] - p50['direct']:+.3f}" for p in others
            )
            print(f"round {number + 1}: direct {p50['direct']:.3f} ms; added: {cells}", flush=True)
    lines = ["WS echo p50 added, ms: median (min … max) over the rounds"]
    for path, values in added.items():
        lines.append(
            f"  {bench.TITLES.get(path, path):<14} {statistics.median(values):+.3f} "
            f"({min(values):+.3f} … {max(values):+.3f})"
        )
    return "\n".join(lines)


def report(results: bench.Results) -> str:
    order = ("direct", "relay", *PAIRS, "nginx")
    paths = [p for p in order if results.get("get_c32", p)]
    r = bench.Report(results)
    lines = [
        "figure".ljust(44) + "".join(bench.TITLES.get(p, p).rjust(14) for p in paths),
    ]

    def line(label: str, values: dict[str, float | None], digits: int) -> None:
        cells = "".join(bench.fmt(values.get(p), digits).rjust(14) for p in paths)
        lines.append(label.ljust(44) + cells)

    for figure, name in (("get_c1", "GET c=1"), ("get_c32", "GET c=32")):
        line(f"{name} p50 ms added", {p: r.added(figure, p) for p in paths if p != "direct"}, 3)
        line(f"{name} requests/s", {p: r.value(figure, p, "rps") for p in paths}, 0)
    key_req = "relay_addon_cpu_us_per_request"
    key_ws = "relay_addon_cpu_us_per_round_trip"
    per_request = {p: r.value("get_c32", p, key_req) for p in paths}
    per_request_c1 = {p: r.value("get_c1", p, key_req) for p in paths}
    line("GET c=1 relay+add-on CPU us/request", per_request_c1, 0)
    line("GET c=32 relay+add-on CPU us/request", per_request, 0)
    line("WS echo p50 ms added", {p: r.added("ws_echo", p) for p in paths if p != "direct"}, 3)
    per_round_trip = {p: r.value("ws_echo", p, key_ws) for p in paths}
    line("WS echo relay+add-on CPU us/round trip", per_round_trip, 0)
    nginx_req, nginx_ws = r.value("get_c32", "nginx", key_req), r.value("ws_echo", "nginx", key_ws)
    for path in ("relay", *PAIRS):
        per_req = bench.ratio(r.value("get_c32", path, key_req), nginx_req)
        per_ws = bench.ratio(r.value("ws_echo", path, key_ws), nginx_ws)
        lines.append(
            f"{bench.TITLES.get(path, path)} / nginx: CPU per request {bench.fmt(per_req)}x, "
            f"per WebSocket round trip {bench.fmt(per_ws)}x (target of issue #10: <= 2.5x)"
        )
    noisy = max(rec.get("other_cpu_share", 0) for rec in results.records)
    lines.append(f"other load on the machine, worst measurement: {noisy:.0%} of its CPUs")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--serve",
        choices=(
            "relay",
            "addon",
            "parsed-relay",
            "lean-relay",
            "lean-addon",
            "raw-relay",
            "raw-addon",
        ),
        help="run one pump or one lean server (internal)",
    )
    parser.add_argument("--port", type=int)
    parser.add_argument("--upstream-port", type=int)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--ca")
    parser.add_argument("--work", default="", help="KIND:SIZE per request (footprint.py)")
    parser.add_argument("--quick", action="store_true", help="a smoke run (about 40 s)")
    parser.add_argument(
        "--ws-rounds",
        type=int,
        default=0,
        metavar="N",
        help="only the WebSocket echo's latency, N interleaved rounds on every path carrying it",
    )
    args = parser.parse_args()
    if args.serve:
        uvloop.run(lean_path.serve(args) if args.serve.startswith(("lean", "raw")) else serve(args))
        return 0
    nginx = nginx_ref.find_nginx()
    if nginx is None:
        print(f"bench/shape_floor.py: no nginx column: {nginx_ref.INSTALL_HINT}", file=sys.stderr)
    if args.ws_rounds > 0:
        print(uvloop.run(echo_rounds(args.ws_rounds, nginx)))
        return 0
    results = uvloop.run(compare(bench.QUICK if args.quick else bench.FULL, nginx))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
