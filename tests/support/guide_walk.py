"""Follow a section of a guide in docs/ command by command, so the guide cannot rot.

A guide section is read for its fenced blocks, in order:

* ``sh`` blocks: commands, one a line (``\\`` continues a line), run with bash;
* file blocks: a fenced block whose first line is ``# /path`` (TOML, INI), or
  that follows an ``<!-- file: /path -->`` line (JSON, which has no comments):
  the file to write.

A test then replaces, in each command and file, only what cannot be real on a
test machine (example names, ``/etc`` paths, ports, a package index) with
:meth:`Translation.apply`, drops ``sudo``, and plays systemd where the guide
says ``systemctl enable --now``: :func:`unit_command` gives the installed
unit's ``ExecStart`` and ``Environment``.
"""

from __future__ import annotations

import asyncio
import configparser
import importlib.util
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
_FENCE = "```"


@dataclass(frozen=True)
class Block:
    kind: str  # "sh" or "file"
    text: str
    path: str = ""


def section(guide: Path, heading: str) -> str:
    """The text under ``heading`` (a ``## `` line) up to the next ``## `` heading."""
    text = guide.read_text(encoding="utf-8")
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def blocks(text: str) -> list[Block]:
    found: list[Block] = []
    lines = text.splitlines()
    index = 0
    marker = ""
    while index < len(lines):
        line = lines[index]
        if line.startswith("<!-- file: ") and line.endswith(" -->"):
            marker = line.removeprefix("<!-- file: ").removesuffix(" -->").strip()
        elif line.startswith(_FENCE):
            lang = line[len(_FENCE) :].strip()
            end = lines.index(_FENCE, index + 1)
            body = "\n".join(lines[index + 1 : end]) + "\n"
            first = body.splitlines()[0] if body.strip() else ""
            if lang == "sh":
                found.append(Block("sh", body))
            elif marker:
                found.append(Block("file", body, marker))
            elif first.startswith("# /"):
                found.append(Block("file", body, first[2:].strip()))
            marker = ""
            index = end
        elif line.strip():
            marker = marker if line.startswith("<!--") else ""
        index += 1
    return found


def commands(block: Block) -> list[str]:
    """The block's commands, continuation lines joined; trailing ``  # comments`` dropped."""
    joined = block.text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        command = re.sub(r"\s{2,}#.*$", "", line).strip()
        if command and not command.startswith("#"):
            out.append(command)
    return out


def as_root_would(command: str) -> str | None:
    """Drop what needs root; None for a command the test cannot run (user creation)."""
    command = command.replace("sudo -u homeport ", "").replace("sudo ", "")
    command = command.replace(" -o homeport", "")
    if command.startswith("useradd "):
        return None
    return command


@dataclass
class Translation:
    """Ordered replacements of example values by the test's."""

    pairs: list[tuple[str, str]] = field(default_factory=list)

    def apply(self, text: str) -> str:
        for old, new in self.pairs:
            text = text.replace(old, new)
        return text


async def sh(
    command: str, *, cwd: Path, env: dict[str, str], stdin: str = "", timeout: float = 300
) -> str:
    proc = await asyncio.create_subprocess_exec(
        "bash", "-euo", "pipefail", "-c", command,
        cwd=cwd, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"{command}\nexit {proc.returncode}\n{err.decode()[-3000:]}"
    return out.decode()


def unit_command(installed: Path, translate: Translation) -> tuple[list[str], dict[str, str]]:
    """``systemctl enable --now``: the installed unit's ExecStart and Environment."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(installed.read_text().replace("\\\n", " "))
    service = unit["Service"]
    argv = shlex.split(translate.apply(service["ExecStart"]))
    env: dict[str, str] = {}
    if "Environment" in service:
        key, _, value = service["Environment"].partition("=")
        env[key] = translate.apply(value)
    return argv, env


def release_module() -> Any:
    spec = importlib.util.spec_from_file_location("release", REPO / "packaging" / "release.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def build_wheel(target: Path) -> Path:
    """The wheel a release would publish (packaging/release.py, from a clean copy)."""
    wheel: Path = await asyncio.to_thread(release_module().addon_context, wheels=target)
    return wheel
