"""Zero-touch trust: with the owner's consent, make Home Assistant trust the add-on.

The panel's button starts :meth:`TrustSetup.start`.  The steps, each of which
can stop the run with a clear message on the panel:

1. **Edit** ``configuration.yaml`` (:mod:`homeport.addon.ha_config`: careful
   text insertion, verified by re-reading, or a refusal that says why), after a
   **backup** beside it (``configuration.yaml.homeport-backup-<UTC time>``); the
   new file replaces the old one atomically, with the old file's mode.
2. Ask Home Assistant to **check** its configuration
   (``POST /api/config/core/check_config``).  Invalid: the original file is
   put back at once and Home Assistant's own message shown; nothing restarts.
3. **Restart** Core (``POST /api/services/homeassistant/restart``; Home
   Assistant checks the configuration once more itself before it restarts).
4. **Wait** until the trust probe says Home Assistant trusts the add-on.

Threats and failures this stops:

* An edit nobody asked for: nothing happens without the POST from the panel,
  which only Home Assistant administrators reach (ingress peer check, CSRF
  token, same-origin check: :mod:`homeport.addon.panel`).
* A Home Assistant that no longer starts: the edit is verified before it is
  written, Home Assistant checks the result before any restart, a failed
  check restores the original, and the backup stays for the owner.
* Tokens in logs: the API token (the Supervisor's, or a Core install's
  long-lived token read from a file) is sent only to Home Assistant's API and
  never logged; logs name steps and outcomes, never file contents or Home
  Assistant's error text.

Under the Supervisor the API is ``http://supervisor/core/api`` with
``SUPERVISOR_TOKEN`` (``homeassistant_api: true`` in ``config.yaml``; no
Supervisor role is needed) and the file is ``/homeassistant/configuration.yaml``
(``map: homeassistant_config:rw``).  Beside Home Assistant Core the owner
gives the configuration folder (``--ha-config``) and a long-lived access token
in a file (``--ha-token-file``); without them the panel shows the YAML to paste.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from homeport.addon.ha_config import MAX_SIZE, UnsafeMerge, add_trusted_proxies
from homeport.addon.ha_trust import Trust, TrustMonitor

log = logging.getLogger(__name__)

SUPERVISOR_CORE_API = "http://supervisor/core/api"
SUPERVISED_CONFIG = Path("/homeassistant/configuration.yaml")
BACKUP_INFIX = ".homeport-backup-"
TEMP_SUFFIX = ".homeport-tmp"
CHECK_TIMEOUT = 120.0


class Step(enum.Enum):
    IDLE = "idle"
    EDITING = "editing"
    CHECKING = "checking"
    RESTARTING = "restarting"
    WAITING = "waiting"
    DONE = "done"
    REFUSED = "refused"  # the file cannot be merged safely: nothing changed
    INVALID = "invalid"  # Home Assistant's check failed: the original is back
    FAILED = "failed"  # something else went wrong; the message says what is left to do

    @property
    def running(self) -> bool:
        return self in (Step.EDITING, Step.CHECKING, Step.RESTARTING, Step.WAITING)


@dataclass
class SetupStatus:
    step: Step = Step.IDLE
    message: str = ""
    backup: str | None = None
    #: Home Assistant's own words when its check fails (shown to the owner, never logged).
    details: str = ""


@dataclass(frozen=True)
class CoreApi:
    """Home Assistant's REST API as the add-on may call it."""

    base: str
    token: str = field(repr=False)

    def url(self, path: str) -> str:
        return self.base.rstrip("/") + path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class TrustSetup:
    def __init__(
        self,
        config_path: Path,
        api: CoreApi,
        monitor: TrustMonitor,
        session: aiohttp.ClientSession,
        *,
        wait_timeout: float = 300.0,
        poll_interval: float = 2.0,
    ) -> None:
        self.config_path = config_path
        self.api = api
        self.monitor = monitor
        self.session = session
        self.wait_timeout = wait_timeout
        self.poll_interval = poll_interval
        self.status = SetupStatus()
        self._task: asyncio.Task[None] | None = None

    @property
    def proxies(self) -> tuple[str, ...]:
        return self.monitor.report.proxies

    def start(self) -> bool:
        """Begin a run in the background; False if one is already under way."""
        if self._task is not None and not self._task.done():
            return False
        self.status = SetupStatus(Step.EDITING, "Adding the settings to configuration.yaml…")
        self._task = asyncio.create_task(self._run())
        return True

    async def wait(self) -> SetupStatus:
        if self._task is not None:
            await asyncio.shield(self._task)
        return self.status

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _finish(self, step: Step, message: str, details: str = "") -> None:
        self.status.step, self.status.message, self.status.details = step, message, details
        log.log(
            logging.INFO if step is Step.DONE else logging.WARNING,
            "addon.trust_setup",
            extra={"step": step.value},
        )

    async def _run(self) -> None:
        try:
            await self._steps()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not leave the panel saying "working…" forever
            log.exception("addon.trust_setup_failed")
            self._finish(Step.FAILED, "Something went wrong; see the add-on log.")

    async def _steps(self) -> None:
        path = self.config_path
        try:
            original = await asyncio.to_thread(_read, path)
            edit = add_trusted_proxies(original, self.proxies)
        except UnsafeMerge as exc:
            self._finish(Step.REFUSED, f"Nothing was changed: {exc}.")
            return
        except OSError as exc:
            self._finish(Step.REFUSED, f"Nothing was changed: cannot read {path}: {exc.strerror}.")
            return
        backup: Path | None = None
        if edit.changed:
            try:
                backup = await asyncio.to_thread(_write_with_backup, path, original, edit.text)
            except OSError as exc:
                self._finish(Step.FAILED, f"Nothing was changed: cannot write {path}: {exc}.")
                return
            self.status.backup = str(backup)
            log.info(
                "addon.trust_setup_edited",
                extra={"added": ",".join(edit.added_proxies), "forwarded": edit.set_forwarded_for},
            )
        self.status.step, self.status.message = (
            Step.CHECKING,
            "Home Assistant checks its configuration…",
        )
        try:
            valid, details = await self._check()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            await self._restore(path, original, backup)
            self._finish(
                Step.FAILED,
                f"Home Assistant could not check its configuration ({type(exc).__name__}); the "
                "original configuration.yaml is back.",
            )
            return
        if not valid:
            await self._restore(path, original, backup)
            self._finish(
                Step.INVALID,
                "Home Assistant found a problem in its configuration, so nothing was restarted "
                "and the original configuration.yaml is back.",
                details,
            )
            return
        self.status.step, self.status.message = Step.RESTARTING, "Home Assistant restarts…"
        try:
            await self._restart()
        except _RestartRefused as exc:
            self._finish(
                Step.FAILED,
                f"The settings are in configuration.yaml, but Home Assistant did not restart "
                f"({exc}); restart it yourself.",
            )
            return
        self.status.step = Step.WAITING
        self.status.message = "Waiting for Home Assistant to come back…"
        deadline = time.monotonic() + self.wait_timeout
        while time.monotonic() < deadline:
            report = await self.monitor.check(self.session)
            if report.trust is Trust.TRUSTED:
                self._finish(Step.DONE, "Done: Home Assistant trusts the add-on.")
                return
            await asyncio.sleep(self.poll_interval)
        self._finish(
            Step.FAILED,
            "Home Assistant restarted with the settings, but it does not trust the add-on yet; "
            "check its log.",
        )

    async def _check(self) -> tuple[bool, str]:
        timeout = aiohttp.ClientTimeout(total=CHECK_TIMEOUT)
        async with self.session.post(
            self.api.url("/config/core/check_config"), headers=self.api.headers, timeout=timeout
        ) as response:
            if response.status != 200:
                raise ValueError(f"check_config answered {response.status}")
            body = await response.json()
        if not isinstance(body, dict):
            raise ValueError("check_config answered no JSON object")
        errors = body.get("errors") or ""
        return body.get("result") == "valid", str(errors)[:2000]

    async def _restart(self) -> None:
        timeout = aiohttp.ClientTimeout(total=CHECK_TIMEOUT)
        try:
            async with self.session.post(
                self.api.url("/services/homeassistant/restart"),
                headers=self.api.headers,
                json={},
                timeout=timeout,
            ) as response:
                if response.status >= 400:
                    raise _RestartRefused(f"it answered {response.status}")
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError):
            return  # Home Assistant went down while answering: the restart is under way
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _RestartRefused(type(exc).__name__) from None

    async def _restore(self, path: Path, original: str, backup: Path | None) -> None:
        if backup is None:
            return
        await asyncio.to_thread(_replace, path, original)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(backup.unlink)
        self.status.backup = None
        log.warning("addon.trust_setup_restored")


class _RestartRefused(Exception):
    pass


def available(config_path: Path, token: str | None) -> bool:
    return bool(token) and config_path.is_file()


def _read(path: Path) -> str:
    with path.open("rb") as fh:
        data = fh.read(MAX_SIZE + 1)
    if len(data) > MAX_SIZE:
        raise UnsafeMerge("configuration.yaml is larger than 1 MiB; add the lines yourself")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeMerge("configuration.yaml is not UTF-8 text") from None


def _write_with_backup(path: Path, original: str, text: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    backup = path.with_name(f"{path.name}{BACKUP_INFIX}{stamp}")
    counter = 1
    while backup.exists():
        counter += 1
        backup = path.with_name(f"{path.name}{BACKUP_INFIX}{stamp}-{counter}")
    shutil.copy2(path, backup)
    if backup.read_bytes() != original.encode("utf-8"):
        backup.unlink()
        raise OSError("the file changed while it was being read; try again")
    _replace(path, text)
    return backup


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, keeping its mode."""
    temp = path.with_name(path.name + TEMP_SUFFIX)
    with temp.open("w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    with contextlib.suppress(OSError):
        shutil.copymode(path, temp)
    os.replace(temp, path)
