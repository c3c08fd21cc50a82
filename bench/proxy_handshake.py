"""Relay CPU per TLS handshake with and without ``--proxy-protocol-from`` (PROXY v2 first).

Starts ``homeport relay`` twice on loopback (SQLite, development CA), once plain and
once expecting a PROXY v2 header from 127.0.0.1, and runs the same number of TLS
handshakes to the account host against each (with the header when it is on),
IN_FLIGHT at a time; prints handshakes per second and the relay's CPU per
handshake (from ``/proc/<pid>/stat``). The difference is the header reader and
``loop.start_tls`` against TLS in ``create_server``.

    PYTHONPATH=src .venv/bin/python bench/proxy_handshake.py --handshakes 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

from homeport.tls.proxy_header import SIGNATURE

HOMEPORT = Path(sys.executable).with_name("homeport")
IN_FLIGHT = 16
TICKS = os.sysconf("SC_CLK_TCK")


def header() -> bytes:
    body = bytes([198, 51, 100, 9, 127, 0, 0, 1]) + (40000).to_bytes(2, "big") + b"\x01\xbb"
    return SIGNATURE + b"\x21\x11" + len(body).to_bytes(2, "big") + body


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def one(port: int, context: ssl.SSLContext, prefix: bytes) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(prefix)
    sock.setblocking(False)
    _r, writer = await asyncio.open_connection(
        sock=sock, ssl=context, server_hostname="homeport.localhost"
    )
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


async def run(handshakes: int, proxy: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        extra = ["--proxy-protocol-from", "127.0.0.1/32"] if proxy else []
        out = Path(tmp) / "out"
        with out.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                str(HOMEPORT), "--log-level", "error", "relay", "--data-dir", tmp,
                "--listen", f"127.0.0.1:{port}", *extra, stdout=sink, stderr=sink,
            )  # fmt: skip
        try:
            async with asyncio.timeout(60):
                while b"Relay listening" not in out.read_bytes():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            ca = next(Path(tmp).rglob("*ca*.pem"))  # noqa: ASYNC240
            context = ssl.create_default_context(cafile=str(ca))
            prefix = header() if proxy else b""
            for _ in range(50):  # warm up
                await one(port, context, prefix)
            before, started = cpu_seconds(proc.pid), time.monotonic()
            gate = asyncio.Semaphore(IN_FLIGHT)

            async def limited() -> None:
                async with gate:
                    await one(port, context, prefix)

            await asyncio.gather(*(limited() for _ in range(handshakes)))
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(proc.pid) - before
            return handshakes / elapsed, cpu * 1000 / handshakes
        finally:
            proc.terminate()
            await proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--handshakes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for _ in range(args.rounds):
        for proxy in (False, True):
            rate, cpu_ms = await run(args.handshakes, proxy)
            label = "PROXY v2 + TLS" if proxy else "TLS only      "
            print(f"{label}: {rate:7.1f} handshakes/s, relay CPU {cpu_ms:.3f} ms per handshake")


if __name__ == "__main__":
    asyncio.run(main())
