"""The relay as a separate process, the way it is deployed, for end-to-end tests.

Tests that restart, kill or pause the relay, or that inspect every file and
log line it leaves behind, need it out of the test's own process.
``RelayProcess`` runs ``homeport --log-level debug relay --data-dir D --listen
127.0.0.1:PORT`` with its stdout/stderr captured to files and its ``TMPDIR``,
``HOME`` and working directory pointed at fresh directories, so everything it
could write lands somewhere a test can search.  ``start_home`` adds the real
add-on client (in this process) and links it to a fresh account through the
admin command line, the way an operator would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from ports import reserve_port
from stack import PASSWORD, seed_dev_ca

from homeport.addon.client import AddonClient, AddonConfig, AddonStatus, State
from homeport.keys import parse_public_key
from homeport.relay.config import RelayConfig
from homeport.tls.devca import DevCA

HOMEPORT = Path(sys.executable).with_name("homeport")
EMAIL = "owner@example.com"


async def run_homeport(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None, timeout: float = 30
) -> str:
    """Run one ``homeport`` command to completion; its stdout, or AssertionError."""
    proc = await asyncio.create_subprocess_exec(
        str(HOMEPORT),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), timeout
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise AssertionError(f"homeport {' '.join(args)} failed: {err.decode(errors='replace')}")
    return out.decode()


@dataclass
class RelayProcess:
    """One relay data dir and port, run as a child process (possibly several times)."""

    root: Path
    #: Told to the child, and kept over its restarts (tests/support/ports.py).
    port: int = field(default_factory=reserve_port)
    log_level: str = "debug"
    proc: asyncio.subprocess.Process | None = None
    runs: int = 0
    paused: bool = False
    #: ``--database-url`` for the relay and its admin commands (default: SQLite in data).
    database_url: str | None = None
    #: More ``homeport relay`` options (e.g. ``--smtp-host``), after the defaults.
    extra_args: list[str] = field(default_factory=list)
    #: ``--link-poll``: links come from ``homeport admin link``, another process, so
    #: the relay finds them by polling; quicker than the production 2 s.
    link_poll: float = 0.2
    #: The development CA to seed the data dir with (the session's ``dev_ca``, which
    #: the session's Chromium trusts); None: the relay makes its own.
    ca: DevCA | None = None

    def __post_init__(self) -> None:
        for path in (self.data_dir, self.tmp_dir, self.home_dir, self.cwd, self.log_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.ca is not None:
            seed_dev_ca(self.data_dir, self.ca)

    # Every place the relay process could write to.
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def home_dir(self) -> Path:
        return self.root / "home"

    @property
    def cwd(self) -> Path:
        return self.root / "cwd"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def config(self) -> RelayConfig:
        return RelayConfig(data_dir=self.data_dir, listen_port=self.port)

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "tls" / "dev-ca.pem"

    @property
    def relay_url(self) -> str:
        return f"wss://{self.config.account_host}:{self.port}/v1/tunnel"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEPORT_")}
        env.update(TMPDIR=str(self.tmp_dir), HOME=str(self.home_dir))
        env.pop("XDG_DATA_HOME", None)
        env.pop("PYTHONASYNCIODEBUG", None)
        return env

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, timeout: float = 20) -> float:
        """Start the relay; returns ``time.monotonic()`` once it accepts connections."""
        assert not self.running, "relay already running"
        self.runs += 1
        out_path = self.log_dir / f"relay-{self.runs}.stdout"
        err_path = self.log_dir / f"relay-{self.runs}.stderr"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                str(HOMEPORT),
                "--log-level",
                self.log_level,
                "relay",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--link-poll",
                str(self.link_poll),
                *self._database_args(),
                *self.extra_args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env(),
                cwd=self.cwd,
            )
        self.paused = False
        async with asyncio.timeout(timeout):
            while b"Relay listening" not in out_path.read_bytes():
                if self.proc.returncode is not None:
                    raise AssertionError(
                        f"relay exited with {self.proc.returncode}: "
                        + err_path.read_text(errors="replace")[-2000:]
                    )
                await asyncio.sleep(0.02)
        return time.monotonic()

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        assert self.proc.returncode is None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 20) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self, timeout: float = 20) -> int:
        """SIGTERM (graceful: GOAWAY and drain) and wait for the exit code."""
        self.signal(signal.SIGTERM)
        return await self.wait_exit(timeout)

    async def kill(self) -> int:
        self.signal(signal.SIGKILL)
        return await self.wait_exit(10)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False

    async def close(self) -> None:
        """Make sure the child is gone (test clean-up); only ever our own child."""
        if self.proc is None or self.proc.returncode is not None:
            return
        if self.paused:
            self.resume()
        self.proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 10)

    def log_files(self) -> list[Path]:
        return sorted(self.log_dir.iterdir())

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log_files())

    async def admin(self, *args: str, stdin: str | None = None) -> str:
        """``homeport <args> --data-dir D`` in the relay's environment."""
        return await run_homeport(
            *args,
            "--data-dir",
            str(self.data_dir),
            *self._database_args(),
            stdin=stdin,
            env=self.env(),
        )

    def _database_args(self) -> list[str]:
        return ["--database-url", self.database_url] if self.database_url else []

    async def pinned_key(self) -> Ed25519PublicKey:
        return parse_public_key((await self.admin("keys", "show")).strip())


class RecordLogs(logging.Handler):
    """Collects (monotonic time, event, fields, asyncio task) of one logger's records."""

    def __init__(self, logger: str) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[float, str, dict[str, object], object]] = []
        self._logger = logging.getLogger(logger)
        self._old_level = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        try:
            task: object = asyncio.current_task()
        except RuntimeError:
            task = None
        self.records.append((time.monotonic(), record.getMessage(), fields, task))

    def __enter__(self) -> RecordLogs:
        self._logger.addHandler(self)
        self._logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._old_level)

    def events(self, name: str) -> list[tuple[float, dict[str, object]]]:
        return [(t, fields) for t, event, fields, _ in self.records if event == name]

    def sequence(self, task: object) -> list[tuple[float, str, dict[str, object]]]:
        """Everything one task (say, one add-on's ``run_forever``) logged, in order."""
        return [(t, event, fields) for t, event, fields, by in self.records if by is task]


_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


@dataclass
class Home:
    """A subprocess relay plus an in-process, linked add-on (duck-types ``stack.Stack``
    for :class:`stack.Browser`)."""

    relay: RelayProcess
    addon: AddonClient
    addon_task: asyncio.Task[None]
    backend_url: str
    statuses: list[tuple[float, AddonStatus]]
    email: str = EMAIL
    password: str = PASSWORD

    @property
    def config(self) -> RelayConfig:
        return self.relay.config

    @property
    def ca_path(self) -> Path:
        return self.relay.ca_path

    @property
    def instance_id(self) -> str:
        assert self.addon.status.instance_id is not None
        return self.addon.status.instance_id

    @property
    def tenant_origin(self) -> str:
        return self.config.tenant_origin(self.instance_id)

    @property
    def account_origin(self) -> str:
        return self.config.account_origin

    def browser(self) -> object:
        from stack import Browser

        return Browser(self)  # type: ignore[arg-type]

    async def wait_state(self, state: State, timeout: float, *, connects: int = 0) -> float:
        """Wait until the add-on is in ``state`` (and has connected ``connects`` times)."""
        async with asyncio.timeout(timeout):
            while not (self.addon.status.state is state and self.addon.status.connects >= connects):
                await asyncio.sleep(0.01)
        return time.monotonic()


def addon_config(
    relay: RelayProcess,
    backend_url: str,
    state_dir: Path,
    pinned: Ed25519PublicKey,
    *,
    ping_interval: float = 2.0,
    ping_timeout: float = 3.0,
) -> AddonConfig:
    return AddonConfig(
        relay_url=relay.relay_url,
        ha_url=backend_url,
        state_dir=state_dir,
        pinned_keys=(pinned,),
        relay_ca=relay.ca_path,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
    )


@contextlib.asynccontextmanager
async def start_home(
    root: Path,
    backend_url: str,
    *,
    ping_interval: float = 2.0,
    ping_timeout: float = 3.0,
    database_url: str | None = None,
    relay_args: Sequence[str] = (),
    ca: DevCA | None = None,
) -> AsyncIterator[Home]:
    """Relay subprocess + user (admin CLI) + in-process add-on linked by its code
    (``ca``: see :attr:`RelayProcess.ca`)."""
    relay = RelayProcess(
        root / "relay", database_url=database_url, extra_args=list(relay_args), ca=ca
    )
    statuses: list[tuple[float, AddonStatus]] = []
    addon: AddonClient | None = None
    task: asyncio.Task[None] | None = None
    try:
        await relay.start()
        _, pinned = await asyncio.gather(
            relay.admin("admin", "user", "create", EMAIL, stdin=PASSWORD + "\n"),
            relay.pinned_key(),
        )
        config = addon_config(
            relay,
            backend_url,
            root / "addon",
            pinned,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
        )
        addon = AddonClient(
            config,
            on_status=lambda s: statuses.append((time.monotonic(), AddonStatus(**vars(s)))),
        )
        await addon.__aenter__()
        task = asyncio.create_task(addon.run_forever())
        home = Home(relay, addon, task, backend_url, statuses)
        async with asyncio.timeout(20):
            while addon.status.link_code is None:
                assert not task.done(), "add-on stopped"
                await asyncio.sleep(0.02)
        await relay.admin("admin", "link", addon.status.link_code, EMAIL)
        await home.wait_state(State.CONNECTED, 20)
        yield home
    finally:
        if relay.paused:
            relay.resume()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if addon is not None:
            await addon.__aexit__(None, None, None)
        await relay.close()
