"""docs/install.md section 3 (Home Assistant Core: pip and systemd), followed command by
command: the venv from the wheel of this checkout, the options file of the guide, the
installed unit's own ExecStart, the link code from its log, a link, a request through
the relay to Home Assistant (a stand-in).

Replaced, and only these: ``/opt``, ``/etc`` and ``/var/lib`` by directories under the
test's, ``pip install homeport`` by the wheel (no release on PyPI yet), the relay's URL
and key by a relay the test runs (with its development CA, which the add-on is told to
trust: a public relay's certificate needs no such option), Home Assistant by a
stand-in, ``sudo`` dropped and ``systemctl enable --now`` played by starting the unit's
``ExecStart``, ``journalctl -f`` by reading the add-on's output.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from guide_walk import (
    REPO,
    Translation,
    as_root_would,
    blocks,
    build_wheel,
    commands,
    section,
    sh,
    unit_command,
)
from ports import reserve_port
from relay_process import EMAIL, RelayProcess
from stack import PASSWORD
from test_addon_package import _read_until, link_and_fetch

from homeport.standin import start_standin

GUIDE = REPO / "docs" / "install.md"
HEADING = "## 3. Home Assistant Core: pip and systemd"


def test_the_section_is_what_the_test_follows() -> None:
    found = blocks(section(GUIDE, HEADING))
    assert [b.kind for b in found] == ["sh", "file", "sh"]
    assert found[1].path == "/etc/homeport/addon.json"
    options = json.loads(found[1].text)
    assert set(options) == {"relay_url", "relay_keys", "ha_url"}


@pytest.mark.timeout(900)
async def test_install_guide_core_section(tmp_path: Path) -> None:
    root, work = tmp_path / "machine", tmp_path / "work"
    for directory in (root / "etc/systemd/system", root / "home", root / "tmp", work):
        directory.mkdir(parents=True)
    wheel = await build_wheel(tmp_path / "dist")
    relay = RelayProcess(tmp_path / "relay")
    standin, backend = await start_standin()
    addon: asyncio.subprocess.Process | None = None
    try:
        await relay.start()
        await relay.admin("admin", "user", "create", EMAIL, stdin=PASSWORD + "\n")
        pubkey = (await relay.admin("keys", "show")).strip()
        translate = Translation(
            [
                ("pip install homeport", f"pip install {wheel}"),
                ("packaging/", f"{REPO}/packaging/"),
                ("/etc/systemd/system/", f"{root}/etc/systemd/system/"),
                ("/etc/homeport", f"{root}/etc/homeport"),
                ("/var/lib/homeport-addon", f"{root}/var/lib/homeport-addon"),
                ("/opt/homeport", f"{root}/opt/homeport"),
                ("wss://homeport.example/v1/tunnel", relay.relay_url),
                ("ed25519:…", pubkey),
                ("http://127.0.0.1:8123", backend),
            ]
        )
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("HOMEPORT_", "PYTHON", "VIRTUAL_ENV", "SUPERVISOR"))
        }
        env.update(HOME=str(root / "home"), TMPDIR=str(root / "tmp"))
        seen = ""
        for block in blocks(section(GUIDE, HEADING)):
            if block.kind == "file":
                path = Path(translate.apply(block.path))
                path.write_text(translate.apply(block.text))
                continue
            for line in commands(block):
                command = as_root_would(line)
                assert command is not None
                if command.startswith("systemctl daemon-reload && systemctl enable --now "):
                    unit = root / "etc/systemd/system/homeport-addon.service"
                    argv, unit_env = unit_command(unit, translate)
                    state = root / "var/lib/homeport-addon"  # StateDirectory=, mode 0700
                    state.mkdir(parents=True, mode=0o700)
                    (root / "addon-home").mkdir()
                    addon = await asyncio.create_subprocess_exec(
                        *argv,
                        env={
                            **env,
                            **unit_env,
                            # Test only: the test relay's certificate is from its dev CA.
                            "HOMEPORT_RELAY_CA": str(relay.ca_path),
                            "HOMEPORT_PANEL_LISTEN": f"127.0.0.1:{reserve_port()}",
                            "HOME": str(root / "addon-home"),
                        },
                        cwd=work,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.DEVNULL,
                    )
                elif command.startswith("journalctl -u homeport-addon"):
                    assert addon is not None
                    assert addon.stdout is not None
                    seen = await _read_until(
                        addon.stdout, r"Link code: [0-9A-Z]{5}-[0-9A-Z]{5}", 60
                    )
                else:
                    await sh(translate.apply(command), cwd=work, env=env)
        assert f"Home Assistant at {backend} (configured)" in seen
        await link_and_fetch(relay, seen, timeout=60)
        # The add-on's identity is in the unit's state directory, nowhere else.
        assert (root / "var/lib/homeport-addon/addon-key.pem").exists()
        assert not list((root / "addon-home").iterdir())
    finally:
        if addon is not None and addon.returncode is None:
            addon.terminate()
            await asyncio.wait_for(addon.wait(), 30)
        await relay.close()
        await standin.cleanup()
