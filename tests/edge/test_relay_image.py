"""The relay's container image (packaging/relay), tested as the add-on images are.

No container engine runs here: the Dockerfile is parsed and its properties
checked, then the environment it describes is built by following its own
instructions (tests/support/dockerfile_env.py: the wheel of the checkout, a
fresh venv, the wheel installed), and its ENTRYPOINT runs from that venv with a
relay.toml in the image's /etc/homeport, as docs/deploy.md section 9 says: it
serves HTTPS with the given certificate, an admin command of the guide works on
its /data, and SIGTERM stops it cleanly.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import stat
from pathlib import Path

import aiohttp
import pytest
import yaml
from dockerfile_env import Image, Instruction, follow, image_env, labels, only, parse_dockerfile
from dockerfile_env import which as _which
from ports import reserve_port
from stack import PASSWORD

from homeport import __version__
from homeport.tls.devca import ensure_dev_ca

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging" / "relay"
DOCKERFILE = PACKAGING / "Dockerfile"
UID = 10001


ADDON_WHEEL = "/tmp/wheels/homeport-*.whl "
RELAY_WHEEL = '"$(echo /tmp/wheels/homeport-*.whl)[relay]" '


@pytest.fixture(scope="module")
def recipe() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def test_recipe_matches_the_addon_container(recipe: list[Instruction]) -> None:
    """Built like packaging/container/Dockerfile: same base, wheel stage, user, volume."""
    container = parse_dockerfile((ROOT / "packaging" / "container" / "Dockerfile").read_text())
    assert [i.args for i in recipe if i.keyword == "FROM"] == [
        i.args for i in container if i.keyword == "FROM"
    ]
    for keyword in ("COPY", "RUN"):
        # The one difference: the relay installs the wheel with its `relay` extra
        # (the add-on's image installs the package alone).
        assert [i.args for i in recipe if i.keyword == keyword] == [
            i.args.replace(ADDON_WHEEL, RELAY_WHEEL) for i in container if i.keyword == keyword
        ], keyword
    assert only(recipe, "USER").args == f"{UID}:{UID}"
    assert only(recipe, "VOLUME").exec_form() == ["/data"]
    assert only(recipe, "STOPSIGNAL").args == "SIGTERM"
    assert only(recipe, "EXPOSE").args == "8443 8080", "unprivileged ports inside"
    assert only(recipe, "ENTRYPOINT").exec_form() == [
        "homeport", "relay", "--data-dir", "/data", "--config", "/etc/homeport/relay.toml",
    ]  # fmt: skip
    assert image_env(recipe)["PATH"].startswith("/opt/homeport/bin:")
    found = labels(recipe)
    assert found["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert "org.opencontainers.image.version" not in found, "set by the release build"
    assert "ADD" not in {i.keyword for i in recipe}


def test_compose_example() -> None:
    compose = yaml.safe_load((PACKAGING / "compose.yaml").read_text(encoding="utf-8"))
    service = compose["services"]["relay"]
    assert service["ports"] == ["443:8443", "80:8080"]
    assert service["volumes"][0] == "homeport-relay-data:/data"
    assert service["volumes"][1] == "./relay:/etc/homeport:ro"
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]


async def build_image(recipe: list[Instruction], root: Path) -> Image:
    image = Image(
        root,
        {
            "/src": root / "build" / "src",
            "/wheels": root / "build" / "wheels",
            "/tmp/wheels": root / "final" / "tmp" / "wheels",
            "/opt/homeport": root / "final" / "opt" / "homeport",
            "/data": root / "final" / "data",
            "/etc/homeport": root / "final" / "etc" / "homeport",
        },
    )
    # The user-creation RUN needs root and Debian; its effect on /data is reproduced.
    await follow(recipe, image, ROOT, skip=lambda i: i.keyword == "RUN" and "useradd" in i.args)
    image.paths["/data"].mkdir(mode=0o700)
    return image


async def _run(argv: list[str], env: dict[str, str], cwd: Path, stdin: str = "") -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=cwd, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.timeout(900)
async def test_image_environment_serves_and_stops(
    tmp_path: Path, recipe: list[Instruction]
) -> None:
    image = await build_image(recipe, tmp_path / "image")
    wheels = list(image.paths["/wheels"].glob("homeport-*.whl"))
    assert [w.name for w in wheels] == [f"homeport-{__version__}-py3-none-any.whl"]
    venv = image.paths["/opt/homeport"]
    # The operator's relay.toml and certificate files, mounted at /etc/homeport.
    etc = image.paths["/etc/homeport"]
    etc.mkdir(parents=True)
    ca = ensure_dev_ca(tmp_path / "ca")
    cert, key = ca.issue_server_certificate(
        ["homeport.localhost", "*.home.localhost"], tmp_path / "certs"
    )
    port = reserve_port()
    (etc / "relay.toml").write_text(
        "[relay]\n"
        f'listen = "127.0.0.1:{port}"\n'
        'account-host = "homeport.localhost"\n'
        'tenant-domain = "home.localhost"\n'
        f'tls-cert = "{cert}"\n'
        f'tls-key = "{key}"\n'
    )
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    env = image.process_env(HOME=str(home), TMPDIR=str(tmp_path))
    argv = [image.translate(a) for a in only(recipe, "ENTRYPOINT").exec_form()]
    assert _which(argv[0], env) == str(venv / "bin" / "homeport")
    log = tmp_path / "relay.log"
    with log.open("wb") as out:
        relay = await asyncio.create_subprocess_exec(
            _which(argv[0], env), *argv[1:], env=env, cwd=cwd, stdout=out, stderr=out
        )
    try:
        async with asyncio.timeout(60):
            while b"Relay listening" not in log.read_bytes():
                assert relay.returncode is None, log.read_text()
                await asyncio.sleep(0.1)
        context = ssl.create_default_context(cafile=str(tmp_path / "ca" / "tls" / "dev-ca.pem"))
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
            session.get(
                f"https://127.0.0.1:{port}/healthz",
                server_hostname="homeport.localhost",
                headers={"Host": f"homeport.localhost:{port}"},
            ) as r,
        ):
            assert r.status == 200
            assert await r.text() == "ok\n"
        # docs/deploy.md section 9: an admin command on the image's /data.
        created = await _run(
            [_which("homeport", env), "admin", "user", "create", "you@example.com",
             "--config", str(etc / "relay.toml"), "--data-dir", str(image.paths["/data"])],
            env, cwd, stdin=PASSWORD + "\n",
        )  # fmt: skip
        assert created == "Created user you@example.com\n"
        data = image.paths["/data"]
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert {"homeport.db", "server-key.pem"} <= {p.name for p in data.iterdir()}
        assert not list(home.iterdir())
        assert not list(cwd.iterdir())
        relay.send_signal(getattr(signal, only(recipe, "STOPSIGNAL").args))
        assert await asyncio.wait_for(relay.wait(), 30) == 0
    finally:
        if relay.returncode is None:
            relay.kill()
            await relay.wait()
