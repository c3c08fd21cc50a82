"""Bounded memory: 2 GiB down and 2 GiB up through a relay process whose RSS we watch.

The relay runs as its own process, set up the way an operator would
(``homeport relay``, ``homeport admin user create`` with the password on
stdin, ``homeport keys show``, ``homeport addon`` printing its link code,
``homeport admin link``).  The add-on is a second process, the stand-in
backend and the browser live in this one.  A thread samples the relay's RSS
from ``/proc`` every 100 ms, and the kernel's own high-water mark (VmHWM,
reset after warm-up through ``/proc/<pid>/clear_refs``) catches any peak
between samples.  Both transfers are checked byte for byte by SHA-256.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import signal
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from relay_process import HOMEPORT, RelayProcess
from stack import PASSWORD, Browser

from homeport.relay.config import RelayConfig
from homeport.standin import CHUNK, pattern_chunk, start_standin

MiB = 1024 * 1024
GiB = 1024 * MiB
TOTAL = 2 * GiB
WARM_UP = 64 * MiB
#: Growth over the idle, warmed-up baseline that the relay may show while carrying it all.
RSS_BOUND = 64 * MiB
EMAIL = "memory@example.com"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def status_kib(pid: int, field_name: str) -> int:
    """One ``kB`` field of ``/proc/<pid>/status`` (VmRSS, VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"{field_name} not in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux: ``echo 5 > /proc/<pid>/clear_refs``)."""
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")


@dataclass
class RssSampler:
    """Samples a process's RSS every ``interval`` seconds on a thread of its own.

    A thread, not a task: this process's event loop is busy moving and hashing
    the very bytes being measured, and must not delay the samples.
    """

    pid: int
    interval: float = 0.1
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.samples.append((time.monotonic(), status_kib(self.pid, "VmRSS")))
            self._stop.wait(self.interval)

    def peak_between(self, start: float, end: float) -> int:
        return max(rss for t, rss in self.samples if start <= t <= end)


@dataclass
class ProcessHome:
    """What :class:`stack.Browser` needs to know about a relay in another process."""

    config: RelayConfig
    ca_path: Path
    instance_id: str
    email: str = EMAIL
    password: str = PASSWORD

    @property
    def tenant_origin(self) -> str:
        return self.config.tenant_origin(self.instance_id)

    @property
    def account_origin(self) -> str:
        return self.config.account_origin


@contextlib.asynccontextmanager
async def relay_and_addon(root: Path, backend_url: str) -> AsyncIterator[tuple[int, ProcessHome]]:
    """Relay and add-on as two processes, linked by the operator's commands: (relay pid, home)."""
    relay = RelayProcess(root / "relay", log_level="info")
    addon: asyncio.subprocess.Process | None = None
    try:
        await relay.start()
        await relay.admin("admin", "user", "create", EMAIL, stdin=PASSWORD + "\n")
        pinned = (await relay.admin("keys", "show")).strip()
        assert re.fullmatch(r"ed25519:[A-Za-z0-9_-]{43}", pinned), pinned
        addon_log = root / "addon.stderr"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEPORT_")}
        with addon_log.open("wb") as err:
            addon = await asyncio.create_subprocess_exec(
                str(HOMEPORT),
                "addon",
                "--relay",
                relay.relay_url,
                "--server-pubkey",
                pinned,
                "--ha-url",
                backend_url,
                "--state-dir",
                str(root / "addon"),
                "--relay-ca",
                str(relay.ca_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=env,
            )
        assert addon.stdout is not None
        async with asyncio.timeout(30):
            while not (line := (await addon.stdout.readline()).decode()).startswith("Link code:"):
                assert line, "the add-on ended before printing its link code"
        code = line.split(":", 1)[1].strip()
        linked = await relay.admin("admin", "link", code, EMAIL)
        instance_id = re.search(r"Linked instance (\S+)", linked)
        assert instance_id is not None, linked
        # Connected once the add-on logs it (it dials again at once when linked).
        async with asyncio.timeout(30):
            while b'"addon.connected"' not in addon_log.read_bytes():
                assert addon.returncode is None, addon_log.read_text()
                await asyncio.sleep(0.05)
        assert relay.proc is not None
        yield relay.proc.pid, ProcessHome(relay.config, relay.ca_path, instance_id.group(1))
    finally:
        if addon is not None and addon.returncode is None:
            addon.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(addon.wait(), 10)
            except TimeoutError:
                addon.kill()
                await addon.wait()
        await relay.close()


def expected_digest(size: int) -> str:
    block = pattern_chunk(CHUNK)
    digest = hashlib.sha256()
    for _ in range(size // CHUNK):
        digest.update(block)
    return digest.hexdigest()


async def download(browser: Browser, origin: str, size: int) -> str:
    digest = hashlib.sha256()
    received = 0
    async with browser.request("GET", f"{origin}/bytes/{size}") as r:
        assert r.status == 200
        async for chunk in r.content.iter_chunked(MiB):
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    return digest.hexdigest()


async def upload(browser: Browser, origin: str, size: int) -> dict[str, object]:
    async def body() -> AsyncIterator[bytes]:
        block = pattern_chunk(CHUNK)
        for _ in range(size // CHUNK):
            yield block

    async with browser.request("PUT", f"{origin}/upload", data=body()) as r:
        assert r.status == 200
        result: dict[str, object] = await r.json()
        return result


async def test_relay_memory_stays_bounded_over_4_gib(tmp_path: Path) -> None:
    standin, backend_url = await start_standin()
    try:
        async with (
            relay_and_addon(tmp_path, backend_url) as (pid, home),
            Browser(home) as browser,  # a ProcessHome quacks like a Stack
        ):
            page = await browser.sign_in("/")
            assert page.status == 200
            origin = home.tenant_origin
            want = await asyncio.to_thread(expected_digest, TOTAL)
            with RssSampler(pid) as sampler:
                # Warm up every code path (TLS, tunnel, buffers, allocator arenas).
                assert await download(browser, origin, WARM_UP) == expected_digest(WARM_UP)
                assert (await upload(browser, origin, WARM_UP))["length"] == WARM_UP
                await asyncio.sleep(1.0)
                idle_from = time.monotonic()
                await asyncio.sleep(1.0)
                baseline = sampler.peak_between(idle_from, time.monotonic())
                reset_peak(pid)

                started = time.monotonic()
                got = await download(browser, origin, TOTAL)
                down_s = time.monotonic() - started
                started = time.monotonic()
                result = await upload(browser, origin, TOTAL)
                up_s = time.monotonic() - started
                finished = time.monotonic()
                hwm = status_kib(pid, "VmHWM")
            sampled_peak = sampler.peak_between(idle_from, finished)
    finally:
        await standin.cleanup()

    down_rate = TOTAL / down_s / MiB
    up_rate = TOTAL / up_s / MiB
    print(
        f"\ndown {TOTAL // MiB} MiB in {down_s:.1f} s ({down_rate:.0f} MiB/s), "
        f"up in {up_s:.1f} s ({up_rate:.0f} MiB/s)\n"
        f"relay RSS baseline {baseline / MiB:.1f} MiB, sampled peak {sampled_peak / MiB:.1f} MiB "
        f"(+{(sampled_peak - baseline) / MiB:.1f}), kernel high-water {hwm / MiB:.1f} MiB "
        f"(+{(hwm - baseline) / MiB:.1f}), {len(sampler.samples)} samples"
    )
    assert got == want, "download corrupted"
    assert result == {"length": TOTAL, "sha256": want}, "upload corrupted"
    assert sampled_peak - baseline < RSS_BOUND
    assert hwm - baseline < RSS_BOUND
