"""axe-core (Deque's accessibility rules engine), from the npm registry, for the browser tests.

``ensure_axe()`` fetches the pinned release once with ``npm pack`` into
``~/.cache/homeport/axe-core-VERSION`` (file lock for concurrent callers), checks
the tarball against the registry's published integrity hash, and returns the path
of ``axe.min.js``; ``run_axe()`` injects it into a Playwright page and returns the
violations.  CI pre-installs with::

    python tests/support/axe_core.py install
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from playwright.async_api import Page

AXE_VERSION: Final = "4.14.1"
#: The registry's ``dist.integrity`` of this release (``npm view axe-core@VERSION dist.integrity``).
AXE_INTEGRITY: Final = (
    "sha512-"
    "FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ=="
)
ROOT: Final = Path(os.environ.get("HOMEPORT_CACHE", Path.home() / ".cache" / "homeport"))
HOME: Final = ROOT / f"axe-core-{AXE_VERSION}"
SCRIPT: Final = HOME / "axe.min.js"

#: WCAG 2.0, 2.1 and 2.2 A and AA rules (what issue #14 asks for), plus best practices.
TAGS: Final = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice")


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_axe() -> Path:
    """``axe.min.js`` of the pinned axe-core, fetched and checked on first use."""
    with _lock(ROOT / f"axe-core-{AXE_VERSION}.lock"):
        if SCRIPT.exists():
            return SCRIPT
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                ["npm", "pack", "--silent", f"axe-core@{AXE_VERSION}", "--pack-destination", tmp],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            tarball = Path(tmp) / f"axe-core-{AXE_VERSION}.tgz"
            digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
            if "sha512-" + digest != AXE_INTEGRITY:
                raise RuntimeError(f"axe-core-{AXE_VERSION}.tgz does not match its integrity")
            with tarfile.open(tarball) as archive:
                member = archive.extractfile("package/axe.min.js")
                assert member is not None
                HOME.mkdir(parents=True, exist_ok=True)
                partial = SCRIPT.with_suffix(".partial")
                partial.write_bytes(member.read())
                partial.rename(SCRIPT)
    return SCRIPT


async def run_axe(page: Page) -> list[dict[str, Any]]:
    """The axe violations of the page as it is now (WCAG 2.2 A/AA and best practices)."""
    # Through DevTools, not a <script> element: the pages' CSP allows no foreign script.
    await page.evaluate(ensure_axe().read_text(encoding="utf-8"))
    result: dict[str, Any] = await page.evaluate(
        "tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})", list(TAGS)
    )
    violations: list[dict[str, Any]] = result["violations"]
    return violations


def serious(violations: list[dict[str, Any]]) -> list[str]:
    """One line per serious or critical violation: rule, impact and the elements."""
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + "; ".join(" ".join(node["target"]) for node in v["nodes"][:5])
        for v in violations
        if v.get("impact") in ("serious", "critical")
    ]


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: axe_core.py install")
    print(ensure_axe())
