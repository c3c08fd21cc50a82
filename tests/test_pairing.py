"""The pairing string: made by the relay, read by the add-on, strictly."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from homeport.keys import public_key_text
from homeport.pairing import (
    ADDON_REPOSITORY,
    MAX_LENGTH,
    PairingError,
    add_repository_link,
    make_pairing,
    parse_pairing,
)

REPO = Path(__file__).resolve().parents[1]


def test_round_trip_with_two_keys_during_a_rotation() -> None:
    keys = [Ed25519PrivateKey.generate().public_key() for _ in range(2)]
    text = make_pairing("wss://relay.example:8443/v1/tunnel", keys)
    assert text.startswith("homeport+wss://relay.example:8443/v1/tunnel#ed25519:")
    parsed = parse_pairing("  " + text + "\n")  # pasted with the line break
    assert parsed.relay_url == "wss://relay.example:8443/v1/tunnel"
    assert [public_key_text(k) for k in parsed.pinned_keys] == [public_key_text(k) for k in keys]


def test_make_refuses_what_is_no_pairing() -> None:
    key = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(ValueError, match="wss://"):
        make_pairing("https://relay.example/v1/tunnel", [key])
    with pytest.raises(ValueError, match="at least one key"):
        make_pairing("wss://relay.example/v1/tunnel", [])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("homeport+wss://" + "a" * MAX_LENGTH, "too long"),
        ("homeport+wss://relay.example/v1/tunnel?x=1#ed25519:x", "not a valid address"),
        ("homeport+wss://relay.example/v1/tunnel#", "ends before the relay's key"),
    ],
)
def test_flaws_are_named(text: str, message: str) -> None:
    with pytest.raises(PairingError, match=message):
        parse_pairing(text)


def test_my_home_assistant_link_names_this_repository() -> None:
    """The "Add a home" page's store link opens the add-on repository of repository.yaml."""
    repository = yaml.safe_load((REPO / "repository.yaml").read_text())["url"]
    assert repository == ADDON_REPOSITORY
    link = urlsplit(add_repository_link())
    assert (link.scheme, link.netloc) == ("https", "my.home-assistant.io")
    assert link.path == "/redirect/supervisor_add_addon_repository/"
    assert parse_qs(link.query) == {"repository_url": [ADDON_REPOSITORY]}
