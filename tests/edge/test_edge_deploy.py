"""The deployment files in ``packaging/`` say what docs/deploy.md says, and they parse."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from homeport.cli import build_parser, relay_config

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "homeport-relay.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text().replace("\\\n", " "))
    return parser


def test_relay_unit_runs_unprivileged_with_the_documented_listeners(tmp_path: Path) -> None:
    service = _unit()["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/homeport/bin/homeport"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "relay"
    config_file = tmp_path / "relay.toml"
    config_file.write_text('[relay]\naccount-host = "relay.example"\n')
    args.config = str(config_file)
    config = relay_config(args)
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 443)
    assert (config.http_listen_host, config.http_listen_port) == ("0.0.0.0", 80)
    assert str(config.data_dir) == "/var/lib/homeport"
    assert service["User"] == "homeport"
    assert service["AmbientCapabilities"] == service["CapabilityBoundingSet"]
    assert service["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    for setting in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert service[setting] == "yes", setting
    assert service["ProtectSystem"] == "strict"
    assert service["UMask"] == "0077"
    assert service["StateDirectoryMode"] == "0700"


def test_relay_unit_restricts_key_exchange_groups() -> None:
    service = _unit()["Service"]
    assert service["Environment"] == "OPENSSL_CONF=/etc/homeport/openssl.cnf"
    shipped = (REPO / "packaging" / "openssl-groups.cnf").read_text()
    assert "Groups = X25519:P-256:P-384" in shipped
    assert "/etc/homeport/openssl.cnf" in UNIT.read_text()


def test_deploy_guide_covers_what_an_operator_must_do() -> None:
    guide = (REPO / "docs" / "deploy.md").read_text()
    for needle in (
        "CAA",
        "accounturi=",
        "validationmethods=",
        "issuewild",
        "publicsuffix",
        "hstspreload.org",
        "homeport-relay.service",
        "secret-box.key",
        "server-key.pem",
    ):
        assert needle in guide, needle
