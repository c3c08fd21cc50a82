"""The ``relay`` extra and the command line's one-line refusal without it (unit level).

The end-to-end proof (a fresh venv with the base install runs the add-on
against a relay, and ``homeport relay`` there says what to install) is in
``tests/addon/test_container_image.py``.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

from homeport import cli, extras

ROOT = Path(__file__).resolve().parents[1]


def _extra(name: str) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [
        re.split(r"[\[<>=;! ]", r, maxsplit=1)[0] for r in project["optional-dependencies"][name]
    ]


def test_every_relay_dependency_is_checked_by_one_of_its_modules() -> None:
    """``RELAY_MODULES`` names a module of each distribution in the extra, and no other."""
    providers = importlib.metadata.packages_distributions()
    checked = {
        dist.lower().replace("_", "-")
        for module in extras.RELAY_MODULES
        for dist in providers.get(module, [])
    }
    wanted = {name.lower().replace("_", "-") for name in _extra("relay")}
    assert wanted <= checked, wanted - checked
    assert len(extras.RELAY_MODULES) == len(wanted)


def test_the_base_install_has_none_of_the_relay_extra() -> None:
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[\[<>=;! ]", r, maxsplit=1)[0].lower() for r in base}
    assert names == {
        "aiohttp",
        "uvloop",
        "cryptography",
        "jinja2",
        "segno",
        "httptools",
        "websockets",
        "pyyaml",
        "aiohappyeyeballs",
    }
    assert not names & {n.lower() for n in _extra("relay")}


@pytest.mark.parametrize("command", ["relay", "admin", "dev"])
def test_relay_commands_refuse_in_one_line_without_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    monkeypatch.setattr(extras, "missing_relay_modules", lambda: ["sqlalchemy", "acme"])
    argv = {"relay": ["relay"], "admin": ["admin", "user", "list"], "dev": ["dev"]}[command]
    with pytest.raises(SystemExit) as raised:
        cli.main(argv)
    message = str(raised.value.code)
    assert "\n" not in message
    assert message == (
        f"homeport {command} needs the relay's dependencies, which this installation "
        "lacks (sqlalchemy, acme): pip install 'homeport[relay]'"
    )


def test_the_addon_and_keys_commands_need_no_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extras, "missing_relay_modules", lambda: ["sqlalchemy"])
    assert extras.relay_extra_error("addon") is None
    assert extras.relay_extra_error("keys") is None
    monkeypatch.setattr(extras, "missing_relay_modules", list)
    assert extras.relay_extra_error("relay") is None
