"""Where ``homeport`` options come from, and the refusal of any that nobody reads.

Each option is looked up as a command-line flag, else an environment variable
``HOMEPORT_<NAME>``, else the TOML file given with ``--config`` (section
``[relay]`` or ``[addon]``), else the built-in default.

What this stops: a typo that silently turns a setting into its default.  A
misspelt ``accont-host`` in the TOML file, or ``HOMEPORT_TLS_CRT`` in a unit
file, would otherwise leave the relay on ``homeport.localhost`` or on the
development CA without a word.  So every TOML key and every ``HOMEPORT_*``
variable must name an option some ``homeport`` command has; anything else is
an error that names the key (and the nearest known one).  A variable known to
another command (``HOMEPORT_RELAY`` in a relay's environment) is not an error:
one environment often serves several commands.

Every problem here is a :class:`ConfigError`: one line, ``error: …``, and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ENV_PREFIX",
    "ConfigError",
    "Options",
    "check_environment",
    "check_readable_file",
    "parse_host_port",
]

ENV_PREFIX = "HOMEPORT_"
#: Variables read by the test suite and its tools, not by a ``homeport`` command.
RESERVED_ENV = frozenset({"HOMEPORT_CACHE"})
RESERVED_ENV_PREFIXES = ("HOMEPORT_TEST_",)
#: The TOML sections, and the command whose options each holds.
SECTIONS = ("relay", "addon")


class ConfigError(SystemExit):
    """A setting cannot be used.  Exits with ``error: <message>`` on stderr (status 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.7)
    return f" (did you mean {close[0]}?)" if close else ""


def check_environment(known: Iterable[str], environ: Mapping[str, str] | None = None) -> None:
    """Refuse ``HOMEPORT_*`` variables that name no option of any command."""
    names = {ENV_PREFIX + name.upper() for name in known}
    env = os.environ if environ is None else environ
    for variable in sorted(env):
        if not variable.startswith(ENV_PREFIX) or variable in names:
            continue
        if variable in RESERVED_ENV or variable.startswith(RESERVED_ENV_PREFIXES):
            continue
        raise ConfigError(
            f"unknown environment variable {variable}{_suggest(variable, names)}; "
            "unset it or fix its name"
        )


def load_toml(path: Path, section: str, known: Iterable[str]) -> dict[str, Any]:
    """The ``[section]`` of a TOML file, its keys checked against ``known`` (``_`` names)."""
    try:
        with path.open("rb") as fh:
            document = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"--config {path}: is a directory, not a TOML file") from None
    except PermissionError:
        raise ConfigError(f"--config {path}: permission denied") from None
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML: {exc}") from None
    for name, value in document.items():
        if name not in SECTIONS:
            known_sections = ", ".join(f"[{s}]" for s in SECTIONS)
            raise ConfigError(
                f"--config {path}: unknown section [{name}]{_suggest(name, SECTIONS)}; "
                f"known: {known_sections}"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"--config {path}: {name} must be a [{name}] section")
    table: dict[str, Any] = document.get(section, {})
    allowed = {name.replace("_", "-") for name in known}
    out: dict[str, Any] = {}
    for key, value in table.items():
        spelled = key.replace("_", "-")
        if spelled not in allowed:
            raise ConfigError(
                f"--config {path}: unknown key {key!r} in [{section}]{_suggest(spelled, allowed)}"
            )
        if isinstance(value, dict | list):
            raise ConfigError(
                f"--config {path}: [{section}] {key} must be a string or a number, "
                f"not a {'table' if isinstance(value, dict) else 'list'}"
            )
        out[spelled.replace("-", "_")] = value
    return out


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class Options:
    """Looks an option up in flag → environment → TOML section → default.

    ``known``: the option names (argparse ``dest``) the section may hold.
    """

    def __init__(self, args: argparse.Namespace, section: str, known: Iterable[str]) -> None:
        self._args = args
        self._toml: dict[str, Any] = {}
        config = getattr(args, "config", None)
        if config:
            self._toml = load_toml(Path(config).expanduser(), section, known)

    def get(self, name: str, default: Any = None) -> Any:
        value = getattr(self._args, name, None)
        if value is not None:
            return value
        env = os.environ.get(ENV_PREFIX + name.upper())
        if env:
            return env
        toml_value = self._toml.get(name)
        if toml_value is not None:
            return toml_value
        return default

    def path(self, name: str, default: Path | None = None) -> Path | None:
        value = self.get(name)
        return Path(str(value)).expanduser() if value else default

    def integer(self, name: str, default: int | None = None, *, low: int = 0) -> int | None:
        """A whole number of at least ``low``; ``ConfigError`` naming the option otherwise."""
        value = self.get(name)
        if value is None:
            return default
        text = str(value).strip()
        if isinstance(value, bool) or not text.isdigit() or int(text) < low:
            raise ConfigError(f"{flag(name)} must be a whole number, at least {low}: {value!r}")
        return int(text)

    def host_port(self, name: str, default: str | None = None) -> tuple[str, int] | None:
        value = self.get(name, default)
        if value is None or value == "":
            return None
        return parse_host_port(str(value), flag(name))


def parse_host_port(value: str, option: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; ``ConfigError`` naming ``option`` otherwise."""
    host, sep, port = value.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(
            f"{option} must be host:port (e.g. 0.0.0.0:443 or [::]:443), not {value!r}"
        )
    return host, int(port)


def check_readable_file(path: Path | None, option: str) -> None:
    """A file the command will read later must exist and be readable now."""
    if path is None:
        return
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise ConfigError(f"{option} {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{option} {path}: is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(f"{option} {path}: permission denied") from None
    except OSError as exc:
        raise ConfigError(f"{option} {path}: {exc.strerror}") from None
