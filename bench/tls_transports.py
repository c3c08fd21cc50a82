"""TLS through uvloop's memory BIOs against TLS on the socket itself: CPU per MB, each side.

Issue #10 asks for relay + add-on CPU per MB within 1.2x of two nginx
processes; Homeport is at 1.4-1.5x, and what is left is copies
(``docs/performance.md``): uvloop's TLS transport runs OpenSSL on memory
BIOs, the only kind Python's ``ssl`` offers besides a socket, so every byte
is copied into the incoming BIO and out of the outgoing one beside the
kernel's and OpenSSL's own copies, where nginx's OpenSSL reads and writes
the socket.  This measures what a transport with TLS on the socket would
save, before anyone builds one:

* ``bio``: ``loop.create_server`` / ``create_connection`` with ``ssl=`` on
  uvloop, as Homeport's relay and add-on use it (a buffered protocol reads
  into one buffer, the sender writes 256 KiB pieces and honours
  ``pause_writing``);
* ``socket``: a non-blocking ``ssl.SSLSocket`` driven by ``add_reader`` /
  ``add_writer`` on the same loop: ``recv_into`` one buffer until
  ``SSLWantReadError``, ``send`` the same 256 KiB piece until it is taken.

One sender (this process) and one receiver (a child process) per transfer,
TLS 1.3 with the relay's own server context and a P-256 certificate from a
throw-away dev CA, on 127.0.0.1; ``--mib`` MiB per transfer, the two modes
interleaved ``--rounds`` times.  Each side's CPU is its own ``getrusage``
over the transfer.  About half a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from homeport.tls.context import client_context, server_context
from homeport.tls.devca import create_independent_ca

PIECE = 256 * 1024
MB = 1_000_000
MODES = ("bio", "socket")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------ receiver


class BioReceiver(asyncio.BufferedProtocol):
    def __init__(self, done: asyncio.Future[int]) -> None:
        self.buffer = memoryview(bytearray(PIECE))
        self.received = 0
        self.done = done

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.received)


async def wait_io(loop: asyncio.AbstractEventLoop, sock: socket.socket, write: bool) -> None:
    ready = loop.create_future()
    fd = sock.fileno()
    (loop.add_writer if write else loop.add_reader)(fd, ready.set_result, None)
    try:
        await ready
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def handshake(loop: asyncio.AbstractEventLoop, tls: ssl.SSLSocket) -> None:
    while True:
        try:
            tls.do_handshake()
            return
        except ssl.SSLWantReadError:
            await wait_io(loop, tls, write=False)
        except ssl.SSLWantWriteError:
            await wait_io(loop, tls, write=True)


async def receive_on_socket(tls: ssl.SSLSocket) -> int:
    loop = asyncio.get_running_loop()
    await handshake(loop, tls)
    buffer = memoryview(bytearray(PIECE))
    received = 0
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        nonlocal received
        try:
            while True:
                n = tls.recv_into(buffer)
                if n == 0:  # close_notify or EOF
                    loop.remove_reader(tls.fileno())
                    done.set_result(None)
                    return
                received += n
        except ssl.SSLWantReadError:
            return
        except (ssl.SSLEOFError, ConnectionError):
            loop.remove_reader(tls.fileno())
            done.set_result(None)

    loop.add_reader(tls.fileno(), readable)
    await done
    return received


async def serve(mode: str, context: ssl.SSLContext) -> None:
    """Accept one connection, read it to the end, print bytes and CPU seconds."""
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    print(listener.getsockname()[1], flush=True)
    raw, _ = await loop.sock_accept(listener)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    started = cpu_seconds()
    if mode == "bio":
        done: asyncio.Future[int] = loop.create_future()
        await loop.connect_accepted_socket(lambda: BioReceiver(done), raw, ssl=context)
        received = await done
    else:
        tls = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        received = await receive_on_socket(tls)
        tls.close()
    print(json.dumps({"bytes": received, "cpu_s": cpu_seconds() - started}), flush=True)


# -------------------------------------------------------------------- sender


class BioSender(asyncio.Protocol):
    def __init__(self) -> None:
        self.room = asyncio.Event()
        self.room.set()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pause_writing(self) -> None:
        self.room.clear()

    def resume_writing(self) -> None:
        self.room.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def send(mode: str, port: int, context: ssl.SSLContext, total: int) -> float:
    """Send ``total`` bytes; the sender's CPU seconds."""
    loop = asyncio.get_running_loop()
    piece = memoryview(bytes(range(256)) * (PIECE // 256))
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    raw.setblocking(False)
    started = cpu_seconds()
    if mode == "bio":
        transport, protocol = await loop.create_connection(
            BioSender, sock=raw, ssl=context, server_hostname="localhost"
        )
        sent = 0
        while sent < total:
            await protocol.room.wait()
            transport.write(piece)
            sent += len(piece)
        transport.close()
        await protocol.closed
    else:
        tls = context.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
        await handshake(loop, tls)
        sent = 0
        while sent < total:
            try:
                sent += tls.send(piece)
            except ssl.SSLWantWriteError:  # OpenSSL keeps its place: the same piece again
                await wait_io(loop, tls, write=True)
        tls.close()
    return cpu_seconds() - started


async def transfer(mode: str, workdir: Path, total: int) -> dict[str, float]:
    receiver = await asyncio.create_subprocess_exec(
        *(sys.executable, __file__, "--serve", mode, "--workdir", str(workdir)),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert receiver.stdout is not None
        port = int(await receiver.stdout.readline())
        context = client_context(workdir / "ca.pem")
        started = time.perf_counter()
        sender_cpu = await send(mode, port, context, total)
        report = json.loads(await receiver.stdout.readline())
        elapsed = time.perf_counter() - started
    finally:
        async with asyncio.timeout(60):
            await receiver.wait()
    if report["bytes"] != total:
        raise SystemExit(f"{mode}: received {report['bytes']} of {total} bytes")
    megabytes = total / MB
    return {
        "sender_ms_per_mb": sender_cpu * 1000 / megabytes,
        "receiver_ms_per_mb": report["cpu_s"] * 1000 / megabytes,
        "mb_per_s": megabytes / elapsed,
    }


async def compare(workdir: Path, total: int, rounds: int) -> None:
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for number in range(rounds):
        for mode in MODES if number % 2 == 0 else tuple(reversed(MODES)):
            results[mode].append(await transfer(mode, workdir, total))
    print(f"{total // (1024 * 1024)} MiB per transfer, {rounds} rounds, medians:")
    print(f"{'TLS':<8}{'sender ms/MB':>14}{'receiver ms/MB':>16}{'MB/s':>8}")
    for mode in MODES:
        runs = results[mode]
        cells = [
            statistics.median(run[k] for run in runs)
            for k in ("sender_ms_per_mb", "receiver_ms_per_mb", "mb_per_s")
        ]
        print(f"{mode:<8}{cells[0]:>14.3f}{cells[1]:>16.3f}{cells[2]:>8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB per transfer (256)")
    parser.add_argument("--rounds", type=int, default=5, help="transfers per mode (5)")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        workdir = Path(args.workdir)
        context = server_context(workdir / "server.pem", workdir / "server.key")
        uvloop.run(serve(args.serve, context))
        return
    if not (1 <= args.mib <= 4096 and 1 <= args.rounds <= 20):
        parser.error("--mib 1-4096, --rounds 1-20")
    with tempfile.TemporaryDirectory(prefix="homeport-tls-") as tmp:
        workdir = Path(tmp)
        ca = create_independent_ca(workdir / "ca")
        cert, key = ca.issue_server_certificate(["localhost"], workdir / "leaf")
        os.link(cert, workdir / "server.pem")
        os.link(key, workdir / "server.key")
        os.link(ca.cert_path, workdir / "ca.pem")
        uvloop.run(compare(workdir, args.mib * 1024 * 1024, args.rounds))


if __name__ == "__main__":
    main()
