"""The plain container image for Home Assistant Container users (packaging/container).

No container engine runs here, so the recipe is proven the way
``test_addon_package.py`` proves the add-on's: the Dockerfile is parsed and its
security properties checked (pinned base, no remote ADD, a fixed non-root
user, ``/data`` as a 0700 volume, the exact ENTRYPOINT, a HEALTHCHECK that
needs no curl); then the environment it describes is built from its own
instructions (its COPY lines copy the checkout, its RUN lines run with only
the image paths moved under the test's directory: the wheel, a fresh venv,
the wheel installed into it) and the ENTRYPOINT runs from that venv with
``HOMEPORT_*`` options against a real relay on loopback: it prints a link
code, is linked through the admin command line, serves a request through the
relay to a stand-in Home Assistant, and its HEALTHCHECK command passes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import stat
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from dockerfile_env import (
    Image,
    Instruction,
    final_stage,
    follow,
    image_env,
    labels,
    only,
    parse_dockerfile,
    which,
)
from ports import reserve_port
from relay_process import EMAIL, RelayProcess
from stack import PASSWORD
from test_addon_package import _read_until, link_and_fetch

from homeport import __version__
from homeport.addon import healthcheck
from homeport.addon.panel import Panel, PanelSources
from homeport.cli import build_parser
from homeport.standin import start_standin

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging" / "container"
DOCKERFILE = PACKAGING / "Dockerfile"
VENV_BIN = Path(sys.executable).parent
BASE_IMAGE = re.compile(r"^python:3\.1[1-9]-slim-(bookworm|trixie)$")
UID = 10001


@pytest.fixture(scope="module")
def recipe() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


# ------------------------------------------------------------- the recipe


def test_base_images_are_pinned_python_slim(recipe: list[Instruction]) -> None:
    froms = [i.args.split() for i in recipe if i.keyword == "FROM"]
    assert len(froms) == 2, "a build stage and a final stage"
    assert froms[0][1:] == ["AS", "build"]
    assert len(froms[1]) == 1, "the final stage is the image (no alias needed)"
    images = {f[0] for f in froms}
    assert len(images) == 1, "both stages share one Python, so the venv matches"
    (image,) = images
    assert BASE_IMAGE.match(image), f"{image}: pin a Python minor version and a Debian release"


def test_nothing_is_fetched_outside_pip(recipe: list[Instruction]) -> None:
    assert "ADD" not in {i.keyword for i in recipe}, "COPY only: ADD fetches URLs and unpacks"
    for i in recipe:
        if i.keyword == "RUN":
            assert not re.search(r"\b(curl|wget|git)\b", i.args), i
            assert "--index-url" not in i.args, i
            assert "--extra-index-url" not in i.args, i
            assert "--trusted-host" not in i.args, i


def test_build_stage_makes_a_wheel_of_the_checkout(recipe: list[Instruction]) -> None:
    build = [i for i in recipe if i.stage == 0]
    copies = [i.args.split() for i in build if i.keyword == "COPY"]
    assert copies == [["pyproject.toml", "README.md", "./"], ["src", "./src"]]
    runs = [i.args for i in build if i.keyword == "RUN"]
    assert runs == ["pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ."]
    final = final_stage(recipe)
    assert [i.args for i in final if i.keyword == "COPY"] == ["--from=build /wheels /tmp/wheels"]


def test_runs_as_a_fixed_non_root_user(recipe: list[Instruction]) -> None:
    final = final_stage(recipe)
    user = only(recipe, "USER")
    assert user.args == f"{UID}:{UID}", "numeric, so Kubernetes' runAsNonRoot can check it"
    # Nothing runs as root after the switch, and the user exists with that UID.
    after = final[final.index(user) :]
    assert not [i for i in after if i.keyword == "RUN"]
    create = " ".join(i.args for i in final if i.keyword == "RUN")
    assert f"--uid {UID}" in create
    assert f"--gid {UID}" in create
    assert "--shell /usr/sbin/nologin" in create


def test_data_is_a_private_volume(recipe: list[Instruction]) -> None:
    assert only(recipe, "VOLUME").exec_form() == ["/data"]
    runs = " ".join(i.args for i in final_stage(recipe) if i.keyword == "RUN")
    assert f"install -d -m 0700 -o {UID} -g {UID} /data" in runs


def test_entrypoint_stop_signal_and_healthcheck(recipe: list[Instruction]) -> None:
    assert only(recipe, "ENTRYPOINT").exec_form() == ["homeport", "addon", "--state-dir", "/data"]
    assert "CMD" not in {i.keyword for i in final_stage(recipe)}
    assert only(recipe, "STOPSIGNAL").args == "SIGTERM"
    check = only(recipe, "HEALTHCHECK").args
    options, _, command = check.partition(" CMD ")
    assert json.loads(command) == ["python", "-m", "homeport.addon.healthcheck"]
    assert "curl" not in check
    assert "wget" not in check
    for option in ("--interval=", "--timeout=", "--start-period=", "--retries="):
        assert option in options, option
    # The venv's python and homeport come first on the image's PATH.
    assert image_env(recipe)["PATH"].startswith("/opt/homeport/bin:")
    assert image_env(recipe)["PYTHONUNBUFFERED"] == "1", "the link code must reach the log"


def test_labels_and_no_secrets(recipe: list[Instruction]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    found = labels(recipe)
    # The version is not written here (it has one place, homeport.__version__): the
    # release workflow's builder sets org.opencontainers.image.version.
    assert "org.opencontainers.image.version" not in found
    assert found["org.opencontainers.image.licenses"] == project["license"]
    assert found["org.opencontainers.image.source"].startswith("https://")
    assert found["org.opencontainers.image.title"]
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert not re.search(r"(?i)(token|password|secret|private|pubkey)[\w-]*\s*=", text)
    assert "ARG" not in {i.keyword for i in recipe}


def test_dockerignore_keeps_the_context_to_the_package() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for must in (".git", ".venv", "tests", "data", "**/data", "**/__pycache__"):
        assert must in ignored, must
    for needed in ("pyproject.toml", "README.md", "src"):
        assert needed not in ignored, needed
        assert not any(p.startswith("!") for p in ignored)
    # Nothing the package ships is a data directory, a key or a certificate.
    shipped = [p for p in (ROOT / "src").rglob("*") if "__pycache__" not in p.parts]
    assert not [p for p in shipped if p.name == "data" or p.suffix in {".pem", ".key"}]


def test_compose_example() -> None:
    compose = yaml.safe_load((PACKAGING / "compose.yaml").read_text(encoding="utf-8"))
    service = compose["services"]["homeport"]
    assert service["image"] == "homeport"
    assert service["network_mode"] == "host"
    assert "ports" not in service, "host network: the panel stays on the host's loopback"
    env = service["environment"]
    assert env["HOMEPORT_PANEL_LISTEN"] == "127.0.0.1:8099"
    assert env["HOMEPORT_HA_URL"] == "http://127.0.0.1:8123"
    assert env["HOMEPORT_RELAY"].startswith("wss://")
    # Every HOMEPORT_* name is an option `homeport addon` (or the top level) reads.
    parser = build_parser()
    dests = {"log_level"}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            dests |= {a.dest for a in action.choices["addon"]._actions}
    for key in env:
        assert key.startswith("HOMEPORT_")
        assert key.removeprefix("HOMEPORT_").lower() in dests, key
    volume, target = service["volumes"][0].split(":")[:2]
    assert target == "/data"
    assert volume in compose["volumes"], "a named volume takes the image's owner and 0700"
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert service["restart"] == "unless-stopped"


# ------------------------------------------------------------ /healthz


async def test_healthz_answers_any_peer_and_nothing_else_opens(tmp_path: Path) -> None:
    """The probe is open; it must not open the rest of the panel, nor say anything."""
    import aiohttp

    from homeport.addon.client import AddonStatus
    from homeport.addon.gate import RemoteAccessGate

    status = AddonStatus()
    panel = Panel(
        PanelSources(
            status=lambda: status,
            gate=RemoteAccessGate(tmp_path),
            trust=None,
            ha_how="test",
            account_origin="https://homeport.example",
        ),
        allowed_peers=("172.30.32.2",),  # not us
    )
    await panel.start("127.0.0.1", 0)
    base = f"http://127.0.0.1:{panel.port}"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/healthz") as r:
                assert r.status == 200
                assert await r.text() == "ok\n"
                assert r.headers["Cache-Control"] == "no-store"
            for method, path in (
                ("GET", "/"),
                ("POST", "/healthz"),
                ("GET", "/healthz/"),
                ("GET", "/healthz/../"),
                ("GET", "/static/panel.css"),
                ("POST", "/remote-access"),
            ):
                async with session.request(method, base + path) as r:
                    assert r.status in (403, 404, 405), (method, path, r.status)
                    assert r.status != 404 or path.startswith("/healthz"), path
                    assert "ok" not in (await r.text()).split(), (method, path)
    finally:
        await panel.stop()


def test_healthcheck_probe_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPERVISOR_TOKEN", raising=False)
    monkeypatch.delenv("HOMEPORT_PANEL_LISTEN", raising=False)
    assert healthcheck.probe_url() == "http://127.0.0.1:8099/healthz"
    monkeypatch.setenv("HOMEPORT_PANEL_LISTEN", "0.0.0.0:9000")
    assert healthcheck.probe_url() == "http://127.0.0.1:9000/healthz"
    monkeypatch.setenv("HOMEPORT_PANEL_LISTEN", "[::]:9001")
    assert healthcheck.probe_url() == "http://[::1]:9001/healthz"
    monkeypatch.setenv("HOMEPORT_PANEL_LISTEN", "off")
    assert healthcheck.probe_url() is None


def test_healthcheck_fails_when_nothing_answers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOMEPORT_PANEL_LISTEN", f"127.0.0.1:{reserve_port()}")
    assert healthcheck.main() == 1
    assert capsys.readouterr().out.startswith("unhealthy: http://127.0.0.1:")
    monkeypatch.setenv("HOMEPORT_PANEL_LISTEN", "off")
    assert healthcheck.main() == 1
    monkeypatch.setenv("HOMEPORT_PANEL_LISTEN", "nonsense")
    assert healthcheck.main() == 1
    assert "must be host:port" in capsys.readouterr().out


# ------------------------------------------------- the image, built and run


async def build_image(recipe: list[Instruction], root: Path) -> Image:
    """Follow the Dockerfile: COPY and RUN of each stage, image paths under ``root``."""
    image = Image(
        root,
        {
            "/src": root / "build" / "src",
            "/wheels": root / "build" / "wheels",
            "/tmp/wheels": root / "final" / "tmp" / "wheels",
            "/opt/homeport": root / "final" / "opt" / "homeport",
            "/data": root / "final" / "data",
        },
    )
    # The user-creation RUN needs root and a Debian image; its effect on /data
    # (0700) is reproduced below instead.
    await follow(recipe, image, ROOT, skip=lambda i: i.keyword == "RUN" and "useradd" in i.args)
    image.paths["/data"].mkdir(mode=0o700)
    return image


_which = which


@pytest.mark.timeout(900)
async def test_image_environment_links_and_serves_through_relay(
    tmp_path: Path, recipe: list[Instruction]
) -> None:
    image = await build_image(recipe, tmp_path / "image")
    venv = image.paths["/opt/homeport"]
    assert not list(image.paths["/tmp/wheels"].parent.iterdir()), "the wheel was removed"
    wheels = list(image.paths["/wheels"].glob("homeport-*.whl"))
    assert [w.name for w in wheels] == [f"homeport-{__version__}-py3-none-any.whl"]

    relay = RelayProcess(tmp_path / "relay")
    standin, backend = await start_standin()
    addon: asyncio.subprocess.Process | None = None
    home_dir, tmp_dir, cwd = (tmp_path / n for n in ("home", "tmp", "cwd"))
    for d in (home_dir, tmp_dir, cwd):
        d.mkdir()
    try:
        await relay.start()
        await relay.admin("admin", "user", "create", EMAIL, stdin=PASSWORD + "\n")
        pubkey = (await relay.admin("keys", "show")).strip()
        panel_listen = f"127.0.0.1:{reserve_port()}"
        env = image.process_env(
            HOMEPORT_RELAY=relay.relay_url,
            HOMEPORT_SERVER_PUBKEY=pubkey,
            HOMEPORT_HA_URL=backend,
            HOMEPORT_PANEL_LISTEN=panel_listen,
            HOMEPORT_LOG_LEVEL="debug",
            # The dev relay's certificate comes from its own CA; a real relay's does not.
            HOMEPORT_RELAY_CA=str(relay.ca_path),
            HOME=str(home_dir),
            TMPDIR=str(tmp_dir),
        )
        argv = [image.translate(a) for a in only(recipe, "ENTRYPOINT").exec_form()]
        # The image's PATH finds the venv's homeport, not the test's.
        assert _which(argv[0], env) == str(venv / "bin" / "homeport")
        addon = await asyncio.create_subprocess_exec(
            _which(argv[0], env),
            *argv[1:],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
            cwd=cwd,
        )
        assert addon.stdout is not None
        seen = await _read_until(addon.stdout, r"Link code: [0-9A-Z]{5}-[0-9A-Z]{5}", 60)
        assert f"Home Assistant at {backend}" in seen
        await link_and_fetch(relay, seen, timeout=60)

        # The image's HEALTHCHECK command, in the container's environment.
        check_argv = json.loads(only(recipe, "HEALTHCHECK").args.partition(" CMD ")[2])
        assert _which(check_argv[0], env) == str(venv / "bin" / "python")
        check = await asyncio.create_subprocess_exec(
            _which(check_argv[0], env),
            *check_argv[1:],
            stdout=asyncio.subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
        out, _ = await asyncio.wait_for(check.communicate(), 30)
        assert (check.returncode, out) == (0, b"healthy\n")

        # The state is in /data (0700), and nothing was written anywhere else.
        data = image.paths["/data"]
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert list(data.iterdir())
        assert not list(home_dir.iterdir())
        assert not list(cwd.iterdir())
        assert not list(tmp_dir.iterdir()), "read-only root: /tmp is a tmpfs"

        # STOPSIGNAL: SIGTERM stops it cleanly, and then the health check fails.
        addon.send_signal(getattr(signal, only(recipe, "STOPSIGNAL").args))
        assert await asyncio.wait_for(addon.wait(), 30) == 0
        check = await asyncio.create_subprocess_exec(
            _which(check_argv[0], env),
            *check_argv[1:],
            stdout=asyncio.subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
        out, _ = await asyncio.wait_for(check.communicate(), 30)
        assert check.returncode == 1
        assert out.startswith(b"unhealthy: ")

        # Without options, the image's command says what is missing and exits 2.
        bare = await asyncio.create_subprocess_exec(
            _which(argv[0], env),
            *argv[1:],
            stderr=asyncio.subprocess.PIPE,
            env=image.process_env(HOME=str(home_dir)),
            cwd=cwd,
        )
        _out, err = await asyncio.wait_for(bare.communicate(), 30)
        assert bare.returncode == 2
        assert b"--pairing (or --relay and --server-pubkey, or --options) is required" in err

        # The image has the base install only (`pip install homeport`): everything the
        # add-on needed above, none of the relay's dependencies, and a relay command
        # that says in one line what to install instead of a traceback.
        lean = await asyncio.create_subprocess_exec(
            str(venv / "bin" / "python"),
            "-c",
            "from homeport.extras import RELAY_MODULES, missing_relay_modules\n"
            "assert missing_relay_modules() == list(RELAY_MODULES), missing_relay_modules()",
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
        _out, err = await asyncio.wait_for(lean.communicate(), 30)
        assert lean.returncode == 0, err.decode()
        for command, *rest in (["relay"], ["admin", "user", "list"]):
            relay_cmd = await asyncio.create_subprocess_exec(
                str(venv / "bin" / "homeport"),
                command,
                *rest,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=cwd,
            )
            out, err = await asyncio.wait_for(relay_cmd.communicate(), 30)
            assert relay_cmd.returncode == 1
            assert (out, err.count(b"\n")) == (b"", 1), err.decode()
            assert err.startswith(f"homeport {command} needs the relay's dependencies".encode())
            assert err.endswith(b"pip install 'homeport[relay]'\n")
    finally:
        if addon is not None and addon.returncode is None:
            addon.kill()
            await addon.wait()
        await relay.close()
        await standin.cleanup()
