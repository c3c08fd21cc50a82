"""Install, start and onboard a real Home Assistant Core for end-to-end tests.

Usage from tests (``tests/support`` is on ``sys.path`` via pytest's ``pythonpath``)::

    from ha_core import HomeAssistant, ensure_ha_venv, start_home_assistant

    ensure_ha_venv()                       # slow only the first time (cached venv)
    async with start_home_assistant(tmp_path) as ha:
        ha.url, ha.long_lived_token, ...   # see HomeAssistant
        await ha.restart()

Command line (CI runs this before pytest so the install is outside the tests)::

    python tests/support/ha_core.py install

The module is named ``ha_core`` so that it never shadows the real ``homeassistant``
package. It runs under our own Python (3.11+) and only drives Home Assistant, which
lives in its own Python 3.13 venv, as a subprocess. The only HTTP client used is aiohttp
(imported lazily, so ``install`` runs under any Python 3.11+ without it).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ports import reserve_port

if TYPE_CHECKING:
    import aiohttp

HA_VERSION: Final = "2025.4.4"
PYTHON_VERSION: Final = "3.13.0"

#: Integrations named in the generated configuration.yaml. Their manifests (and those of
#: their ``dependencies``) decide which extra packages go into the venv.
CONFIG_DOMAINS: Final = (
    "frontend",
    "api",
    "websocket_api",
    "config",
    "person",
    "sun",
    "http",
    "logger",
    "recorder",
    "history",
    "logbook",
    "webhook",
    "mobile_app",
    "input_boolean",
    "input_number",
    "input_text",
    "camera",
    "local_file",
)

TEST_USERNAME: Final = "homeport-test"
#: A ``local_file`` camera (works offline): entity id, and the picture it serves.
CAMERA_ENTITY: Final = "camera.homeport_camera"
CAMERA_FILE: Final = "homeport-camera.jpg"
STARTUP_TIMEOUT: Final = 120.0
STOP_TIMEOUT: Final = 30.0

_MARKER_NAME: Final = ".homeport-install-complete.json"
_WHEEL_NAME: Final = f"homeassistant-{HA_VERSION}-py3-none-any.whl"
_CONSTRAINTS_MEMBER: Final = "homeassistant/package_constraints.txt"
_REQUIREMENT_RE: Final = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


class HomeAssistantError(RuntimeError):
    """Home Assistant could not be installed, started, onboarded or stopped."""


class PythonNotFoundError(HomeAssistantError):
    """No Python 3.13 is available to build the Home Assistant venv."""


def _log(message: str) -> None:
    print(f"[ha_core] {message}", file=sys.stderr, flush=True)


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------
# Installation
# --------------------------------------------------------------------------------------


def cache_root() -> Path:
    """``$HOMEPORT_CACHE`` or ``~/.cache/homeport``."""
    configured = os.environ.get("HOMEPORT_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "homeport"


def venv_dir() -> Path:
    return cache_root() / f"ha-{HA_VERSION}"


def _pyenv_root() -> Path:
    pyenv = shutil.which("pyenv")
    if pyenv:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pyenv, "root"], capture_output=True, text=True, check=True, timeout=30
            )
            if out.stdout.strip():
                return Path(out.stdout.strip())
    return Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


def _python_version(python: str | Path) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(
            [str(python), "-c", "import sys; print(*sys.version_info[:3])"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return tuple(int(part) for part in out.stdout.split())


def find_python() -> Path:
    """The Python 3.13 that Home Assistant 2025.4.4 needs.

    ``$(pyenv root)/versions/3.13.0/bin/python3`` first, then ``python3.13`` on PATH.
    """
    pyenv_python = _pyenv_root() / "versions" / PYTHON_VERSION / "bin" / "python3"
    if pyenv_python.is_file() and _python_version(pyenv_python):
        return pyenv_python
    on_path = shutil.which("python3.13")
    if on_path:
        version = _python_version(on_path)
        if version and version[:2] == (3, 13):
            return Path(on_path)
    raise PythonNotFoundError(
        f"Home Assistant {HA_VERSION} needs Python {PYTHON_VERSION}: neither {pyenv_python} "
        f"nor a working 'python3.13' on PATH was found "
        f"(install it with: pyenv install {PYTHON_VERSION})"
    )


def _run_logged(cmd: list[str], log_path: Path, what: str) -> None:
    with log_path.open("ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise HomeAssistantError(
            f"{what} failed (exit {result.returncode}); see {log_path}:\n{_tail(log_path, 40)}"
        )


def _pip_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.pop("VIRTUAL_ENV", None)
    return env


def _manifest_requirements(wheel: Path) -> list[str]:
    """Requirements of CONFIG_DOMAINS and their dependencies, read from the wheel."""
    requirements: set[str] = set()
    seen: set[str] = set()
    todo = list(CONFIG_DOMAINS)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        while todo:
            domain = todo.pop()
            if domain in seen:
                continue
            seen.add(domain)
            member = f"homeassistant/components/{domain}/manifest.json"
            if member not in names:
                raise HomeAssistantError(f"{wheel.name} has no integration {domain!r}")
            manifest = json.loads(zf.read(member))
            requirements.update(manifest.get("requirements", []))
            todo.extend(manifest.get("dependencies", []))
    return sorted(requirements)


def _pins(constraints: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in constraints.splitlines():
        match = _REQUIREMENT_RE.match(line.strip())
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


@contextlib.contextmanager
def _install_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"waiting for another process installing into {path.parent} ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_VERIFY_SCRIPT: Final = """
import json, sys
from importlib.metadata import version
import homeassistant.const, hass_frontend
wanted = json.loads(sys.argv[1])
assert homeassistant.const.__version__ == wanted["homeassistant"], homeassistant.const.__version__
for req in wanted["requirements"]:
    name, pinned = req.split("==")
    assert version(name) == pinned, (name, version(name), pinned)
print("ok")
"""


def _verify(venv: Path, spec: dict[str, Any], log_path: Path) -> None:
    python = venv / "bin" / "python"
    _run_logged(
        [str(python), "-c", _VERIFY_SCRIPT, json.dumps(spec)], log_path, "verifying the HA venv"
    )
    if not (venv / "bin" / "hass").is_file():
        raise HomeAssistantError(f"{venv / 'bin' / 'hass'} is missing after install")


def ensure_ha_venv() -> Path:
    """Return a venv with Home Assistant Core ``HA_VERSION`` installed, installing if needed.

    Idempotent and safe for concurrent callers (``fcntl`` lock). A marker file is written
    only after a complete, verified install, so an interrupted install is redone.
    """
    root = cache_root()
    venv = venv_dir()
    marker = venv / _MARKER_NAME
    with _install_lock(root / f"ha-{HA_VERSION}.lock"):
        if marker.is_file() and (venv / "bin" / "python").exists():
            return venv

        started = time.monotonic()
        log_path = root / f"ha-{HA_VERSION}-install.log"
        log_path.write_text("")
        python = find_python()
        _log(f"installing Home Assistant {HA_VERSION} into {venv} (log: {log_path})")
        if venv.exists():
            _log("removing an incomplete previous install")
            shutil.rmtree(venv)
        _run_logged([str(python), "-m", "venv", str(venv)], log_path, "creating the venv")
        venv_python = str(venv / "bin" / "python")
        env = _pip_env()

        downloads = root / "downloads"
        wheel = downloads / _WHEEL_NAME
        if not wheel.is_file():
            _log(f"downloading {_WHEEL_NAME} ...")
            with log_path.open("ab") as log:
                result = subprocess.run(
                    [venv_python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                     "-d", str(downloads), f"homeassistant=={HA_VERSION}"],
                    stdout=log, stderr=subprocess.STDOUT, env=env, check=False,
                )  # fmt: skip
            if result.returncode != 0 or not wheel.is_file():
                raise HomeAssistantError(
                    f"downloading homeassistant=={HA_VERSION} failed; see {log_path}:\n"
                    f"{_tail(log_path, 40)}"
                )
        with zipfile.ZipFile(wheel) as zf:
            constraints_text = zf.read(_CONSTRAINTS_MEMBER).decode()
        constraints = venv / "package_constraints.txt"
        constraints.write_text(constraints_text)
        pins = _pins(constraints_text)
        frontend = f"home-assistant-frontend=={pins['home-assistant-frontend']}"
        requirements = sorted({frontend, *_manifest_requirements(wheel)})
        spec: dict[str, Any] = {"homeassistant": HA_VERSION, "requirements": requirements}

        _log(f"pip install (with HA's pins) {_WHEEL_NAME} + {', '.join(requirements)} ...")
        with log_path.open("ab") as log:
            result = subprocess.run(
                [venv_python, "-m", "pip", "install", "--no-input", "-c", str(constraints),
                 str(wheel), *requirements],
                stdout=log, stderr=subprocess.STDOUT, env=env, check=False,
            )  # fmt: skip
        if result.returncode != 0:
            raise HomeAssistantError(
                f"pip install failed (exit {result.returncode}); see {log_path}:\n"
                f"{_tail(log_path, 40)}"
            )
        _log("verifying the install ...")
        _verify(venv, spec, log_path)
        spec["python"] = str(python)
        spec["installed_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        tmp_marker = marker.with_suffix(".tmp")
        tmp_marker.write_text(json.dumps(spec, indent=2) + "\n")
        tmp_marker.replace(marker)
        _log(f"Home Assistant {HA_VERSION} installed in {time.monotonic() - started:.0f} s")
        return venv


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------

_RUNNING: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_RUNNING):
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)


def camera_picture() -> bytes:
    """A JPEG-framed, 48 KiB incompressible picture for the camera (HA serves it as is)."""
    body = random.Random(5).randbytes(48 * 1024)
    return b"\xff\xd8\xff\xe0" + body + b"\xff\xd9"


def configuration_yaml(
    port: int, config_dir: Path | None = None, *, trust_proxies: bool = True, extra: str = ""
) -> str:
    """The minimal configuration (no ``default_config``) that the tests run against.

    ``trust_proxies=False`` leaves out ``use_x_forwarded_for``/``trusted_proxies``:
    Home Assistant as installed, before its owner has configured a reverse proxy.
    ``extra``: more top-level YAML (other integrations, automations), appended.
    """
    camera_path = (config_dir or Path(".")) / CAMERA_FILE
    proxies = (
        "  use_x_forwarded_for: true\n  trusted_proxies:\n    - 127.0.0.1\n    - ::1\n"
        if trust_proxies
        else ""
    )
    return f"""\
homeassistant:
  name: Homeport Test
  latitude: 52.3731
  longitude: 4.8922
  elevation: 0
  unit_system: metric
  time_zone: UTC
  currency: EUR
  country: NL
  language: en

logger:
  default: warning
  logs:
    homeassistant.setup: info
    homeassistant.bootstrap: info

frontend:
api:
websocket_api:
config:
person:
sun:
webhook:
mobile_app:

recorder:
  commit_interval: 1
history:
logbook:

http:
  server_host: 127.0.0.1
  server_port: {port}
{proxies}  ip_ban_enabled: true
  login_attempts_threshold: 5

input_boolean:
  homeport_test:
    name: Homeport test

input_number:
  homeport_level:
    name: Homeport level
    min: 0
    max: 100
    step: 1

input_text:
  homeport_note:
    name: Homeport note

camera:
  - platform: local_file
    name: Homeport camera
    file_path: {camera_path}
{extra}"""


class HomeAssistant:
    """A real Home Assistant Core process, onboarded, with credentials for the tests.

    Create it with ``await HomeAssistant.start(base_dir)`` or
    ``async with start_home_assistant(base_dir) as ha``. The object does not hold on to an
    event loop (the process is a plain ``subprocess.Popen`` and each request uses its own
    ``aiohttp.ClientSession``), so it can be used from any test's loop.
    """

    def __init__(self, base_dir: Path, venv: Path, port: int) -> None:
        self.base_dir = base_dir
        self.venv = venv
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.config_dir = base_dir / "config"
        #: stdout+stderr of every HA run (appended across restarts); HA also keeps its own
        #: ``home-assistant.log`` in ``config_dir`` (rotated to ``.1`` on each start).
        self.log_path = base_dir / "home-assistant.log"
        self.username = TEST_USERNAME
        self.password = secrets.token_urlsafe(18)
        self.client_id = f"{self.url}/"
        self.access_token = ""
        self.refresh_token = ""
        self.long_lived_token = ""
        self._proc: subprocess.Popen[bytes] | None = None

    # -- public API --------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        base_dir: Path,
        *,
        port: int | None = None,
        venv: Path | None = None,
        timeout: float = STARTUP_TIMEOUT,
        trust_proxies: bool = True,
        extra_config: str = "",
    ) -> HomeAssistant:
        """Install if needed, write a fresh config in ``base_dir``, start, and onboard.

        ``extra_config``: YAML appended to the configuration (see :func:`configuration_yaml`).
        """
        if venv is None:
            venv = await asyncio.to_thread(ensure_ha_venv)
        base_dir.mkdir(parents=True, exist_ok=True)
        ha = cls(base_dir, venv, port or reserve_port())
        if ha.config_dir.exists() and any(ha.config_dir.iterdir()):
            raise HomeAssistantError(f"{ha.config_dir} is not empty: start needs a fresh dir")
        ha.config_dir.mkdir(parents=True, exist_ok=True)
        (ha.config_dir / CAMERA_FILE).write_bytes(camera_picture())
        # HA serves /local/ from www/ only if it exists at start; tests put big files there.
        (ha.config_dir / "www").mkdir()
        (ha.config_dir / "configuration.yaml").write_text(
            configuration_yaml(
                ha.port, ha.config_dir, trust_proxies=trust_proxies, extra=extra_config
            )
        )
        began = time.monotonic()
        try:
            ha._launch()
            await ha._wait_for_http(timeout)
            await ha._onboard()
            await ha._wait_running(ha.access_token, timeout - (time.monotonic() - began))
        except BaseException:
            await ha.stop()
            raise
        _log(f"Home Assistant ready and onboarded at {ha.url} in {time.monotonic() - began:.1f} s")
        return ha

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/websocket"

    @property
    def headers(self) -> dict[str, str]:
        """``Authorization`` header with the long-lived token."""
        return {"Authorization": f"Bearer {self.long_lived_token}"}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def stop(self) -> None:
        """SIGTERM, wait up to 30 s, then SIGKILL. Safe to call twice."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if proc.poll() is None:
                _log(f"Home Assistant (pid {proc.pid}) ignored SIGTERM for 30 s: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                while proc.poll() is None:
                    await asyncio.sleep(0.1)
        # Reap anything else left in the process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        _RUNNING.discard(proc)
        self._proc = None

    async def restart(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Stop and start again on the same port and config; tokens stay valid."""
        await self.stop()
        began = time.monotonic()
        try:
            self._launch()
            await self._wait_for_http(timeout)
            await self._wait_running(self.long_lived_token, timeout - (time.monotonic() - began))
        except BaseException:
            await self.stop()
            raise

    async def refresh_access_token(self) -> str:
        """Get a fresh short-lived access token (they last 30 min) from the refresh token."""
        import aiohttp

        data = {
            "grant_type": "refresh_token",
            "refresh_token": self.refresh_token,
            "client_id": self.client_id,
        }
        async with aiohttp.ClientSession() as session:
            body = await self._request(session, "POST", "/auth/token", data=data)
        self.access_token = body["access_token"]
        return self.access_token

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)

    # -- internals ---------------------------------------------------------------------

    def _launch(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env.pop("VIRTUAL_ENV", None)
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n===== starting Home Assistant {stamp} =====\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [str(self.venv / "bin" / "hass"), "--config", str(self.config_dir),
                 "--skip-pip", "--log-no-color"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.base_dir, env=env, start_new_session=True,
            )  # fmt: skip
        _RUNNING.add(self._proc)

    def _failure(self, message: str) -> HomeAssistantError:
        return HomeAssistantError(
            f"{message}\n--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )

    def _check_alive(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            code = None if self._proc is None else self._proc.returncode
            raise self._failure(f"Home Assistant exited (code {code}) before it was ready")

    async def _wait_for_http(self, timeout: float) -> None:
        import aiohttp

        deadline = time.monotonic() + timeout
        client_timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=client_timeout) as session:
            while True:
                self._check_alive()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.url}/manifest.json") as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise self._failure(
                        f"Home Assistant did not answer GET /manifest.json with 200 "
                        f"within {timeout:.0f} s at {self.url}"
                    )
                await asyncio.sleep(0.25)

    async def _wait_running(self, token: str, timeout: float) -> None:
        """Wait until core state is RUNNING (HTTP is served before startup is complete)."""
        import aiohttp

        deadline = time.monotonic() + max(timeout, 1.0)
        state = None
        async with aiohttp.ClientSession() as session:
            while True:
                self._check_alive()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(
                        f"{self.url}/api/config", headers={"Authorization": f"Bearer {token}"}
                    ) as resp:
                        if resp.status == 200:
                            state = (await resp.json()).get("state")
                            if state == "RUNNING":
                                return
                if time.monotonic() > deadline:
                    raise self._failure(
                        f"Home Assistant did not reach state RUNNING within {timeout:.0f} s "
                        f"(last state {state!r})"
                    )
                await asyncio.sleep(0.25)

    async def _request(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json_body: Any = None,
        data: dict[str, str] | None = None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with session.request(
            method, f"{self.url}{path}", headers=headers, json=json_body, data=data
        ) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise self._failure(f"{method} {path} answered {resp.status}: {text[:500]}")
            return json.loads(text) if text else None

    async def _onboard(self) -> None:
        """The onboarding wizard's REST calls, then a long-lived token over the websocket."""
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            user = await self._request(
                session,
                "POST",
                "/api/onboarding/users",
                json_body={
                    "client_id": self.client_id,
                    "name": "Homeport Test",
                    "username": self.username,
                    "password": self.password,
                    "language": "en",
                },
            )
            tokens = await self._request(
                session,
                "POST",
                "/auth/token",
                data={
                    "grant_type": "authorization_code",
                    "code": user["auth_code"],
                    "client_id": self.client_id,
                },
            )
            self.access_token = tokens["access_token"]
            self.refresh_token = tokens["refresh_token"]
            for step in ("core_config", "analytics"):
                await self._request(
                    session, "POST", f"/api/onboarding/{step}", token=self.access_token
                )
            await self._request(
                session,
                "POST",
                "/api/onboarding/integration",
                token=self.access_token,
                json_body={
                    "client_id": self.client_id,
                    "redirect_uri": f"{self.url}/?auth_callback=1",
                },
            )
            self.long_lived_token = await self._long_lived_token(session)

    async def _long_lived_token(self, session: aiohttp.ClientSession) -> str:
        async with session.ws_connect(self.ws_url, max_msg_size=0) as ws:
            hello = await ws.receive_json(timeout=30)
            if hello.get("type") != "auth_required":
                raise self._failure(f"unexpected websocket greeting: {hello}")
            await ws.send_json({"type": "auth", "access_token": self.access_token})
            auth = await ws.receive_json(timeout=30)
            if auth.get("type") != "auth_ok":
                raise self._failure(f"websocket auth failed: {auth}")
            await ws.send_json(
                {
                    "id": 1,
                    "type": "auth/long_lived_access_token",
                    "client_name": "homeport-e2e",
                    "lifespan": 3650,
                }
            )
            result = await ws.receive_json(timeout=30)
            if not result.get("success"):
                raise self._failure(f"auth/long_lived_access_token failed: {result}")
            token: str = result["result"]
            return token


@contextlib.asynccontextmanager
async def start_home_assistant(
    base_dir: Path,
    *,
    port: int | None = None,
    timeout: float = STARTUP_TIMEOUT,
    trust_proxies: bool = True,
    extra_config: str = "",
) -> AsyncIterator[HomeAssistant]:
    """Start (installing if needed) and onboard HA in ``base_dir``; stop it on exit."""
    ha = await HomeAssistant.start(
        base_dir,
        port=port,
        timeout=timeout,
        trust_proxies=trust_proxies,
        extra_config=extra_config,
    )
    try:
        yield ha
    finally:
        await ha.stop()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["install"]:
        try:
            print(ensure_ha_venv())
        except HomeAssistantError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    print(f"usage: {Path(sys.argv[0]).name} install", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
