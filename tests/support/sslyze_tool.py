"""sslyze, in its own cached venv, driven through its Python API by ``sslyze_scan.py``.

sslyze 6.3.1 pins ``cryptography < 47`` (and ships its own OpenSSL in
``nassl``); Homeport runs a newer cryptography, so the scanner lives apart
from the project's venv, like the real Home Assistant in ``ha_core.py``.
``ensure_sslyze()`` creates ``~/.cache/homeport/sslyze-6.3.1`` once (file
lock for concurrent callers); ``scan()`` runs the scan script under it and
returns its JSON.  CI can pre-install with::

    python tests/support/sslyze_tool.py install
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

SSLYZE_VERSION: Final = "6.3.1"
ROOT: Final = Path(os.environ.get("HOMEPORT_CACHE", Path.home() / ".cache" / "homeport"))
VENV: Final = ROOT / f"sslyze-{SSLYZE_VERSION}"
SCRIPT: Final = Path(__file__).with_name("sslyze_scan.py")
_MARKER: Final = VENV / ".homeport-install-complete"


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def python() -> Path:
    return VENV / "bin" / "python"


def ensure_sslyze() -> Path:
    """The scanner venv's Python, installing sslyze first if needed (idempotent)."""
    with _lock(ROOT / f"sslyze-{SSLYZE_VERSION}.lock"):
        if not _MARKER.exists():
            venv.create(VENV, with_pip=True, clear=True)
            subprocess.run(
                [str(python()), "-m", "pip", "install", "--quiet", f"sslyze=={SSLYZE_VERSION}"],
                check=True,
            )
            _MARKER.write_text(SSLYZE_VERSION)
    return python()


async def scan(host: str, port: int, server_name: str, ca: Path, *, timeout: float = 240) -> Any:
    """Run ``sslyze_scan.py`` against ``host:port`` (SNI ``server_name``); its JSON report."""
    interpreter = await asyncio.to_thread(ensure_sslyze)
    proc = await asyncio.create_subprocess_exec(
        str(interpreter),
        str(SCRIPT),
        host,
        str(port),
        server_name,
        str(ca),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise AssertionError(f"sslyze scan failed: {err.decode(errors='replace')[-3000:]}")
    return json.loads(out)


if __name__ == "__main__":
    if sys.argv[1:] == ["install"]:
        print(ensure_sslyze())
    else:
        raise SystemExit("usage: sslyze_tool.py install")
