"""Every wrong input gets one clear line and a non-zero exit, never a traceback.

Each case runs the real ``homeport`` command in its own process, the way an
operator or a new user would type it, and checks the whole of stderr: exactly
one line, starting ``error:``, naming what to fix.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from homeport.cli import build_parser
from homeport.config import ConfigError, check_environment

HOMEPORT = [sys.executable, "-m", "homeport.cli"]
KEY = "ed25519:NWEPpbNCpJwryw5DXDRXHu-G3ujxw0SoCC__Ph2sqz0"
RELAY = "wss://homeport.localhost:8443/v1/tunnel"


def run(
    *args: str, env: dict[str, str] | None = None, stdin: str = "", timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HOMEPORT_", "SUPERVISOR"))}
    return subprocess.run(
        [*HOMEPORT, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, **(env or {})},
        check=False,
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def mistakes(tmp: Path, busy: int) -> list[tuple[str, list[str], dict[str, str], str]]:
    """(what, argv, environment, the text the one line must contain)."""
    data = str(tmp / "relay")
    addon = ["addon", "--state-dir", str(tmp / "addon")]
    typo = tmp / "typo.toml"
    typo.write_text('[relay]\naccont-host = "relay.example"\n')
    section = tmp / "section.toml"
    section.write_text('[rellay]\nlisten = "0.0.0.0:443"\n')
    broken = tmp / "broken.toml"
    broken.write_text("[relay\n")
    not_pem = tmp / "not-a-ca.pem"
    not_pem.write_text("hello\n")
    short_key = tmp / "cluster.key"
    short_key.write_text("secret\n")
    return [
        (
            "a relay URL where the pairing string belongs",
            [*addon, "--pairing", RELAY],
            {},
            "--pairing: a pairing string starts with homeport+wss://",
        ),
        (
            "--pairing with --relay",
            [
                *addon,
                "--pairing",
                "homeport+wss://homeport.localhost/v1/tunnel#" + KEY,
                "--relay",
                RELAY,
            ],
            {},
            "give --pairing, or --relay and --server-pubkey, not both",
        ),
        (
            "malformed --server-pubkey",
            [*addon, "--relay", RELAY, "--server-pubkey", "ed25519:abc"],
            {},
            "--server-pubkey: pinned key #1: malformed Ed25519 public key",
        ),
        (
            "http:// relay URL",
            [*addon, "--relay", "http://relay.example/v1/tunnel", "--server-pubkey", KEY],
            {},
            "--relay must be wss://host[:port]/v1/tunnel, got 'http://relay.example/v1/tunnel'",
        ),
        (
            "--ha-url notaurl (was: retried forever)",
            [*addon, "--relay", RELAY, "--server-pubkey", KEY, "--ha-url", "notaurl"],
            {},
            "--ha-url must be http(s)://host[:port], got 'notaurl'",
        ),
        (
            "missing CA file",
            [*addon, "--relay", RELAY, "--server-pubkey", KEY, "--relay-ca", str(tmp / "no.pem")],
            {},
            f"--relay-ca {tmp / 'no.pem'}: no such file",
        ),
        (
            "a CA file without a certificate",
            [*addon, "--relay", RELAY, "--server-pubkey", KEY, "--relay-ca", str(not_pem)],
            {},
            "no PEM certificate in it",
        ),
        (
            "a Home Assistant folder without a token",
            [*addon, "--relay", RELAY, "--server-pubkey", KEY, "--ha-config", str(tmp)],
            {},
            "--ha-config and --ha-token-file go together",
        ),
        (
            "missing relay and key",
            addon,
            {},
            "--pairing (or --relay and --server-pubkey, or --options) is required",
        ),
        (
            "--tls-cert without --tls-key",
            ["relay", "--data-dir", data, "--tls-cert", str(tmp / "cert.pem")],
            {},
            "--tls-cert needs --tls-key",
        ),
        (
            "missing certificate file",
            ["relay", "--data-dir", data, "--tls-cert", str(tmp / "c.pem"), "--tls-key", data],
            {},
            f"--tls-cert {tmp / 'c.pem'}: no such file",
        ),
        (
            "--listen banana",
            ["relay", "--data-dir", data, "--listen", "banana"],
            {},
            "--listen must be host:port",
        ),
        (
            "breached-password service over plain http",
            ["relay", "--data-dir", data, "--breached-passwords-url", "http://pwned.example"],
            {},
            "--breached-passwords-url: plain http:// is only allowed for a loopback host",
        ),
        (
            "breached-password timeout of zero",
            ["relay", "--data-dir", data, "--breached-passwords-timeout", "0"],
            {},
            "--breached-passwords-timeout must be seconds between 0 and 60, not '0'",
        ),
        (
            "--redis-url without its key",
            ["relay", "--data-dir", data, "--redis-url", "redis://127.0.0.1:6379/0"],
            {},
            "--redis-url needs --cluster-key-file",
        ),
        (
            "--redis-url that is not Redis (its password is not echoed)",
            ["relay", "--data-dir", data, "--redis-url", "http://:hunter2@cache.example"],
            {},
            "--redis-url must be a redis://, rediss:// or unix:// URL",
        ),
        (
            "a cluster key too short, given by the environment",
            ["relay", "--data-dir", data],
            {
                "HOMEPORT_REDIS_URL": "redis://127.0.0.1:6379/0",
                "HOMEPORT_CLUSTER_KEY_FILE": str(short_key),
            },
            "a cluster key needs at least 32 bytes",
        ),
        (
            "a port in use",
            ["relay", "--data-dir", data, "--listen", f"127.0.0.1:{busy}"],
            {},
            f"--listen 127.0.0.1:{busy}: Address already in use",
        ),
        (
            "missing --config file",
            ["relay", "--config", str(tmp / "relay.toml")],
            {},
            f"--config {tmp / 'relay.toml'}: no such file",
        ),
        (
            "a typo in the TOML file",
            ["relay", "--config", str(typo)],
            {},
            "unknown key 'accont-host' in [relay] (did you mean account-host?)",
        ),
        (
            "an unknown TOML section",
            ["relay", "--config", str(section)],
            {},
            "unknown section [rellay] (did you mean relay?)",
        ),
        (
            "a TOML syntax error",
            ["relay", "--config", str(broken)],
            {},
            "not valid TOML",
        ),
        (
            "a typo in a HOMEPORT_ variable",
            ["relay", "--data-dir", data],
            {"HOMEPORT_ACOUNT_HOST": "relay.example"},
            "unknown environment variable HOMEPORT_ACOUNT_HOST "
            "(did you mean HOMEPORT_ACCOUNT_HOST?)",
        ),
        (
            "a public name without a certificate (was: the development CA, silently)",
            ["relay", "--data-dir", data, "--account-host", "relay.example"],
            {"HOMEPORT_TENANT_DOMAIN": "example-homes.net"},
            "no certificate for relay.example and *.example-homes.net",
        ),
        (
            "a public port that is not a number",
            ["relay", "--data-dir", data],
            {"HOMEPORT_PUBLIC_PORT": "https"},
            "--public-port must be a whole number",
        ),
        (
            "an account host that is not a name",
            ["relay", "--data-dir", data, "--account-host", "relay.example:443"],
            {},
            "--account-host must be a DNS name",
        ),
        (
            "a bad log level in the environment",
            ["keys", "show", "--data-dir", data],
            {"HOMEPORT_LOG_LEVEL": "loud"},
            "HOMEPORT_LOG_LEVEL must be one of debug, info, warning, error",
        ),
    ]


def test_each_mistake_gets_one_clear_line(tmp_path: Path, busy_port: int) -> None:
    failures = []
    for what, argv, env, expected in mistakes(tmp_path, busy_port):
        result = run(*argv, env=env)
        lines = result.stderr.strip().splitlines()
        ok = (
            result.returncode != 0
            and len(lines) == 1
            and lines[0].startswith("error: ")
            and expected in lines[0]
            and "Traceback" not in result.stderr
        )
        if not ok:
            failures.append(f"{what}: exit {result.returncode}, stderr {result.stderr!r}")
    assert not failures, "\n".join(failures)


def test_addon_mistakes_exit_2_like_the_options_file(tmp_path: Path) -> None:
    """The add-on's contract (the run script, systemd): 2 means "fix the configuration"."""
    result = run("addon", "--relay", RELAY, "--server-pubkey", KEY, "--ha-url", "ftp://ha")
    assert result.returncode == 2
    assert result.stderr.startswith("error: --ha-url must be http(s)://")


def test_a_public_relay_with_a_certificate_or_acme_passes_the_check(tmp_path: Path) -> None:
    """The refusal is only for the development CA: ACME turns it off (checked without
    starting, by the same function the command runs)."""
    from homeport.cli import _require_real_certificate, relay_config

    args = build_parser().parse_args(
        ["relay", "--data-dir", str(tmp_path), "--account-host", "relay.example"]
    )
    with pytest.raises(ConfigError, match=r"no certificate for relay\.example"):
        _require_real_certificate(relay_config(args))
    args.acme_directory = "https://acme.example/directory"
    args.acme_challenge = "tls-alpn-01"
    _require_real_certificate(relay_config(args))
    local = build_parser().parse_args(["relay", "--data-dir", str(tmp_path)])
    _require_real_certificate(relay_config(local))  # homeport.localhost: the dev CA is fine


def test_environment_check_knows_every_command() -> None:
    from homeport.cli import known_options

    known = known_options()
    # A variable of another command is fine in a shared environment.
    check_environment(known, {"HOMEPORT_RELAY": "wss://x/v1/tunnel", "HOMEPORT_LISTEN": "x"})
    # The test suite's own variables are not options.
    check_environment(known, {"HOMEPORT_TEST_POSTGRES_URL": "x", "HOMEPORT_CACHE": "/tmp"})
    check_environment(known, {"PATH": "/bin", "HOMEPORTX": "not ours"})
    with pytest.raises(ConfigError, match=r"HOMEPORT_TLS_CRT \(did you mean HOMEPORT_TLS_CERT"):
        check_environment(known, {"HOMEPORT_TLS_CRT": "/etc/cert.pem"})
    # Every option documented for the environment is known.
    for name in ("SECURITY_CONTACT", "MAX_BODY_BYTES", "SMTP_HOST", "PANEL_LISTEN", "OPTIONS"):
        assert name.lower() in known, name


def test_toml_keys_take_either_spelling(tmp_path: Path) -> None:
    from homeport.cli import relay_config

    config = tmp_path / "relay.toml"
    config.write_text(
        '[relay]\naccount_host = "homeport.localhost"\npublic-port = 443\n'
        '[addon]\nrelay = "wss://homeport.localhost/v1/tunnel"\n'
    )
    args = build_parser().parse_args(["relay", "--config", str(config)])
    assert relay_config(args).public_port == 443
    config.write_text('[relay]\npublic-port = "https"\n')
    with pytest.raises(ConfigError, match="--public-port must be a whole number"):
        relay_config(args)
    config.write_text("[relay]\nlisten = [1, 2]\n")
    with pytest.raises(ConfigError, match="listen must be a string or a number, not a list"):
        relay_config(args)


def _walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += _walk(sub, f"{path} {name}")
        elif action.option_strings and action.dest != "help" and not action.help:
            missing.append(f"{path} {action.option_strings[0]}")
    return missing


def test_every_option_has_help_text() -> None:
    assert _walk(build_parser(), "homeport") == []


def test_admin_output_is_not_mixed_with_log_lines(tmp_path: Path) -> None:
    data = str(tmp_path / "relay")
    created = run(
        "admin", "user", "create", "ana@example.com", "--data-dir", data,
        stdin="a long enough passphrase for tests\n",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert created.stdout == "Created user ana@example.com\n"
    assert created.stderr == ""
    listed = run("admin", "user", "list", "--data-dir", data)
    assert (listed.stdout, listed.stderr) == ("ana@example.com\n", "")
    # Asked for, the log lines are still there.
    loud = run("--log-level", "info", "admin", "user", "list", "--data-dir", data)
    assert loud.stdout == "ana@example.com\n"
    assert '"level":"info"' in loud.stderr
