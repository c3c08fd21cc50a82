"""A throwaway Redis server on loopback for the tests (Debian's ``redis-server``).

The cluster tests (several relay nodes on one database) fan revocations out
through a real Redis. This module starts one server: ``redis-server`` on
127.0.0.1 only, on a port from :func:`ports.reserve_port` (so it can be
stopped and started again on the same port, as a restarted Redis would be),
no persistence, no protected-mode surprises. ``scripts/system-deps`` installs
the package; nothing else needs to be set up by hand.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ports import reserve_port

BINARY = "redis-server"


class RedisNotFoundError(RuntimeError):
    """Debian's ``redis-server`` is not installed."""


@dataclass
class RedisServer:
    """One ``redis-server`` process; :meth:`stop` and :meth:`start` keep its port."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def create(cls) -> RedisServer:
        if shutil.which(BINARY) is None:
            raise RedisNotFoundError(
                "redis-server not found: run scripts/system-deps as root "
                "(apt-get install redis-server)"
            )
        server = cls(
            port=reserve_port(), directory=Path(tempfile.mkdtemp(prefix="homeport-redis-"))
        )
        server.start()
        return server

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [
                BINARY,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / "redis.log"),
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # bounded: until it answers PING
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            if self._pings():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer within {timeout} s")

    def _pings(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill the server (SIGKILL: what a crashed or cut-off Redis looks like)."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGCONT)  # a paused one too
        self.process.kill()
        self.process.wait(timeout=20)
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: Redis hangs with every connection open (a stalled host or network)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self) -> str:
        try:
            return (self.directory / "redis.log").read_text()[-2000:]
        except OSError:
            return ""
