"""Loopback ports for the tests, without the ``free_port()`` race.

Servers of our own bind port 0 and report the port the kernel gave them
(:func:`listening_socket` for the relay, ``runner.addresses`` for aiohttp,
``server.sockets`` for asyncio).  Only programs that must be *told* a port
(PostgreSQL, pebble, BIND, Home Assistant, a relay child process that is
restarted on the same port) take one from :func:`reserve_port`.

The old way, binding port 0, closing, and handing the number on, races: until
the server binds, the kernel may give the same port to anyone else asking for
port 0, which with several pytest-xdist workers (and other test runs on the
machine) happens.  :func:`reserve_port` instead takes ports *below* the
kernel's ephemeral range, which the kernel never hands out by itself, and
holds a lock file per port for the life of this process, so no other worker
or test run that uses this module can take the same port meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import tempfile
from pathlib import Path
from typing import IO

#: Lowest port handed out; below it live the well-known and common service ports.
FIRST = 20000
LOCK_DIR = Path(tempfile.gettempdir()) / "homeport-test-ports"

_held: dict[int, IO[bytes]] = {}


def listening_socket(host: str = "127.0.0.1") -> socket.socket:
    """A TCP socket bound to ``host`` on a port the kernel chose (not yet listening)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _ephemeral_start() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(low, FIRST + 1000)


def _bindable(port: int, *, udp: bool) -> bool:
    kinds = [socket.SOCK_STREAM, socket.SOCK_DGRAM] if udp else [socket.SOCK_STREAM]
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def reserve_port(*, udp: bool = False) -> int:
    """A loopback port no one else uses, kept for this process (TCP; also UDP if ``udp``).

    For a program that must be told its port before it starts.  The port stays
    reserved until this process exits: a server that restarts finds it free.
    """
    LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    span = _ephemeral_start() - FIRST
    offset = random.randrange(span)  # workers start apart, so they rarely meet on a lock
    for step in range(span):
        port = FIRST + (offset + step) % span
        if port in _held:
            continue
        handle = (LOCK_DIR / f"{port}.lock").open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        if not _bindable(port, udp=udp):
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
            continue
        _held[port] = handle
        return port
    raise RuntimeError(f"no free port between {FIRST} and {FIRST + span} (pid {os.getpid()})")
