"""Adding the proxy settings to real, awkward ``configuration.yaml`` files, or refusing.

Each file is edited by :func:`add_trusted_proxies`; then (the ``homeassistant``
tests) Home Assistant's own configuration checker (``check_config``, run in the
suite's Home Assistant 2025.4.4) reads the original and the result with their
``!include`` and ``!secret`` files: the result must have no error, the add-on
must be trusted, and every other setting must validate exactly as before.
"""

from __future__ import annotations

import difflib
import json
import subprocess
from pathlib import Path

import pytest
from ha_core import ensure_ha_venv

from homeport.addon.ha_config import UnsafeMerge, add_trusted_proxies

SUPERVISED = ("172.30.32.0/23",)
LOCAL = ("127.0.0.1", "::1")

#: Home Assistant's own first-start configuration (homeassistant/config.py DEFAULT_CONFIG).
HA_DEFAULT = """\
# Loads default set of integrations. Do not remove.
default_config:

# Load frontend themes from the themes folder
frontend:
  themes: !include_dir_merge_named themes

automation: !include automations.yaml
script: !include scripts.yaml
scene: !include scenes.yaml
"""

FILES: dict[str, str] = {
    "ha-default": HA_DEFAULT.replace("default_config:\n", "config:\n"),
    "comments-and-secrets": """\
homeassistant:
  name: !secret home_name   # from secrets.yaml
  time_zone: UTC

# --- web server --------------------------------------------------
http:
    server_port: !secret port      # keep my port
    ip_ban_enabled: true
    login_attempts_threshold: 5

logger:
    default: warning
""",
    "existing-proxy-list": """\
http:
  use_x_forwarded_for: true
  trusted_proxies:
    - 10.0.0.2        # nginx on the router
    -   192.168.1.0/24
  server_port: 8123

input_boolean: !include input_boolean.yaml
""",
    "forwarded-for-off": """\
http:
  use_x_forwarded_for: false
  trusted_proxies:
    - 10.0.0.2
""",
    "empty-http": """\
frontend:
http:
input_boolean:
  lamp:
    name: Lamp
""",
    "crlf-no-final-newline": (
        "frontend:\r\nhttp:\r\n  server_port: 8123\r\n"
        "  cors_allowed_origins:\r\n    - https://example.com"
    ),
    "only-comments": "# nothing configured yet\n",
}

REFUSED: dict[str, tuple[str, str]] = {
    "include": ("http: !include http.yaml\n", "http: comes from elsewhere (!include http.yaml)"),
    "flow-mapping": ("http: {server_port: 8123}\n", "is written on one line"),
    "flow-list": ("http:\n  trusted_proxies: [10.0.0.2]\n", "not a list written one entry"),
    "single-value": ("http:\n  trusted_proxies: 10.0.0.2\n", "is a single value"),
    "secret-list": ("http:\n  trusted_proxies: !secret proxies\n", "is a single value"),
    "twice": ("http:\n  server_port: 1\nhttp:\n  server_port: 2\n", "more than one http:"),
    "not-yaml": ("http:\n  - a\n b: c\n", "is not valid YAML at line 3"),
    "a-list": ("- http\n", "is not a list of settings"),
    "forwarded-templated": (
        "http:\n  use_x_forwarded_for: !secret fwd\n",
        "use_x_forwarded_for is not true or false",
    ),
}


def only_additions(old: str, new: str) -> list[str]:
    """The lines the edit added; fails if it removed or changed any other line."""
    added: list[str] = []
    old_lines, new_lines = old.splitlines(), new.splitlines()
    matcher = difflib.SequenceMatcher(a=old_lines, b=new_lines, autojunk=False)
    for op, a1, a2, b1, b2 in matcher.get_opcodes():
        if op == "insert":
            added += new_lines[b1:b2]
        elif op == "replace":
            # The one change in place: use_x_forwarded_for false -> true.
            assert [line.replace("false", "true") for line in old_lines[a1:a2]] == new_lines[b1:b2]
        else:
            assert op == "equal", (op, old_lines[a1:a2], new_lines[b1:b2])
    return added


@pytest.mark.parametrize("name", sorted(FILES))
@pytest.mark.parametrize("proxies", [SUPERVISED, LOCAL], ids=["supervised", "core"])
def test_awkward_files_get_only_the_settings(name: str, proxies: tuple[str, ...]) -> None:
    old = FILES[name]
    edit = add_trusted_proxies(old, proxies)
    assert edit.changed
    added = only_additions(old, edit.text)
    for proxy in proxies:
        assert any(line.split() == ["-", proxy] for line in added), (proxy, added)
    if "\r\n" in old:
        assert "\n" not in edit.text.replace("\r\n", "")
    # A second run finds nothing to do.
    again = add_trusted_proxies(edit.text, proxies)
    assert not again.changed
    assert again.text == edit.text


def test_exact_result_keeps_layout() -> None:
    edit = add_trusted_proxies(FILES["existing-proxy-list"], SUPERVISED)
    assert edit.text == FILES["existing-proxy-list"].replace(
        "    -   192.168.1.0/24\n", "    -   192.168.1.0/24\n    -   172.30.32.0/23\n"
    )
    assert edit.added_proxies == SUPERVISED
    assert not edit.set_forwarded_for
    edit = add_trusted_proxies(FILES["comments-and-secrets"], SUPERVISED)
    assert "http:\n    use_x_forwarded_for: true\n    trusted_proxies:\n" in edit.text
    assert "      - 172.30.32.0/23\n    server_port: !secret port      # keep my port\n" in (
        edit.text
    )


def test_a_covering_network_is_enough() -> None:
    text = "http:\n  use_x_forwarded_for: true\n  trusted_proxies:\n    - 172.30.0.0/16\n"
    edit = add_trusted_proxies(text, SUPERVISED)
    assert not edit.changed
    # A narrower network is not.
    narrower = text.replace("172.30.0.0/16", "172.30.32.2")
    assert add_trusted_proxies(narrower, SUPERVISED).changed


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refusals_say_why(name: str) -> None:
    text, reason = REFUSED[name]
    with pytest.raises(UnsafeMerge) as refused:
        add_trusted_proxies(text, SUPERVISED)
    assert reason in str(refused.value)


# ------------------------------------------------ Home Assistant's own checker

CHECK = """\
import json, sys
from homeassistant.scripts import check_config
try:
    res = check_config.check(sys.argv[1])
except Exception as exc:  # some builds crash on a file without a single setting
    res = {"except": {"General Errors": repr(exc)}, "components": {}}
def plain(v):
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, (bool, int, float)) or v is None:
        return v
    return str(v)
print("HOMEPORT-RESULT", json.dumps({
    "errors": {k: str(v) for k, v in res["except"].items()},
    "components": plain(res.get("components", {})),
}))
"""

SIDE_FILES = {
    "secrets.yaml": "home_name: My home\nport: 8124\nproxies: 10.0.0.2\nfwd: true\n",
    "automations.yaml": "[]\n",
    "scripts.yaml": "{}\n",
    "scenes.yaml": "[]\n",
    "input_boolean.yaml": "lamp:\n  name: Lamp\n",
    "http.yaml": "server_port: 8125\n",
}


def ha_check(config_dir: Path) -> dict[str, object]:
    python = ensure_ha_venv() / "bin" / "python"
    done = subprocess.run(
        [str(python), "-c", CHECK, str(config_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(config_dir)},
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("HOMEPORT-RESULT ")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    result: dict[str, object] = json.loads(lines[-1].removeprefix("HOMEPORT-RESULT "))
    return result


def config_dir(root: Path, text: str) -> Path:
    root.mkdir(parents=True)
    (root / "themes").mkdir()
    for name, content in SIDE_FILES.items():
        (root / name).write_text(content)
    (root / "configuration.yaml").write_text(text, newline="")
    return root


@pytest.mark.homeassistant
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(FILES))
def test_home_assistant_accepts_the_result(tmp_path: Path, name: str) -> None:
    old = FILES[name]
    before = ha_check(config_dir(tmp_path / "before", old))
    if name == "only-comments":
        # Home Assistant cannot start on a file without a single setting; with ours, it can.
        assert "General Errors" in before["errors"]  # type: ignore[operator]
        before = {"errors": {}, "components": {"homeassistant": {}}}
    assert before["errors"] == {}, before["errors"]
    edit = add_trusted_proxies(old, SUPERVISED)
    after = ha_check(config_dir(tmp_path / "after", edit.text))
    assert after["errors"] == {}, after["errors"]
    components_before = dict(before["components"])  # type: ignore[call-overload]
    components_after = dict(after["components"])  # type: ignore[call-overload]
    http_before = components_before.pop("http", None) or {}
    http = components_after.pop("http")
    if name == "only-comments":
        components_before = {k: v for k, v in components_after.items() if k != "http"}
    assert components_after == components_before, "nothing outside http: changed"
    assert http["use_x_forwarded_for"] is True
    assert "172.30.32.0/23" in http["trusted_proxies"]
    for key, value in http_before.items():
        if key == "trusted_proxies":
            assert http[key][: len(value)] == value
        elif key != "use_x_forwarded_for":
            assert http[key] == value, key


@pytest.mark.homeassistant
@pytest.mark.timeout(300)
def test_home_assistant_reads_secret_and_include_the_way_we_assume(tmp_path: Path) -> None:
    """The premise of two refusals: HA really resolves these, so we cannot see inside."""
    result = ha_check(config_dir(tmp_path / "c", "http: !include http.yaml\n"))
    assert result["errors"] == {}
    assert result["components"]["http"]["server_port"] == 8125  # type: ignore[index]
