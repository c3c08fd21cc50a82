"""The Home Assistant add-on folder: its manifest, image recipe and start script.

The manifest checks follow the Supervisor's own rules for ``config.yaml`` (the
add-on configuration page of the Home Assistant developer docs and the
Supervisor's validator): required keys, slug and version formats, known
architectures, option/schema consistency, ingress coherence, translations.

The start script is the real ``rootfs/etc/services.d/homeport/run``, run by
bash with a small test double of bashio (the base image's library is not
installed here) against a relay started by the test: it must start
``homeport addon``, get a link code, and serve a request once linked.
Docker cannot run here, so the Dockerfile is checked by reading it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from dockerfile_env import Image, follow, parse_dockerfile, sh
from ports import reserve_port
from relay_process import EMAIL, RelayProcess
from stack import PASSWORD, Browser

from homeport import __version__
from homeport.relay.config import RelayConfig
from homeport.standin import start_standin

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "homeport_addon"
RUN_SCRIPT = ADDON / "rootfs" / "etc" / "services.d" / "homeport" / "run"
VENV_BIN = Path(sys.executable).parent

# The Supervisor's vocabulary (supervisor/const.py, supervisor/addons/options.py).
ARCH_ALL = {"armhf", "armv7", "aarch64", "amd64", "i386"}
# What Home Assistant's builder actions and base images still build (2026): 64-bit only.
ARCH_BUILT = {"aarch64", "amd64"}
RE_SLUG = re.compile(r"^[-_.A-Za-z0-9]+$")
RE_SCHEMA_ELEMENT = re.compile(
    r"^(?:"
    r"|bool"
    r"|email"
    r"|url"
    r"|port"
    r"|device(?:\(subsystem=[a-z]+\))?"
    r"|str(?:\((?P<s_min>\d+)?,(?P<s_max>\d+)?\))?"
    r"|password(?:\((?P<p_min>\d+)?,(?P<p_max>\d+)?\))?"
    r"|int(?:\((?P<i_min>\d+)?,(?P<i_max>\d+)?\))?"
    r"|float(?:\((?P<f_min>[\d\.]+)?,(?P<f_max>[\d\.]+)?\))?"
    r"|match\((?P<match>.*)\)"
    r"|list\((?P<list>.+)\)"
    r")\??$"
)
RE_BUILD_IMAGE = re.compile(r"^([a-zA-Z\-\.:\d{}]+/)*?([\-\w{}]+)/([\-\w{}]+)(:[\.\-\w{}]+)?$")
# Home Assistant lets a slug be this long in image names and hostnames.
SLUG_MAX = 32


def load_yaml(name: str) -> Any:
    return yaml.safe_load((ADDON / name).read_text(encoding="utf-8"))


def value_satisfies(kind: str, value: object) -> bool:
    """Does a default ``value`` pass the Supervisor schema element ``kind``?"""
    kind = kind.rstrip("?")
    match = RE_SCHEMA_ELEMENT.match(kind)
    assert match, kind
    if match["list"] is not None:
        return isinstance(value, str) and value in match["list"].split("|")
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "url":
        return (
            isinstance(value, str) and re.match(r"^[a-z][a-z0-9+.-]*://[^/\s]+", value) is not None
        )
    if kind == "port":
        return isinstance(value, int) and 1 <= value <= 65535
    if kind.startswith(("str", "password", "email", "device")):
        return isinstance(value, str)
    if kind.startswith("int"):
        return isinstance(value, int) and not isinstance(value, bool)
    if kind.startswith("float"):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if match["match"] is not None:
        return isinstance(value, str) and re.fullmatch(match["match"], value) is not None
    raise AssertionError(f"unhandled schema element {kind}")


# ------------------------------------------------------------------- manifest


def test_repository_yaml() -> None:
    repo = yaml.safe_load((ROOT / "repository.yaml").read_text(encoding="utf-8"))
    assert isinstance(repo["name"], str)
    assert repo["name"]
    assert repo["url"].startswith("https://")
    assert repo["maintainer"]


def test_config_required_keys_and_formats() -> None:
    config = load_yaml("config.yaml")
    for key in ("name", "version", "slug", "description", "arch"):
        assert key in config, f"config.yaml lacks required key {key}"
    assert isinstance(config["version"], str), "quote the version, or YAML makes it a number"
    assert config["version"] == __version__
    assert RE_SLUG.match(config["slug"])
    assert len(config["slug"]) <= SLUG_MAX
    assert config["slug"] == "homeport"
    assert config["url"].startswith("https://")
    assert config["arch"]
    assert set(config["arch"]) <= ARCH_ALL
    assert set(config["arch"]) <= ARCH_BUILT, "the builder makes no image for other arches"
    assert len(set(config["arch"])) == len(config["arch"])
    # s6-overlay is the init in the base images; Docker's init must be off.
    assert config["init"] is False
    assert config["homeassistant_api"] is True
    # Supervisor API for /core/info only, with the default (least) role.
    assert config["hassio_api"] is True
    assert config.get("startup", "application") in {
        "initialize",
        "system",
        "services",
        "application",
        "once",
    }
    # Least privilege: none of the host-wide switches.
    for risky in ("host_network", "privileged", "full_access", "docker_api", "hassio_role"):
        assert risky not in config, risky
    assert config.get("apparmor", True) is True
    # Only Home Assistant's configuration folder, for the panel's "trust the add-on".
    assert config["map"] == ["homeassistant_config:rw"]
    # Prebuilt images, as the official example add-ons ship them (one multi-arch name).
    assert RE_BUILD_IMAGE.match(config["image"])
    assert "{arch}" not in config["image"], "one multi-arch manifest, not an image per arch"


def test_urls_are_in_step_and_marked_for_the_publisher() -> None:
    """The repository's URL is written in three places; they must name one repository."""
    config = load_yaml("config.yaml")
    repo = yaml.safe_load((ROOT / "repository.yaml").read_text(encoding="utf-8"))
    url = repo["url"]
    match = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+)", url)
    assert match, url
    assert config["url"] == url
    assert config["image"] == f"ghcr.io/{match[1].lower()}/homeport-addon"
    for path in (ROOT / "repository.yaml", ADDON / "config.yaml"):
        assert "PUBLISHER:" in path.read_text(encoding="utf-8"), path
    for dockerfile in ("packaging/container/Dockerfile", "packaging/relay/Dockerfile"):
        assert f'org.opencontainers.image.source="{url}"' in (ROOT / dockerfile).read_text()


def test_ingress_is_coherent() -> None:
    config = load_yaml("config.yaml")
    assert config["ingress"] is True
    assert isinstance(config["ingress_port"], int)
    assert 1024 <= config["ingress_port"] <= 65535
    assert "ports" not in config or config["ingress_port"] not in {
        int(p.split("/")[0]) for p in config["ports"]
    }
    assert "webui" not in config, "ingress replaces webui"
    assert re.fullmatch(r"mdi:[a-z0-9-]+", config["panel_icon"])
    assert config["panel_title"]


def test_options_match_schema_and_translations() -> None:
    config = load_yaml("config.yaml")
    options: dict[str, Any] = config["options"]
    schema: dict[str, str] = config["schema"]
    for key, kind in schema.items():
        assert isinstance(kind, str), key
        assert RE_SCHEMA_ELEMENT.match(kind), (key, kind)
    for key, default in options.items():
        assert key in schema, f"option {key} has no schema entry"
        # null = mandatory without a default: the owner must fill it in.
        if default is not None:
            assert value_satisfies(schema[key], default), (key, default)
    for key, kind in schema.items():
        if key not in options:
            assert kind.endswith("?"), f"{key} is neither in options nor optional"
    # One pairing string, or its two halves (automation): none of the three is required alone.
    relay = (schema["pairing"], schema["relay_url"], schema["relay_keys"])
    assert relay == ("str?", "url?", "str?")
    assert schema["log_level"] == "list(debug|info|warning|error)"
    # The add-on's own validator accepts exactly these keys.
    from homeport.addon.options import KNOWN_KEYS, LOG_LEVELS

    assert set(schema) == KNOWN_KEYS
    assert schema["log_level"] == f"list({'|'.join(LOG_LEVELS)})"

    translations = load_yaml("translations/en.yaml")
    described = translations["configuration"]
    assert set(described) == set(schema), "every option, and only those, is translated"
    for key, text in described.items():
        assert text["name"].strip(), key
        assert text["description"].strip(), key


def test_dockerfile_base_image_and_no_build_yaml() -> None:
    """The official multi-arch Python base image; build.yaml is gone (the builder
    actions take BUILD_FROM from the Dockerfile, as the official example does)."""
    assert not (ADDON / "build.yaml").exists()
    recipe = parse_dockerfile((ADDON / "Dockerfile").read_text(encoding="utf-8"))
    arg = recipe[0]
    assert arg.keyword == "ARG"
    name, _, default = arg.args.partition("=")
    assert name == "BUILD_FROM"
    assert re.fullmatch(r"ghcr\.io/home-assistant/base-python:3\.1[2-9]-alpine3\.\d+", default)
    assert recipe[1].keyword == "FROM"
    assert recipe[1].args in ("${BUILD_FROM}", "$BUILD_FROM")


def test_dockerfile_recipe() -> None:
    recipe = parse_dockerfile((ADDON / "Dockerfile").read_text(encoding="utf-8"))
    text = (ADDON / "Dockerfile").read_text(encoding="utf-8")
    words = [i.keyword for i in recipe]
    copies = [i.args for i in recipe if i.keyword == "COPY"]
    assert copies == ["wheels /tmp/wheels", "rootfs /"]
    runs = [i.args for i in recipe if i.keyword == "RUN"]
    # The wheel of this checkout, never a release from a package index.
    install = shlex.split(runs[0].split("&&")[0])
    assert install[:2] == ["pip", "install"]
    assert [a for a in install if not a.startswith("-") and "://" not in a][2:] == [
        "/tmp/wheels/homeport-*-py3-none-any.whl"
    ]
    assert "homeport==" not in text
    assert "chmod a+x /etc/services.d/homeport/run /etc/services.d/homeport/finish" in runs
    # No credentials baked into the image, no ENTRYPOINT/CMD overriding s6's /init.
    assert not re.search(r"(?i)(token|password|secret|private)[\w-]*\s*=", text)
    assert "ENTRYPOINT" not in words
    assert "CMD" not in words
    assert "ADD" not in words
    for script in (RUN_SCRIPT, RUN_SCRIPT.with_name("finish")):
        assert os.access(script, os.X_OK), script
    # The release step puts the wheel there; it never lands in git.
    assert "homeport_addon/wheels/" in (ROOT / ".gitignore").read_text().splitlines()


def test_finish_script_halts_on_a_configuration_error() -> None:
    """As in the official example: a failing add-on stops, instead of s6 looping it."""
    text = RUN_SCRIPT.with_name("finish").read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bashio\n")
    assert "/run/s6-linux-init-container-results/exitcode" in text
    assert "exec /run/s6/basedir/bin/halt" in text


APPARMOR_PARSER = shutil.which("apparmor_parser") or "/sbin/apparmor_parser"


def _compile_profile(path: Path) -> subprocess.CompletedProcess[str]:
    """Compile a profile as the Supervisor's host would, without loading it (no kernel)."""
    return subprocess.run(
        [APPARMOR_PARSER, "--skip-kernel-load", "--skip-cache", "-Q", "-I", "/etc/apparmor.d",
         str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_apparmor_profile_follows_the_official_example(tmp_path: Path) -> None:
    text = (ADDON / "apparmor.txt").read_text(encoding="utf-8")
    assert text.startswith("#include <tunables/global>\n")
    header = r"^profile homeport flags=\(attach_disconnected,mediate_deleted\) \{"
    assert re.search(header, text, re.MULTILINE), "the outer profile is named after the slug"
    # The add-on process runs in a child profile that receives s6's signals.
    assert "/usr/local/bin/homeport cx -> homeport_addon," in text
    assert re.search(
        r"^  profile homeport_addon flags=\(attach_disconnected,mediate_deleted\)", text, re.M
    )
    assert "signal (receive) peer=*_homeport," in text
    assert "/data/** rw" in text
    # Of Home Assistant's configuration, only configuration.yaml and our backups.
    config_rules = re.findall(r"^\s*(/homeassistant/\S*) (\w+),$", text, re.M)
    assert config_rules == [
        ("/homeassistant/", "r"),
        ("/homeassistant/configuration.yaml", "rw"),
        ("/homeassistant/configuration.yaml.homeport-*", "rw"),
    ]
    compiled = _compile_profile(ADDON / "apparmor.txt")
    assert compiled.returncode == 0, compiled.stderr
    # The check can fail: a broken rule does not compile.
    broken = tmp_path / "apparmor.txt"
    broken.write_text(text.replace("/data/** rw,", "/data/** rw"))
    assert _compile_profile(broken).returncode != 0


def test_store_readme_and_licence() -> None:
    readme = (ADDON / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# Home Assistant add-on: Homeport\n")
    for arch in load_yaml("config.yaml")["arch"]:
        assert f"Supports {arch} Architecture" in readme
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0"
    assert "Apache License\n                           Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence
    assert "APPENDIX: How to apply the Apache License to your work." in licence
    assert len(licence) > 11_000, "the full text, not a pointer to it"


def load_release() -> Any:
    """``packaging/release.py`` (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("release", ROOT / "packaging" / "release.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["release"] = module
    spec.loader.exec_module(module)
    return module


def test_version_has_one_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = load_release()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "version" not in project
    assert project["dynamic"] == ["version"]
    assert release.check() == __version__
    # set-version changes both copies; check refuses a mismatch, a wrong tag, a missing
    # CHANGELOG section.
    for name in ("INIT", "MANIFEST", "CHANGELOG"):
        original: Path = getattr(release, name)
        copy = tmp_path / original.name
        shutil.copy(original, copy)
        monkeypatch.setattr(release, name, copy)
    with pytest.raises(release.ReleaseError, match=r"tag v9\.9\.9 does not name"):
        release.check("v9.9.9")
    release.set_version("9.9.9")
    with pytest.raises(release.ReleaseError, match=r"no '## 9\.9\.9' section"):
        release.check()
    release.CHANGELOG.write_text("# Changelog\n\n## 9.9.9\n\n- x\n")
    assert release.check("v9.9.9") == "9.9.9"
    release.MANIFEST.write_text(release.MANIFEST.read_text().replace("9.9.9", "9.9.8"))
    with pytest.raises(release.ReleaseError, match=r"config\.yaml says 9\.9\.8"):
        release.check()


@pytest.mark.parametrize(("name", "size"), [("icon.png", (128, 128)), ("logo.png", (250, 100))])
def test_images_are_valid_png(name: str, size: tuple[int, int]) -> None:
    data = (ADDON / name).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == size
    assert data.endswith(b"IEND\xaeB`\x82")


def test_docs_and_changelog_present() -> None:
    docs = (ADDON / "DOCS.md").read_text(encoding="utf-8")
    for key in load_yaml("config.yaml")["schema"]:
        assert f"`{key}`" in docs, f"DOCS.md does not explain {key}"
    changelog = (ADDON / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## {__version__}" in changelog


# --------------------------------------------------------------- start script

# A stand-in for the parts of bashio the run script uses. Real bashio reads the
# options from the Supervisor API (the same content as /data/options.json).
BASHIO_DOUBLE = """#!/usr/bin/env bash
# Test double of bashio: defines the functions, then runs the script like bashio does.
__options="${{HOMEPORT_OPTIONS:-/data/options.json}}"
bashio::config() {{
    "{python}" -c '
import json, sys
value = json.load(open(sys.argv[1])).get(sys.argv[2])
print("" if value is None else value)' "$__options" "$1"
}}
bashio::config.has_value() {{ [[ -n "$(bashio::config "$1")" ]]; }}
bashio::var.is_empty() {{ [[ -z "${{1:-}}" ]]; }}
bashio::log.level() {{ echo "bashio-double: log level $1"; }}
bashio::log.info() {{ echo "bashio-double: info: $*"; }}
bashio::log.warning() {{ echo "bashio-double: warning: $*"; }}
set -e
# shellcheck disable=SC1090
source "$1"
"""


@dataclass
class ScriptHome:
    """What :class:`stack.Browser` needs to sign in to a home run by the script."""

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


async def _read_until(stream: asyncio.StreamReader, pattern: str, timeout: float) -> str:
    seen = ""
    async with asyncio.timeout(timeout):
        while True:
            line = (await stream.readline()).decode(errors="replace")
            if not line:
                raise AssertionError(f"script ended before {pattern!r}; output: {seen}")
            seen += line
            if re.search(pattern, line):
                return seen


async def link_and_fetch(relay: RelayProcess, seen: str, *, timeout: float) -> None:
    """Link the add-on by the last code it printed, then fetch through the relay."""
    code = re.findall(r"Link code: ([0-9A-Z]{5}-[0-9A-Z]{5})", seen)[-1]
    linked = await relay.admin("admin", "link", code, EMAIL)
    instance_id = re.search(r"Linked instance (\S+) to", linked)
    assert instance_id, linked
    home = ScriptHome(relay.config, relay.ca_path, instance_id[1])
    async with Browser(home) as browser:  # type: ignore[arg-type]
        async with asyncio.timeout(timeout):
            while True:  # the add-on reconnects as linked right after the link
                page = await browser.sign_in("/bytes/1000")
                if page.status == 200:
                    break
                await asyncio.sleep(0.2)
        async with browser.request("GET", home.tenant_origin + "/bytes/12345") as r:
            assert r.status == 200
            assert len(await r.read()) == 12345


def script_env(
    tmp_path: Path, options: Path, relay: RelayProcess | None, bin_dir: Path = VENV_BIN
) -> dict[str, str]:
    # No PYTHONPATH: the image's Python must find the package it installed, nothing else.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HOMEPORT_", "SUPERVISOR", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        SUPERVISOR_TOKEN="simulated-supervisor-token",
        HOMEPORT_OPTIONS=str(options),
        HOMEPORT_STATE_DIR=str(tmp_path / "data"),
        # The panel's add-on default is 0.0.0.0:8099 (ingress_port); tests stay on loopback.
        HOMEPORT_PANEL_LISTEN=f"127.0.0.1:{reserve_port()}",
        HOME=str(tmp_path / "home"),
    )
    if relay is not None:
        # The dev relay's certificate comes from its own CA; a real relay's does not.
        env["HOMEPORT_RELAY_CA"] = str(relay.ca_path)
    return env


# ---------------------------------------------------- the image, built and run

#: Home Assistant's musllinux wheel index is on the internet; here PyPI (through the
#: machine's pip configuration) serves the same packages as manylinux wheels.
_OUTSIDE_INDEX = re.compile(r"--extra-index-url\s+\S+")


@dataclass
class AddonImage:
    """What the add-on image holds, built here by following its Dockerfile."""

    image: Image
    venv: Path  # the image's /usr/local (its Python and everything pip installed)

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    @property
    def run_script(self) -> Path:
        return self.image.root / "etc" / "services.d" / "homeport" / "run"


async def build_addon_image(root: Path) -> AddonImage:
    """The wheel (the release step), then every instruction of homeport_addon/Dockerfile.

    The RUN line's ``pip install`` installs exactly what the image installs (the
    wheel, with the dependency set it declares) into a fresh venv standing for the
    base image's ``/usr/local``.
    """
    context = root / "context"
    shutil.copytree(ADDON, context, ignore=shutil.ignore_patterns("wheels"))
    load_release().addon_context(wheels=context / "wheels")
    venv = root / "usr-local"
    await sh(f"{sys.executable} -m venv {venv}", cwd=root, env=dict(os.environ), timeout=120)
    image = Image(
        root / "fs",
        {"/tmp/wheels": root / "fs" / "tmp" / "wheels", "/etc": root / "fs" / "etc"},
    )
    image.root.mkdir()
    recipe = parse_dockerfile((ADDON / "Dockerfile").read_text(encoding="utf-8"))
    await follow(
        recipe,
        image,
        context,
        run_path=str(venv / "bin"),
        rewrite=lambda command: _OUTSIDE_INDEX.sub("", command),
    )
    return AddonImage(image, venv)


@pytest.fixture(scope="module")
def addon_image(tmp_path_factory: pytest.TempPathFactory) -> AddonImage:
    return asyncio.run(build_addon_image(tmp_path_factory.mktemp("addon-image")))


def bashio_double(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "bashio"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(BASHIO_DOUBLE.format(python=sys.executable), encoding="utf-8")
    path.chmod(0o755)
    return path


def test_run_script_shebang() -> None:
    first = RUN_SCRIPT.read_text(encoding="utf-8").splitlines()[0]
    assert first == "#!/usr/bin/with-contenv bashio"


@pytest.mark.timeout(900)
async def test_run_script_starts_addon_that_links_and_serves(
    tmp_path: Path, addon_image: AddonImage
) -> None:
    """The image as the Supervisor runs it: its run script, its Python environment,
    a Supervisor-style options.json, a real relay, a link, a request through it."""
    installed = addon_image.bin / "homeport"
    assert installed.exists(), "the RUN line installed the wheel's entry point"
    relay = RelayProcess(tmp_path / "relay")
    standin, backend = await start_standin()
    script: asyncio.subprocess.Process | None = None
    try:
        await relay.start()
        await relay.admin("admin", "user", "create", EMAIL, stdin=PASSWORD + "\n")
        pubkey = (await relay.admin("keys", "show")).strip()
        (tmp_path / "data").mkdir()
        options = tmp_path / "data" / "options.json"
        options.write_text(
            json.dumps(
                {
                    "relay_url": relay.relay_url,
                    "relay_keys": pubkey,
                    "log_level": "debug",
                    "ha_url": backend,
                }
            ),
            encoding="utf-8",
        )
        env = script_env(tmp_path, options, relay, addon_image.bin)
        script = await asyncio.create_subprocess_exec(
            "bash",
            str(bashio_double(tmp_path)),
            str(addon_image.run_script),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
            cwd=tmp_path,
        )
        assert script.stdout is not None
        seen = await _read_until(script.stdout, r"Link code: [0-9A-Z]{5}-[0-9A-Z]{5}", 30)
        assert "bashio-double: log level debug" in seen
        assert f"Home Assistant at {backend}" in seen
        assert "SUPERVISOR_TOKEN is not set" not in seen
        # The add-on's state (its key) is in the state directory, /data here.
        assert {p.name for p in (tmp_path / "data").iterdir()} - {"options.json"}
        await link_and_fetch(relay, seen, timeout=30)
        # The ingress panel is up and, under the Supervisor, serves only its ingress proxy.
        panel = "http://" + env["HOMEPORT_PANEL_LISTEN"] + "/"
        async with aiohttp.ClientSession() as session, session.get(panel) as r:
            assert r.status == 403
        # The script exec'd homeport: SIGTERM reaches the add-on, which stops cleanly.
        script.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(script.wait(), 20) == 0
    finally:
        if script is not None and script.returncode is None:
            script.kill()
            await script.wait()
        await relay.close()
        await standin.cleanup()


async def test_run_script_reports_bad_options(tmp_path: Path, addon_image: AddonImage) -> None:
    (tmp_path / "data").mkdir()
    options = tmp_path / "data" / "options.json"
    options.write_text(json.dumps({"relay_url": "https://relay.example/v1/tunnel"}), "utf-8")
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(bashio_double(tmp_path)),
        str(addon_image.run_script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=script_env(tmp_path, options, None, addon_image.bin),
        cwd=tmp_path,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "option 'relay_keys' is required" in err.decode()


def test_systemd_unit() -> None:
    unit = (ROOT / "packaging" / "homeport-addon.service").read_text(encoding="utf-8")
    sections = re.findall(r"^\[(\w+)\]$", unit, re.MULTILINE)
    assert sections == ["Unit", "Service", "Install"]
    exec_start = re.search(r"^ExecStart=((?:.*\\\n)*.*)$", unit, re.MULTILINE)
    assert exec_start
    argv = shlex.split(exec_start[1].replace("\\\n", " "))
    assert argv[0].endswith("/bin/homeport")
    assert argv[argv.index("addon") + 1 :] == [
        "--options",
        "/etc/homeport/addon.json",
        "--state-dir",
        "/var/lib/homeport-addon",
    ]
    assert "StateDirectory=homeport-addon" in unit
    assert "DynamicUser=yes" in unit
    assert "Restart=always" in unit


def test_the_wheel_carries_every_file_the_package_reads(tmp_path: Path) -> None:
    """Templates, static files, mail texts, migrations: all of src/homeport is in the
    wheel the images install (the mail templates once were not, and a relay installed
    from the wheel could not start; found by tests/edge/test_deploy_guide.py)."""
    import zipfile

    wheel = load_release().addon_context(wheels=tmp_path / "wheels")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.startswith("homeport/")}
    source = ROOT / "src"
    expected = {
        str(path.relative_to(source))
        for path in (source / "homeport").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert expected - shipped == set()
