"""The add-on's options file: ``/data/options.json`` as the Supervisor writes it.

The Supervisor validates options against the schema in ``config.yaml`` before
it starts the add-on, but the same file is also written by hand by people who
run the add-on outside Home Assistant OS, and a Supervisor from a different
release may be more lenient than we expect.  So the add-on checks it again,
strictly: unknown keys, wrong types and malformed values are errors that name
the option and say what was expected, never a traceback from deep inside the
client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from yarl import URL

from homeport.keys import parse_pinned_keys
from homeport.pairing import PairingError, parse_pairing

#: The levels offered in ``config.yaml`` (``list(debug|info|warning|error)``).
LOG_LEVELS = ("debug", "info", "warning", "error")

#: Where the Supervisor puts the options of a running add-on.
DEFAULT_OPTIONS_PATH = Path("/data/options.json")

#: Every key the add-on understands; anything else is a typo worth reporting.
KNOWN_KEYS = frozenset({"pairing", "relay_url", "relay_keys", "log_level", "ha_url"})
#: Without a pairing string, both of these (the pairing string's two halves, for automation).
SEPARATE_KEYS = ("relay_url", "relay_keys")


class OptionsError(ValueError):
    """The options file cannot be used; the message names the option and the fix."""


@dataclass(frozen=True)
class AddonOptions:
    """Validated add-on options, ready for ``AddonConfig``."""

    relay_url: str
    pinned_keys: tuple[Ed25519PublicKey, ...]
    log_level: str = "info"
    ha_url: str | None = None


def _string(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise OptionsError(f"option {key!r} must be a string, not {type(value).__name__}")
    value = value.strip()
    if not value:
        raise OptionsError(f"option {key!r} is empty; set it in the add-on's configuration")
    return value


def check_relay_url(value: str, what: str = "option 'relay_url'") -> str:
    """``wss://host[:port]/path``: the only way the add-on reaches a relay."""
    try:
        url = URL(value)
    except ValueError as exc:
        raise OptionsError(f"{what} is not a URL: {exc}") from None
    if url.scheme != "wss" or not url.host:
        raise OptionsError(f"{what} must be wss://host[:port]/v1/tunnel, got {value!r}")
    if url.user or url.password or url.query_string or url.fragment:
        raise OptionsError(f"{what} must not carry credentials, a query or a fragment")
    return value


def check_ha_url(value: str, what: str = "option 'ha_url'") -> str:
    """``http(s)://host[:port]``: a URL the forwarder can dial, checked before any dial."""
    try:
        url = URL(value)
    except ValueError as exc:
        raise OptionsError(f"{what} is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise OptionsError(f"{what} must be http(s)://host[:port], got {value!r}")
    if url.user or url.password or url.query_string or url.fragment:
        raise OptionsError(f"{what} must not carry credentials, a query or a fragment")
    try:
        url.port  # noqa: B018 - a port out of range raises here, not at the first dial
    except ValueError:
        raise OptionsError(f"{what} has an invalid port: {value!r}") from None
    return value


def _relay(data: dict[str, Any]) -> tuple[str, tuple[Ed25519PublicKey, ...]]:
    """The relay to dial and its pinned keys: from ``pairing`` (one string from the relay's
    "Add a home" page) or from ``relay_url`` and ``relay_keys``, never a mix of the two."""
    pairing = data.get("pairing")
    if isinstance(pairing, str) and not pairing.strip():
        pairing = None  # the add-on's default: an empty field
    separate = [key for key in SEPARATE_KEYS if data.get(key) is not None]
    if pairing is not None:
        if separate:
            raise OptionsError(
                f"set either option 'pairing' or {' and '.join(map(repr, separate))}, not both"
            )
        if not isinstance(pairing, str):
            raise OptionsError(f"option 'pairing' must be a string, not {type(pairing).__name__}")
        try:
            parsed = parse_pairing(pairing)
        except PairingError as exc:
            raise OptionsError(f"option 'pairing': {exc}") from None
        return check_relay_url(parsed.relay_url, "option 'pairing'"), parsed.pinned_keys
    for key in SEPARATE_KEYS:
        if data.get(key) is None:
            raise OptionsError(
                f"option {key!r} is required, or instead option 'pairing' (copy it from "
                "the relay's Add a home page); set it in the add-on's configuration"
            )
    relay_url = check_relay_url(_string(data, "relay_url"))
    try:
        pinned = tuple(parse_pinned_keys(_string(data, "relay_keys")))
    except ValueError as exc:
        if isinstance(exc, OptionsError):
            raise
        raise OptionsError(f"option 'relay_keys': {exc}") from None
    return relay_url, pinned


def parse_options(data: object) -> AddonOptions:
    """Validate a decoded options object (the JSON top level)."""
    if not isinstance(data, dict):
        raise OptionsError("the options must be a JSON object")
    unknown = sorted(str(k) for k in data if k not in KNOWN_KEYS)
    if unknown:
        raise OptionsError(
            f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_KEYS))}"
        )
    relay_url, pinned = _relay(data)
    log_level = "info"
    if data.get("log_level") is not None:
        log_level = _string(data, "log_level").lower()
        if log_level not in LOG_LEVELS:
            raise OptionsError(
                f"option 'log_level' must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}"
            )
    ha_url = check_ha_url(_string(data, "ha_url")) if data.get("ha_url") is not None else None
    return AddonOptions(relay_url=relay_url, pinned_keys=pinned, log_level=log_level, ha_url=ha_url)


def load_options(path: Path = DEFAULT_OPTIONS_PATH) -> AddonOptions:
    """Read and validate an options file; :class:`OptionsError` says what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OptionsError(f"options file {path} does not exist") from None
    except OSError as exc:
        raise OptionsError(f"cannot read options file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise OptionsError(f"options file {path} is not UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OptionsError(
            f"options file {path} is not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from None
    return parse_options(data)
