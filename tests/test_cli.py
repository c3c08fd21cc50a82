"""The command line is a contract: drive it as an operator would, in real processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from ports import reserve_port

from homeport.standin import start_standin

HOMEPORT = [sys.executable, "-m", "homeport.cli"]
PASSWORD = "a long enough passphrase for tests"


def run(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HOMEPORT, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_admin_users_and_keys(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    created = run(
        "admin", "user", "create", "Ana@Example.com", "--data-dir", data, stdin=PASSWORD + "\n"
    )
    assert created.returncode == 0, created.stderr
    again = run("admin", "user", "create", "ana@example.com", "--data-dir", data, stdin=PASSWORD)
    assert again.returncode == 1
    assert "exists" in again.stderr.lower()
    short = run("admin", "user", "create", "bo@example.com", "--data-dir", data, stdin="short")
    assert short.returncode == 1
    listed = run("admin", "user", "list", "--data-dir", data)
    assert listed.stdout.split() == ["ana@example.com"]

    shown = run("keys", "show", "--data-dir", data)
    assert re.fullmatch(r"ed25519:[A-Za-z0-9_-]{43}\n", shown.stdout)
    assert run("keys", "show", "--data-dir", data).stdout == shown.stdout  # stable
    key_file = Path(data) / "server-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # The environment is the second source of options, after flags.
    via_env = run("admin", "user", "list", env={"HOMEPORT_DATA_DIR": data})
    assert via_env.stdout.split() == ["ana@example.com"]


def test_admin_link_rejects_bad_codes(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    run("admin", "user", "create", "ana@example.com", "--data-dir", data, stdin=PASSWORD)
    result = run("admin", "link", "ABCDE-FGHJK", "ana@example.com", "--data-dir", data)
    assert result.returncode == 1
    assert "not valid" in result.stderr


async def _read_until(stream: asyncio.StreamReader, pattern: str, timeout: float) -> re.Match[str]:
    seen = ""
    async with asyncio.timeout(timeout):
        while True:
            line = (await stream.readline()).decode()
            if not line:
                raise AssertionError(f"process ended before {pattern!r}; output: {seen}")
            seen += line
            if match := re.search(pattern, line):
                return match


async def test_relay_addon_link_and_list(tmp_path: Path) -> None:
    """Relay and add-on as separate processes, linked by code, listed as connected."""
    data = str(tmp_path / "relay")
    port = reserve_port()
    assert (
        run(
            "admin", "user", "create", "ana@example.com", "--data-dir", data, stdin=PASSWORD
        ).returncode
        == 0
    )
    pubkey = run("keys", "show", "--data-dir", data).stdout.strip()
    standin, backend = await start_standin()
    relay = await asyncio.create_subprocess_exec(
        *HOMEPORT,
        "relay",
        "--data-dir",
        data,
        "--listen",
        f"127.0.0.1:{port}",
        "--link-poll",  # the link below comes from another process: found by the poll
        "0.2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    addon = None
    try:
        assert relay.stdout is not None
        await _read_until(relay.stdout, "Relay listening", 30)
        addon = await asyncio.create_subprocess_exec(
            *HOMEPORT,
            "addon",
            "--relay",
            f"wss://homeport.localhost:{port}/v1/tunnel",
            "--server-pubkey",
            pubkey,
            "--relay-ca",
            str(Path(data) / "tls" / "dev-ca.pem"),
            "--state-dir",
            str(tmp_path / "addon"),
            "--ha-url",
            backend,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert addon.stdout is not None
        code = (await _read_until(addon.stdout, r"Link code: ([0-9A-Z]{5}-[0-9A-Z]{5})", 30))[1]
        linked = await asyncio.to_thread(
            run, "admin", "link", code.lower(), "ana@example.com", "--data-dir", data
        )
        assert linked.returncode == 0, linked.stderr
        rows: list[dict[str, object]] = []
        async with asyncio.timeout(20):
            while not (rows and rows[0]["connected"]):
                await asyncio.sleep(0.2)
                listed = await asyncio.to_thread(
                    run,
                    "admin",
                    "instance",
                    "list",
                    "--json",
                    "--data-dir",
                    data,
                    "--listen",
                    f"127.0.0.1:{port}",
                )
                rows = json.loads(listed.stdout)
        assert rows[0]["owner"] == "ana@example.com"
        assert rows[0]["url"] == f"https://{rows[0]['id']}.home.localhost:{port}"
        # The code was single use.
        reuse = await asyncio.to_thread(
            run, "admin", "link", code, "ana@example.com", "--data-dir", data
        )
        assert reuse.returncode == 1
        addon.terminate()
        await addon.wait()
        async with asyncio.timeout(20):
            while rows[0]["connected"]:
                await asyncio.sleep(0.2)
                listed = await asyncio.to_thread(
                    run, "admin", "instance", "list", "--json", "--data-dir", data
                )
                rows = json.loads(listed.stdout)
    finally:
        for proc in (addon, relay):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                await proc.wait()
        await standin.cleanup()


def test_link_poll_option(tmp_path: Path) -> None:
    from homeport.cli import build_parser, relay_config

    def config(*argv: str) -> object:
        return relay_config(
            build_parser().parse_args(["relay", "--data-dir", str(tmp_path), *argv])
        )

    assert config().link_poll_seconds == 2.0  # type: ignore[attr-defined]
    assert config("--link-poll", "0.2").link_poll_seconds == 0.2  # type: ignore[attr-defined]
    for bad in ("0", "-1", "61", "soon", "nan"):
        with pytest.raises(SystemExit, match="--link-poll"):
            config("--link-poll", bad)


def test_cluster_options_from_flags_and_toml(tmp_path: Path) -> None:
    """``--redis-url`` / ``--cluster-key-file``, and the same as ``[relay]`` keys."""
    from homeport.cli import build_parser, relay_config

    key = tmp_path / "cluster.key"
    key.write_text("k" * 64 + "\n")
    toml = tmp_path / "relay.toml"
    toml.write_text(f'[relay]\nredis-url = "redis://10.0.0.5:6379/1"\ncluster-key-file = "{key}"\n')

    def config(*argv: str) -> object:
        return relay_config(
            build_parser().parse_args(["relay", "--data-dir", str(tmp_path), *argv])
        )

    single = config()
    assert (single.redis_url, single.cluster_key_file) == (None, None)  # type: ignore[attr-defined]
    flags = config("--redis-url", "redis://127.0.0.1:1/0", "--cluster-key-file", str(key))
    assert flags.redis_url == "redis://127.0.0.1:1/0"  # type: ignore[attr-defined]
    assert flags.cluster_key_file == key  # type: ignore[attr-defined]
    from_file = config("--config", str(toml))
    assert from_file.redis_url == "redis://10.0.0.5:6379/1"  # type: ignore[attr-defined]
    assert from_file.cluster_key_file == key  # type: ignore[attr-defined]
    with pytest.raises(SystemExit, match="--cluster-key-file needs --redis-url"):
        config("--cluster-key-file", str(key))


def test_proxy_protocol_option_from_flags_and_toml(tmp_path: Path) -> None:
    """``--proxy-protocol-from`` (off by default), the ``[relay]`` key, and bad networks."""
    import ipaddress

    from homeport.cli import build_parser, relay_config

    toml = tmp_path / "relay.toml"
    toml.write_text('[relay]\nproxy-protocol-from = "10.0.0.5/32, fd00::/64"\n')

    def config(*argv: str) -> object:
        return relay_config(
            build_parser().parse_args(["relay", "--data-dir", str(tmp_path), *argv])
        )

    assert config().proxy_protocol_from == ()  # type: ignore[attr-defined]
    expected = (ipaddress.ip_network("10.0.0.5/32"), ipaddress.ip_network("fd00::/64"))
    from_file = config("--config", str(toml))
    assert from_file.proxy_protocol_from == expected  # type: ignore[attr-defined]
    flags = config("--proxy-protocol-from", "127.0.0.1/32")
    assert flags.proxy_protocol_from == (ipaddress.ip_network("127.0.0.1/32"),)  # type: ignore[attr-defined]
    for bad in ("10.0.0.5/24", "haproxy", ","):  # host bits set, a name, nothing
        with pytest.raises(SystemExit, match="--proxy-protocol-from"):
            config("--proxy-protocol-from", bad)


@pytest.mark.parametrize("missing", ["--relay", "--server-pubkey"])
def test_addon_requires_relay_and_pin(tmp_path: Path, missing: str) -> None:
    args = {
        "--relay": "wss://homeport.localhost:1/v1/tunnel",
        "--server-pubkey": "ed25519:" + "A" * 43,
    }
    del args[missing]
    flat = [x for pair in args.items() for x in pair]
    result = run("addon", *flat, "--state-dir", str(tmp_path))
    assert result.returncode == 2
    assert "required" in result.stderr
