"""Follow a Dockerfile without a container engine: what the image would hold, built here.

No Docker runs on our machines, so the image recipes (the add-on's, the plain
add-on container's, the relay's) are proven by *following* them: their COPY
lines copy from the build context, their RUN lines run with the image's
absolute paths moved under a test directory (``Image.translate``), and ENV
lines become the environment the image's command runs with.  What this cannot
prove: the base image's own Python (the machine's is used), and RUN lines that
need root and the base distribution (user creation), which a test skips and
reproduces by hand.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form instruction (ENTRYPOINT, CMD, VOLUME)."""
        value = json.loads(self.args)
        assert isinstance(value, list), self
        assert all(isinstance(v, str) for v in value), self
        return value


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped, by stage."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    stage = -1
    out: list[Instruction] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(stage, keyword, " ".join(args.split())))
    return out


def final_stage(recipe: list[Instruction]) -> list[Instruction]:
    last = recipe[-1].stage
    return [i for i in recipe if i.stage == last]


def only(recipe: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in final_stage(recipe) if i.keyword == keyword]
    assert len(found) == 1, (keyword, found)
    return found[0]


def _pairs(recipe: list[Instruction], keyword: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in final_stage(recipe):
        if i.keyword == keyword:
            for word in shlex.split(i.args):
                key, _, value = word.partition("=")
                out[key] = value
    return out


def labels(recipe: list[Instruction]) -> dict[str, str]:
    return _pairs(recipe, "LABEL")


def image_env(recipe: list[Instruction]) -> dict[str, str]:
    return _pairs(recipe, "ENV")


@dataclass
class Image:
    """The image's file system paths, moved under the test's directory."""

    root: Path
    paths: dict[str, Path]
    env: dict[str, str] = field(default_factory=dict)

    def translate(self, text: str) -> str:
        """Replace the image's absolute paths (longest first) by their test copies."""
        names = sorted(self.paths, key=len, reverse=True)
        pattern = re.compile(r"(?<![\w./])(" + "|".join(map(re.escape, names)) + r")(?![\w.-])")
        return pattern.sub(lambda m: str(self.paths[m[1]]), text)

    def process_env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("HOMEPORT_", "SUPERVISOR", "PYTHON", "VIRTUAL_ENV"))
        }
        for key, value in self.env.items():
            env[key] = self.translate(value.replace("$PATH", env.get("PATH", "/usr/bin:/bin")))
        env.update(extra)
        return env


async def sh(command: str, *, cwd: Path, env: dict[str, str], timeout: float) -> None:
    proc = await asyncio.create_subprocess_exec(
        "sh",
        "-ec",
        command,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"RUN {command} failed:\n{out.decode(errors='replace')[-4000:]}"


def copy(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(
            source,
            target,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            dirs_exist_ok=True,
        )
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


async def follow(
    recipe: list[Instruction],
    image: Image,
    context: Path,
    *,
    skip: Callable[[Instruction], bool] = lambda i: False,
    run_path: str = str(VENV_BIN),
    rewrite: Callable[[str], str] = lambda command: command,
) -> Image:
    """COPY, RUN, WORKDIR and ENV of each stage, with the image's paths under ``image.root``.

    ``run_path`` comes first on PATH for RUN lines (the base image's ``python``
    and ``pip``); ``rewrite`` may adjust a RUN command (say, drop an index only
    reachable from the internet) before its paths are translated.
    """
    base_env = image.process_env(PATH=f"{run_path}{os.pathsep}{os.environ.get('PATH', '')}")
    workdir = image.root
    for i in recipe:
        if skip(i):
            continue
        if i.keyword == "FROM":
            workdir = image.root
        elif i.keyword == "WORKDIR":
            workdir = Path(image.translate(i.args))
            workdir.mkdir(parents=True, exist_ok=True)
        elif i.keyword == "COPY":
            words = i.args.split()
            if words[0].startswith("--from="):
                copy(Path(image.translate(words[1])), Path(image.translate(words[2])))
                continue
            *sources, dest = words
            for source in sources:
                if dest == "/":
                    target = image.root
                elif dest.startswith("/"):
                    target = Path(image.translate(dest))
                else:
                    target = workdir / dest
                if dest.endswith("/") and dest != "/":
                    target = target / Path(source).name
                copy(context / source, target)
        elif i.keyword == "RUN":
            command = image.translate(rewrite(i.args))
            await sh(command, cwd=workdir, env=base_env, timeout=400)
        elif i.keyword == "ENV":
            image.env.update(image_env([i]))
    return image


def which(name: str, env: dict[str, str]) -> str:
    found = shutil.which(name, path=env["PATH"])
    assert found, name
    return found
