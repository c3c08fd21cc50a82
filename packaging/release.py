"""Release steps that must not depend on a package index: version, add-on build context.

    python packaging/release.py set-version 0.2.0   # homeport.__version__ + the add-on manifest
    python packaging/release.py check [--tag v0.2.0] # the version agrees everywhere (CI)
    python packaging/release.py addon-context        # the wheel -> homeport_addon/wheels/

The version lives in one place, ``homeport.__version__`` (pyproject.toml reads it).
The add-on manifest must carry a literal copy (the Supervisor reads
``version:`` from ``homeport_addon/config.yaml`` to offer updates), so
``set-version`` writes both and ``check`` refuses a mismatch, a tag that names
another version, or a CHANGELOG without a section for it.

``addon-context`` builds the wheel the add-on image installs (its Dockerfile
copies ``wheels/``), so building the add-on never needs a release on a
package index. Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INIT = ROOT / "src" / "homeport" / "__init__.py"
ADDON = ROOT / "homeport_addon"
MANIFEST = ADDON / "config.yaml"
CHANGELOG = ADDON / "CHANGELOG.md"
WHEELS = ADDON / "wheels"

_INIT_VERSION = re.compile(r'^__version__ = "([^"]+)"$', re.MULTILINE)
_MANIFEST_VERSION = re.compile(r'^version: "([^"]+)"$', re.MULTILINE)
#: PEP 440 release versions as we use them: X.Y.Z with an optional a/b/rc N.
_VERSION = re.compile(r"\d+\.\d+\.\d+(?:(?:a|b|rc)\d+)?")


class ReleaseError(Exception):
    pass


def _one(pattern: re.Pattern[str], path: Path) -> str:
    found = pattern.findall(path.read_text(encoding="utf-8"))
    if len(found) != 1:
        raise ReleaseError(f"{path.relative_to(ROOT)}: expected one version line, found {found}")
    return str(found[0])


def package_version() -> str:
    return _one(_INIT_VERSION, INIT)


def manifest_version() -> str:
    return _one(_MANIFEST_VERSION, MANIFEST)


def check(tag: str | None = None) -> str:
    """The version, once it agrees everywhere; ``ReleaseError`` says where it does not."""
    version = package_version()
    if not _VERSION.fullmatch(version):
        raise ReleaseError(f"homeport.__version__ {version!r} is not X.Y.Z[a|b|rcN]")
    if manifest_version() != version:
        raise ReleaseError(
            f"homeport_addon/config.yaml says {manifest_version()}, homeport.__version__ "
            f"says {version}: run `python packaging/release.py set-version {version}`"
        )
    if f"\n## {version}\n" not in "\n" + CHANGELOG.read_text(encoding="utf-8"):
        raise ReleaseError(f"homeport_addon/CHANGELOG.md has no '## {version}' section")
    if tag is not None and tag.removeprefix("v") != version:
        raise ReleaseError(f"tag {tag} does not name version {version}")
    return version


def set_version(version: str) -> None:
    if not _VERSION.fullmatch(version):
        raise ReleaseError(f"{version!r} is not X.Y.Z[a|b|rcN]")
    for path, pattern, line in (
        (INIT, _INIT_VERSION, f'__version__ = "{version}"'),
        (MANIFEST, _MANIFEST_VERSION, f'version: "{version}"'),
    ):
        _one(pattern, path)
        path.write_text(pattern.sub(line, path.read_text(encoding="utf-8")), encoding="utf-8")


def addon_context(python: str = sys.executable, wheels: Path = WHEELS) -> Path:
    """Build the wheel of this checkout into ``homeport_addon/wheels/`` (only that wheel)."""
    version = check()
    with tempfile.TemporaryDirectory() as tmp:
        # A clean copy of what the package is made of: setuptools builds in the source
        # tree and would otherwise reuse a stale build/ left by an earlier build.
        source = Path(tmp) / "source"
        skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        shutil.copytree(ROOT / "src", source / "src", ignore=skip)
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            shutil.copy2(ROOT / name, source / name)
        out = Path(tmp) / "dist"
        subprocess.run(  # noqa: S603 - fixed argv: this Python's pip, this checkout
            [
                python,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--wheel-dir",
                str(out),
                str(source),
            ],
            check=True,
        )
        built = sorted(out.glob("homeport-*.whl"))
        expected = f"homeport-{version}-py3-none-any.whl"
        if [w.name for w in built] != [expected]:
            raise ReleaseError(f"expected {expected}, pip built {[w.name for w in built]}")
        if wheels.exists():
            shutil.rmtree(wheels)
        wheels.mkdir(parents=True)
        target = wheels / expected
        shutil.copy2(built[0], target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    setter = sub.add_parser("set-version", help="set the version in its one place and the manifest")
    setter.add_argument("version")
    checker = sub.add_parser("check", help="the version agrees everywhere (and with --tag)")
    checker.add_argument("--tag", help="the release tag, e.g. v0.2.0 (GITHUB_REF_NAME)")
    sub.add_parser("addon-context", help="build the wheel into homeport_addon/wheels/")
    args = parser.parse_args(argv)
    try:
        if args.command == "set-version":
            set_version(args.version)
            print(f"version {args.version}: add a '## {args.version}' section to {CHANGELOG}")
        elif args.command == "check":
            print(check(args.tag))
        else:
            print(addon_context().relative_to(ROOT))
    except ReleaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
