"""``/data/options.json``: strict validation with errors that name the option."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from homeport.addon.options import OptionsError, load_options, parse_options
from homeport.keys import public_key_raw, public_key_text


def fixed_key(seed: int) -> str:
    """A key made from a fixed seed: the parameters' ids must be the same in every
    pytest-xdist worker, so nothing random may reach them."""
    return public_key_text(Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32).public_key())


KEY_A = fixed_key(1)
KEY_B = fixed_key(2)
GOOD: dict[str, Any] = {
    "relay_url": "wss://relay.example/v1/tunnel",
    "relay_keys": KEY_A,
    "log_level": "info",
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "options.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_good_options(tmp_path: Path) -> None:
    options = load_options(write(tmp_path, {**GOOD, "relay_keys": f"{KEY_A}, {KEY_B} {KEY_A}"}))
    assert options.relay_url == GOOD["relay_url"]
    assert [public_key_text(k) for k in options.pinned_keys] == [KEY_A, KEY_B]
    assert options.log_level == "info"
    assert options.ha_url is None


def test_defaults_and_optional_ha_url() -> None:
    options = parse_options(
        {
            "relay_url": GOOD["relay_url"],
            "relay_keys": KEY_A,
            "ha_url": "https://homeassistant:8123",
        }
    )
    assert options.log_level == "info"
    assert options.ha_url == "https://homeassistant:8123"
    assert public_key_raw(options.pinned_keys[0]) == public_key_raw(
        parse_options(GOOD).pinned_keys[0]
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"relay_url": None}, "option 'relay_url' is required"),
        ({"relay_keys": None}, "option 'relay_keys' is required"),
        ({"relay_url": ""}, "option 'relay_url' is empty"),
        ({"relay_keys": "   "}, "option 'relay_keys' is empty"),
        ({"relay_url": 443}, "option 'relay_url' must be a string, not int"),
        ({"relay_url": "https://relay.example/v1/tunnel"}, "must be wss://"),
        ({"relay_url": "ws://relay.example/v1/tunnel"}, "must be wss://"),
        ({"relay_url": "wss:///v1/tunnel"}, "must be wss://"),
        ({"relay_url": "wss://u:p@relay.example/v1/tunnel"}, "must not carry credentials"),
        ({"relay_url": "wss://relay.example/v1/tunnel?x=1"}, "must not carry credentials"),
        ({"relay_keys": "ed25519:short"}, "option 'relay_keys': pinned key #1"),
        ({"relay_keys": f"{KEY_A} nonsense"}, "option 'relay_keys': pinned key #2"),
        ({"relay_keys": ["a"]}, "option 'relay_keys' must be a string, not list"),
        ({"log_level": "verbose"}, "option 'log_level' must be one of debug, info"),
        ({"log_level": True}, "option 'log_level' must be a string"),
        ({"ha_url": "ftp://homeassistant"}, "option 'ha_url' must be http(s)://"),
        ({"ha_url": "http://user:pw@homeassistant:8123"}, "option 'ha_url' must not carry"),
        ({"relay_key": KEY_A}, "unknown option(s) relay_key"),
    ],
)
def test_bad_options(change: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionsError) as caught:
        parse_options({**GOOD, **change})
    assert message in str(caught.value)


@pytest.mark.parametrize("data", [[], "x", None, 3])
def test_top_level_must_be_an_object(data: object) -> None:
    with pytest.raises(OptionsError, match="must be a JSON object"):
        parse_options(data)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(OptionsError, match="does not exist"):
        load_options(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"relay_url": ', encoding="utf-8")
    with pytest.raises(OptionsError, match=r"not valid JSON \(line 1"):
        load_options(broken)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{}")
    with pytest.raises(OptionsError, match="not UTF-8"):
        load_options(binary)
    directory = tmp_path / "dir.json"
    directory.mkdir()
    with pytest.raises(OptionsError, match="cannot read"):
        load_options(directory)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEPORT_")}
    return subprocess.run(
        [sys.executable, "-m", "homeport.cli", "addon", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_cli_rejects_bad_options_file(tmp_path: Path) -> None:
    path = write(tmp_path, {**GOOD, "log_level": "loud"})
    result = _cli("--options", str(path), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 2
    assert "error: option 'log_level' must be one of" in result.stderr
    assert "Traceback" not in result.stderr
    missing = _cli("--options", str(tmp_path / "nope.json"), "--state-dir", str(tmp_path))
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr


# ---------------------------------------------------------------- the pairing string


def _pairing(*keys: str) -> str:
    return "homeport+wss://relay.example:8443/v1/tunnel#" + ",".join(keys)


def test_one_pairing_string_instead_of_url_and_keys(tmp_path: Path) -> None:
    options = load_options(
        write(tmp_path, {"pairing": _pairing(KEY_A, KEY_B), "log_level": "info"})
    )
    assert options.relay_url == "wss://relay.example:8443/v1/tunnel"
    assert [public_key_text(k) for k in options.pinned_keys] == [KEY_A, KEY_B]


def test_an_empty_pairing_field_leaves_the_two_options(tmp_path: Path) -> None:
    """The add-on's default is an empty pairing field: then the two halves are used."""
    options = load_options(write(tmp_path, {**GOOD, "pairing": "  "}))
    assert options.relay_url == GOOD["relay_url"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"relay_keys": None}, "set either option 'pairing' or 'relay_url', not both"),
        ({}, "set either option 'pairing' or 'relay_url' and 'relay_keys', not both"),
    ],
)
def test_pairing_and_the_two_options_are_not_mixed(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    data = {**GOOD, "pairing": _pairing(KEY_B), **change}
    with pytest.raises(OptionsError) as caught:
        load_options(write(tmp_path, {k: v for k, v in data.items() if v is not None}))
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("pairing", "message"),
    [
        ("wss://relay.example/v1/tunnel", "starts with homeport+wss://"),
        ("homeport+wss://relay.example/v1/tunnel", "ends before the relay's key"),
        ("homeport+wss://relay.example/v1/tunnel#ed25519:short", "relay key is not valid"),
        (_pairing(KEY_A)[:-5] + " " + KEY_A[-4:], "spaces or line breaks"),
        ("homeport+wss://relay.example:99999/v1/tunnel#" + KEY_A, "invalid port"),
        ("homeport+wss://u:p@relay.example/v1/tunnel#" + KEY_A, "not a valid address"),
        (42, "must be a string, not int"),
    ],
)
def test_a_broken_pairing_string_is_one_clear_error(
    tmp_path: Path, pairing: object, message: str
) -> None:
    with pytest.raises(OptionsError) as caught:
        load_options(write(tmp_path, {"pairing": pairing}))
    assert str(caught.value).startswith("option 'pairing'")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_without_any_relay_the_error_names_the_pairing_option(tmp_path: Path) -> None:
    with pytest.raises(OptionsError, match="or instead option 'pairing'"):
        load_options(write(tmp_path, {"log_level": "info"}))
