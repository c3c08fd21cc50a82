"""Search files for a marker value in the forms a careless program might write it.

Raw (any letter case), hex of its bytes, base64 and base64url at every byte
alignment (so the marker is found inside a longer encoded blob too), and
UTF-16.  Used by the privacy tests to prove no relayed byte reached a disk.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from pathlib import Path


def marker_forms(marker: str) -> dict[str, bytes]:
    raw = marker.encode()
    forms = {
        "raw": raw.lower(),
        "hex": raw.hex().encode(),
        "utf-16-le": marker.encode("utf-16-le").lower(),
        "utf-16-be": marker.encode("utf-16-be").lower(),
    }
    for offset in range(3):
        # Characters fully determined by the marker's bits when it starts
        # ``offset`` bytes into a base64 group.
        start = -(-8 * offset // 6)
        end = 8 * (offset + len(raw)) // 6
        padded = b"\0" * offset + raw
        forms[f"base64@{offset}"] = base64.b64encode(padded)[start:end]
        forms[f"base64url@{offset}"] = base64.urlsafe_b64encode(padded)[start:end]
    return forms


def find_marker(roots: Iterable[Path], marker: str) -> list[tuple[Path, str]]:
    """Every (file, form) under ``roots`` (files or directories) holding the marker."""
    forms = marker_forms(marker)
    hits: list[tuple[Path, str]] = []
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            data = path.read_bytes()
            folded = data.lower()
            for name, form in forms.items():
                haystack = data if name.startswith("base64") else folded
                if form in haystack:
                    hits.append((path, name))
    return hits


def all_files(roots: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for root in roots:
        out += [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return out
