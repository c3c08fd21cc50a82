"""A throwaway PostgreSQL server on loopback for the tests (Debian's ``postgresql``).

The accounts tests run against SQLite *and* a real PostgreSQL. This module starts one
server per test session: ``initdb`` into a fresh directory, ``postgres`` listening on
127.0.0.1 only (and a Unix socket inside that directory), durability off because the
data is thrown away. ``scripts/system-deps`` installs the package; nothing else needs
to be set up by hand. Set ``HOMEPORT_TEST_POSTGRES_URL`` (an ``postgresql+asyncpg://``
URL of a role allowed to create databases) to use a server of your own instead.

Each test gets its own database, cloned from a migrated template, so tests never see
each other's rows and the clone costs a few milliseconds.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
from ports import reserve_port
from sqlalchemy.engine import URL, make_url

ENV_URL = "HOMEPORT_TEST_POSTGRES_URL"
TEMPLATE = "homeport_template"


class PostgresNotFoundError(RuntimeError):
    """Debian's PostgreSQL server binaries are not installed."""


def _bin_dir() -> Path:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if not candidates:
        raise PostgresNotFoundError(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin). "
            "Run scripts/system-deps as root, or set " + ENV_URL
        )
    return Path(candidates[-1]).parent


@dataclass
class PostgresServer:
    """A running server and the URL of a superuser role on it."""

    url: URL
    _directory: Path | None = None
    _pg_ctl: list[str] | None = None
    #: ``pg_ctl … start`` as first run: :meth:`restart` runs it again (same port, same data).
    _start: list[str] | None = None

    @classmethod
    def start(cls, *, durable: bool = False) -> PostgresServer:
        """``durable``: keep PostgreSQL's crash safety (fsync, synchronous commit), for a
        test that crashes the server with :meth:`halt` and expects committed rows back."""
        external = os.environ.get(ENV_URL)
        if external:
            return cls(url=make_url(external))
        bin_dir = _bin_dir()
        directory = Path(tempfile.mkdtemp(prefix="homeport-pg-"))
        data = directory / "data"
        # initdb refuses to run as root: run the server as Debian's postgres user then.
        run_as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(directory, user.pw_uid, user.pw_gid)
            run_as = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [
                *run_as,
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "homeport",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        port = reserve_port()
        fast = ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={port}",
                f"-c unix_socket_directories={directory}",
                *([] if durable else fast),
                "-c max_connections=200",
            ]
        )
        pg_ctl = [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data)]
        start = [*pg_ctl, "-o", options, "-l", str(directory / "server.log"), "-w", "start"]
        subprocess.run(start, check=True, capture_output=True, timeout=60)
        url = URL.create(
            "postgresql+asyncpg", username="homeport", host="127.0.0.1", port=port
        ).set(database="postgres")
        return cls(url=url, _directory=directory, _pg_ctl=pg_ctl, _start=start)

    def halt(self) -> None:
        """Stop the server as a crash would (``immediate``: connections dropped, no
        checkpoint), keeping its data and port for :meth:`restart`."""
        assert self._pg_ctl is not None, "not a server these tests started"
        subprocess.run(
            [*self._pg_ctl, "-m", "immediate", "-w", "stop"],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def restart(self) -> None:
        """Start a :meth:`halt`-ed server again (crash recovery, same port); returns once up."""
        assert self._start is not None, "not a server these tests started"
        subprocess.run(self._start, check=True, capture_output=True, timeout=60)

    def stop(self) -> None:
        if self._pg_ctl is not None:
            subprocess.run(
                [*self._pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60
            )
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

    def database_url(self, name: str) -> str:
        return self.url.set(database=name).render_as_string(hide_password=False)

    async def _admin(self) -> asyncpg.Connection:
        url = self.url
        return await asyncpg.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            database=url.database or "postgres",
        )

    async def create_database(self, *, template: str | None = None) -> str:
        """Create a fresh database (a clone of ``template`` if given); return its name."""
        name = "t_" + uuid.uuid4().hex[:16]
        conn = await self._admin()
        try:
            clause = f" TEMPLATE {template}" if template else ""
            await conn.execute(f"CREATE DATABASE {name}{clause}")
        finally:
            await conn.close()
        return name

    async def drop_database(self, name: str) -> None:
        conn = await self._admin()
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await conn.close()

    async def ensure_template(self) -> None:
        """Create and migrate the template database the per-test clones come from."""
        from homeport.accounts import Database

        conn = await self._admin()
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", TEMPLATE)
            if exists:
                await conn.execute(f"DROP DATABASE {TEMPLATE} WITH (FORCE)")
            await conn.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await conn.close()
        database = Database(self.database_url(TEMPLATE))
        await database.migrate()
