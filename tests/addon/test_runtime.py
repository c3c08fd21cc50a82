"""Start-up checks of ``homeport addon``: panel settings, and never forwarding to the panel."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest
from ports import reserve_port

from homeport.addon.runtime import (
    INGRESS_PORT,
    PanelSettings,
    StartupError,
    check_not_panel,
    parse_panel,
)

HOMEPORT = Path(sys.executable).with_name("homeport")
KEY = "ed25519:" + "A" * 43


def test_panel_defaults_follow_the_mode() -> None:
    assert parse_panel(None, None, supervised=True) == PanelSettings(
        "0.0.0.0", INGRESS_PORT, ("172.30.32.2",)
    )
    assert parse_panel(None, None, supervised=False) == PanelSettings(
        "127.0.0.1", INGRESS_PORT, ("127.0.0.1", "::1")
    )
    assert parse_panel("off", None, supervised=True) is None
    assert parse_panel("[::1]:9000", "::1, 127.0.0.1", supervised=False) == PanelSettings(
        "::1", 9000, ("::1", "127.0.0.1")
    )


@pytest.mark.parametrize(
    ("listen", "allow", "message"),
    [
        ("127.0.0.1", None, "host:port or off"),
        ("127.0.0.1:99999", None, "host:port or off"),
        (None, "ingress.local", "IP addresses"),
    ],
)
def test_bad_panel_settings_are_explained(
    listen: str | None, allow: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        parse_panel(listen, allow, supervised=False)


@pytest.mark.parametrize(
    "ha_url", ["http://127.0.0.1:8099", "http://localhost:8099", "https://[::1]:8099"]
)
def test_home_assistant_url_must_not_be_the_panel(ha_url: str) -> None:
    panel = PanelSettings("127.0.0.1", 8099, ("127.0.0.1",))
    with pytest.raises(StartupError, match="the add-on's own panel"):
        check_not_panel(ha_url, panel)


def test_other_urls_are_fine() -> None:
    panel = PanelSettings("127.0.0.1", 8099, ("127.0.0.1",))
    check_not_panel("http://127.0.0.1:8123", panel)
    check_not_panel("http://homeassistant:8099", panel)  # another host
    check_not_panel("http://127.0.0.1:8099", None)  # no panel


async def _addon(*args: str, tmp_path: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(HOMEPORT),
        "addon",
        "--relay",
        "wss://relay.example/v1/tunnel",
        "--server-pubkey",
        KEY,
        "--state-dir",
        str(tmp_path),
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_cli_refuses_to_forward_to_its_own_panel(tmp_path: Path) -> None:
    port = reserve_port()
    code, err = await _addon(
        "--ha-url",
        f"http://127.0.0.1:{port}",
        "--panel-listen",
        f"127.0.0.1:{port}",
        tmp_path=tmp_path,
    )
    assert code == 2
    assert "is the add-on's own panel" in err


async def test_cli_says_when_no_home_assistant_is_found(tmp_path: Path) -> None:
    """Standalone without --ha-url: the loopback probe; nothing listens on 8123 here."""
    code, err = await _addon("--panel-listen", "off", tmp_path=tmp_path)
    assert code == 2
    assert "no Home Assistant found (http://127.0.0.1:8123: nothing listening" in err
    assert "--ha-url" in err


async def test_busy_panel_port_does_not_stop_remote_access(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            str(HOMEPORT),
            "addon",
            "--relay",
            "wss://relay.invalid/v1/tunnel",
            "--server-pubkey",
            KEY,
            "--state-dir",
            str(tmp_path),
            "--ha-url",
            "http://127.0.0.1:8123",
            "--panel-listen",
            f"127.0.0.1:{port}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )
        assert proc.stdout is not None
        try:
            seen = ""
            async with asyncio.timeout(30):
                while "running without it" not in seen:
                    line = (await proc.stdout.readline()).decode()
                    assert line, f"add-on exited: {seen}"
                    seen += line
            await asyncio.sleep(0.5)
            assert proc.returncode is None  # still running, dialling the relay
            proc.terminate()
            assert await asyncio.wait_for(proc.wait(), 20) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
