"""Capacity of one relay node: many idle tunnels, their memory, handshake rate and idle CPU.

Run: ``PYTHONPATH=$PWD/src .venv/bin/python bench/idle.py`` (10,000 tunnels,
about 5 minutes on 2 cores) or ``--tunnels 1000 --idle 20`` for a smoke run.
See ``bench/README.md`` and ``docs/performance.md``.

What runs, all on loopback:

* the relay: ``homeport relay`` (TLS from its dev CA, SQLite in a temporary
  data dir, ``--log-level warning``), nothing else in it;
* ``--tunnels`` homes, each with its own Ed25519 key, linked to one account
  through the accounts service (the code path ``homeport admin link`` takes);
* ``--workers`` client processes (this script with ``--worker``), each holding
  its share of the tunnels with the add-on's own parts: the raw transport
  (``homeport-tunnel/1`` on TLS, ``tunnel/raw.py``), the handshake
  (``protocol/handshake.py``) and a :class:`~homeport.tunnel.session.TunnelSession`
  that answers and sends keepalive pings like the add-on (every 15 s).

Measured on the relay process alone (``/proc/<pid>``): its RSS before the
first tunnel and with all of them up (per tunnel: the difference over the
count, keepalives included, against the 64 KiB target of issue #11); the
handshake rate while they come up and the relay CPU per handshake; the
relay's CPU while every tunnel idles for ``--idle`` seconds (keepalives in
both directions); and that no tunnel dropped.  Every loop is bounded by a
count and a time cap.  Prints JSON lines, then a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from run import (  # the same process handling and sampling as the main bench
    ACCOUNT_HOST,
    CPUS,
    EMAIL,
    PASSWORD,
    TENANT_DOMAIN,
    KiB,
    MiB,
    Proc,
    cli,
    emit,
    free_port,
    proc_cpu_seconds,
    proc_rss,
    system_busy_seconds,
    wait_for_output,
)

HERE = Path(__file__).resolve().parent
TARGET_BYTES_PER_TUNNEL = 64 * KiB  # issue #11: 10,000 idle tunnels at <= 64 KiB each
IN_FLIGHT = 64  # handshakes one worker runs at once
CONNECT_TIMEOUT = 30.0
RAMP_CAP = 600.0  # seconds all tunnels may take to come up


# ------------------------------------------------------------------ the client side


async def hold_tunnels(args: argparse.Namespace) -> int:
    """Worker: open a tunnel per key, keep them, report; stop when stdin closes."""
    from homeport.keys import parse_pinned_keys
    from homeport.protocol import Role, TunnelConnection
    from homeport.protocol.handshake import AddonHandshake, Welcome
    from homeport.tls.context import TUNNEL_ALPN, client_context, peer_certificate_sha256
    from homeport.tunnel.raw import RawPipe
    from homeport.tunnel.session import TunnelSession

    key_text = Path(args.keys).read_text()  # noqa: ASYNC240 - once, before any socket
    keys = [Ed25519PrivateKey.from_private_bytes(bytes.fromhex(h)) for h in key_text.split()]
    pinned = tuple(parse_pinned_keys(args.pubkey))
    context = client_context(Path(args.ca), alpn=[TUNNEL_ALPN])
    loop = asyncio.get_running_loop()
    sessions: list[TunnelSession] = []
    runners: list[asyncio.Task[None]] = []
    failures: list[str] = []
    gate = asyncio.Semaphore(IN_FLIGHT)

    def refuse(stream: Any) -> None:  # an idle home: nobody opens a stream
        stream.reset()

    async def open_one(key: Ed25519PrivateKey) -> None:
        async with gate:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    transport, raw = await loop.create_connection(
                        RawPipe, "127.0.0.1", args.port, ssl=context, server_hostname=ACCOUNT_HOST
                    )
                    ssl_object = transport.get_extra_info("ssl_object")
                    assert ssl_object is not None
                    handshake = AddonHandshake(
                        ACCOUNT_HOST, pinned, key, peer_certificate_sha256(ssl_object)
                    )
                    raw.send_text(handshake.hello())
                    raw.send_text(handshake.receive_server_proof(await raw.receive_text()))
                    result = handshake.receive_result(await raw.receive_text())
            except Exception as exc:  # counted and reported, never hidden
                failures.append(f"{type(exc).__name__}: {exc}")
                return
            if not isinstance(result, Welcome):
                failures.append(f"not welcomed: {result!r}")
                transport.abort()
                return
            session = TunnelSession(
                raw,
                TunnelConnection(Role.ADDON),
                on_open=refuse,
                ping_interval=15.0,
                ping_timeout=10.0,
                name="idle",
            )
            sessions.append(session)
            runners.append(asyncio.create_task(session.run()))

    started = time.monotonic()
    tasks = [asyncio.create_task(open_one(key)) for key in keys]
    for done, finished in enumerate(asyncio.as_completed(tasks), start=1):
        await finished
        if done % 500 == 0 or done == len(keys):
            print(json.dumps({"up": len(sessions), "failed": len(failures)}), flush=True)
    print(
        json.dumps(
            {
                "ready": len(sessions),
                "failed": len(failures),
                "seconds": round(time.monotonic() - started, 2),
                "errors": sorted(set(failures))[:5],
            }
        ),
        flush=True,
    )
    # Hold them until the parent closes our stdin, then say how many are still up.
    await loop.run_in_executor(None, sys.stdin.read)
    dropped = sum(1 for s in sessions if s.closed.is_set() or s.ended)
    print(json.dumps({"dropped": dropped, "held": len(sessions)}), flush=True)
    for session in sessions:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.close("bench over"), 1)
    for runner in runners:
        runner.cancel()
    return 0


# ------------------------------------------------------------------ the bench


async def link_homes(data_dir: Path, count: int) -> list[Ed25519PrivateKey]:
    """``count`` homes linked to the bench account, as ``homeport admin link`` does it."""
    from homeport.accounts.db import Database, default_sqlite_url
    from homeport.accounts.service import Accounts
    from homeport.keys import public_key_text

    database = Database(default_sqlite_url(data_dir))
    await database.connect()
    keys = []
    try:
        accounts = Accounts(database)
        for index in range(count):
            key = Ed25519PrivateKey.generate()
            code, _expires = await accounts.create_link_code(public_key_text(key.public_key()))
            await accounts.link_instance(code, EMAIL, f"Home {index}")
            keys.append(key)
    finally:
        await database.close()
    return keys


class Worker:
    def __init__(self, index: int, keys: list[Ed25519PrivateKey], ctx: dict[str, Any]) -> None:
        key_file = ctx["workdir"] / f"keys-{index}.txt"
        key_file.write_text("\n".join(k.private_bytes_raw().hex() for k in keys), encoding="ascii")
        key_file.chmod(0o600)
        self.out = ctx["workdir"] / f"worker-{index}.out"
        self.popen = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "idle.py"),
                "--worker",
                f"--keys={key_file}",
                f"--port={ctx['port']}",
                f"--ca={ctx['ca']}",
                f"--pubkey={ctx['pubkey']}",
            ],
            stdin=subprocess.PIPE,
            stdout=open(self.out, "wb"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        )

    def records(self) -> list[dict[str, Any]]:
        found = []
        for line in self.out.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    found.append(record)
        return found

    def last(self, key: str) -> dict[str, Any] | None:
        matching = [r for r in self.records() if key in r]
        return matching[-1] if matching else None

    def stop(self) -> dict[str, Any] | None:
        assert self.popen.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.popen.stdin.close()
        try:
            self.popen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.popen.kill()
        return self.last("dropped")


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="homeport-idle-"))
    data_dir = workdir / "relay"
    port = free_port()
    relay_opts = [
        f"--data-dir={data_dir}",
        f"--account-host={ACCOUNT_HOST}",
        f"--tenant-domain={TENANT_DOMAIN}",
    ]
    await cli("admin", "user", "create", EMAIL, *relay_opts, stdin=PASSWORD.encode() + b"\n")
    started = time.monotonic()
    keys = await link_homes(data_dir, args.tunnels)
    emit({"linked": len(keys), "seconds": round(time.monotonic() - started, 1)})
    pubkey = (await cli("keys", "show", *relay_opts)).strip()
    relay = Proc(
        "relay",
        [
            sys.executable,
            "-m",
            "homeport.cli",
            "--log-level=warning",
            "relay",
            f"--listen=127.0.0.1:{port}",
            *relay_opts,
        ],
        workdir,
    )
    workers: list[Worker] = []
    try:
        await wait_for_output(relay, r"Relay listening", 60)
        await asyncio.sleep(2)  # past start-up work (migrations, first trim)
        base_rss = proc_rss(relay.pid)
        cpu0, busy0, t0 = proc_cpu_seconds(relay.pid), system_busy_seconds(), time.monotonic()
        ctx = {"workdir": workdir, "port": port, "ca": data_dir / "tls" / "dev-ca.pem"}
        ctx["pubkey"] = pubkey
        share = -(-len(keys) // args.workers)
        workers = [
            Worker(i, keys[i * share : (i + 1) * share], ctx)
            for i in range(args.workers)
            if keys[i * share : (i + 1) * share]
        ]
        async with asyncio.timeout(RAMP_CAP):
            while not all(w.last("ready") for w in workers):
                relay.check_alive()
                for w in workers:
                    if w.popen.poll() is not None:
                        raise RuntimeError(f"worker exited: {w.out.read_text()[-2000:]}")
                await asyncio.sleep(0.2)
        ramp = time.monotonic() - t0
        ramp_cpu = proc_cpu_seconds(relay.pid) - cpu0
        readies = [w.last("ready") or {} for w in workers]
        up = sum(r.get("ready", 0) for r in readies)
        failed = sum(r.get("failed", 0) for r in readies)
        errors = sorted({e for r in readies for e in r.get("errors", [])})
        emit({"up": up, "failed": failed, "ramp_s": round(ramp, 2), "errors": errors})
        # Settle (the trimmer returns freed handshake memory), then idle and watch.
        await asyncio.sleep(args.settle)
        rss_samples = []
        cpu1, busy1, t1 = proc_cpu_seconds(relay.pid), system_busy_seconds(), time.monotonic()
        deadline = t1 + args.idle
        while time.monotonic() < deadline:
            relay.check_alive()
            rss_samples.append(proc_rss(relay.pid))
            await asyncio.sleep(1.0)
        idle_s = time.monotonic() - t1
        idle_cpu = proc_cpu_seconds(relay.pid) - cpu1
        other = (system_busy_seconds() - busy1) - idle_cpu
        held_rss = max(rss_samples)
        ends = [w.stop() or {} for w in workers]
        workers = []
        dropped = sum(e.get("dropped", 0) for e in ends)
        result = {
            "tunnels": up,
            "failed": failed,
            "dropped": dropped,
            "ramp_seconds": round(ramp, 2),
            "handshakes_per_second": round(up / ramp, 1) if ramp else None,
            "relay_cpu_ms_per_handshake": round(ramp_cpu * 1000 / up, 2) if up else None,
            "relay_rss_base_mib": round(base_rss / MiB, 1),
            "relay_rss_held_mib": round(held_rss / MiB, 1),
            "relay_rss_end_of_idle_mib": round(rss_samples[-1] / MiB, 1),
            "bytes_per_tunnel": round((held_rss - base_rss) / up) if up else None,
            "idle_seconds": round(idle_s, 1),
            "relay_idle_cpu_share_of_one_core": round(idle_cpu / idle_s, 4),
            "relay_idle_cpu_us_per_tunnel_second": round(idle_cpu * 1e6 / idle_s / up, 2)
            if up
            else None,
            "other_cpu_share": round(max(0.0, other) / (idle_s * CPUS), 3),
            "busy_during_ramp_share": round(
                max(0.0, (system_busy_seconds() - busy0)) / ((time.monotonic() - t0) * CPUS), 3
            ),
        }
        emit(result)
        return result
    finally:
        for w in workers:
            w.stop()
        relay.stop()


def table(r: dict[str, Any]) -> str:
    per = r["bytes_per_tunnel"]
    verdict = "PASS" if per is not None and per <= TARGET_BYTES_PER_TUNNEL else "MISS"
    rows = [
        ("idle tunnels held", f"{r['tunnels']:,} (failed {r['failed']}, dropped {r['dropped']})"),
        ("came up in", f"{r['ramp_seconds']} s = {r['handshakes_per_second']} handshakes/s"),
        ("relay CPU per handshake", f"{r['relay_cpu_ms_per_handshake']} ms"),
        (
            "relay RSS",
            f"{r['relay_rss_base_mib']} MiB empty -> {r['relay_rss_held_mib']} MiB held",
        ),
        ("relay memory per tunnel", f"{per / KiB:.1f} KiB (target <= 64 KiB: {verdict})"),
        (
            "relay CPU while idle",
            f"{r['relay_idle_cpu_share_of_one_core'] * 100:.2f} % of one core over "
            f"{r['idle_seconds']} s ({r['relay_idle_cpu_us_per_tunnel_second']} µs per tunnel "
            "per second, keepalives both ways)",
        ),
        ("other load on the machine", f"{r['other_cpu_share'] * 100:.0f} % of its CPUs"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tunnels", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds all tunnels idle")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds before idling")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keys", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    parser.add_argument("--pubkey", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return uvloop.run(hold_tunnels(args))
    if not 1 <= args.tunnels <= 50_000 or not 1 <= args.workers <= 16:
        parser.error("--tunnels must be 1..50000 and --workers 1..16")
    result = uvloop.run(bench(args))
    print()
    print(table(result))
    return 0 if result["failed"] == 0 and result["dropped"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
