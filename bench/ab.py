"""Two versions of Homeport's data plane side by side: ``bench/run.py`` runs interleaved.

On a shared 2-core VM one run of ``bench/run.py`` moves by 5-10 % from the
next, which hides most single changes to the data plane.  This runs the
relay path of two trees in turn, ``--runs`` times each, swapping which goes
first every round (A B, B A, A B ...) so that a drift of the machine falls
on both alike, and prints every run's figures and their medians::

    .venv/bin/python bench/ab.py main HEAD                   # GET and WS echo
    .venv/bin/python bench/ab.py main HEAD --runs 5 --only get
    .venv/bin/python bench/ab.py main /path/to/tree --only transfer

A side is a git revision of this repository (checked out into a temporary
worktree, removed at the end) or a directory holding a tree.  Each run is
``bench/run.py --path relay --log-level warning`` of that tree with its own
``src`` first on ``PYTHONPATH``, under the same Python (this one); every
figure is read against direct, measured in the same run.  The figures:

* ``c1 +ms``: GET c=1, p50 added over direct;
* ``c1 us``, ``c32 us``: relay + add-on CPU per GET at c=1 and c=32;
* ``c32 x``: GET c=32 requests/s over direct's;
* ``ws +ms``, ``ws us``: the WebSocket echo's p50 added, CPU per round trip;
* ``down``, ``up``: relay + add-on CPU per MB moved (ms), downloads and uploads.

``--only`` is passed on (``get``, ``ws``, ``transfer``; default ``get`` and
``ws``).  About 50 s a run for GET and WS; ``--runs 3`` of two sides ≈ 5 min.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: The longest one run of bench/run.py may take (a full run takes about four minutes).
RUN_TIMEOUT = 900

#: (column, figure, field or a function of the relay's and direct's records).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("c1 +ms", "get_c1", "added_p50"),
    ("c1 us", "get_c1", "relay_addon_cpu_us_per_request"),
    ("c32 us", "get_c32", "relay_addon_cpu_us_per_request"),
    ("c32 x", "get_c32", "rps_ratio"),
    ("ws +ms", "ws_echo", "added_p50"),
    ("ws us", "ws_echo", "relay_addon_cpu_us_per_round_trip"),
    ("down", "download", "relay_addon_ms_per_mb"),
    ("up", "upload", "relay_addon_ms_per_mb"),
)


def figures(output: str) -> dict[str, float]:
    """The columns found in one run's output (JSON records, one per line)."""
    records: dict[tuple[str, str], dict[str, Any]] = {}
    for line in output.splitlines():
        if line.startswith('{"figure"'):
            record = json.loads(line)
            records[(record["figure"], record["path"])] = record
    found: dict[str, float] = {}
    for column, figure, field in COLUMNS:
        relay = records.get((figure, "relay"))
        direct = records.get((figure, "direct"))
        if relay is None or direct is None:
            continue
        if field == "added_p50":
            value = relay["p50_ms"] - direct["p50_ms"]
        elif field == "rps_ratio":
            value = relay["rps"] / direct["rps"]
        elif field == "relay_addon_ms_per_mb":
            value = relay["relay_addon_cpu_s_per_mb"] * 1000
        elif field in relay:
            value = relay[field]
        else:
            continue  # a figure this side's bench/run.py does not report
        found[column] = value
    return found


def run_once(tree: Path, only: list[str]) -> dict[str, float]:
    argv = [sys.executable, str(tree / "bench" / "run.py"), "--path", "relay"]
    argv += ["--log-level", "warning"]
    for workload in only:
        argv += ["--only", workload]
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    done = subprocess.run(
        argv, cwd=tree, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise SystemExit(
            f"bench/run.py in {tree} failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
    return figures(done.stdout)


@contextlib.contextmanager
def checked_out(side: str, workdir: Path, name: str) -> Iterator[Path]:
    """A directory holding ``side``'s tree: the directory itself, or a temporary worktree."""
    if Path(side).is_dir():
        yield Path(side).resolve()
        return
    path = workdir / name
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(path), side],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False
        )


def row(label: str, values: dict[str, float]) -> str:
    cells = []
    for column, _, _ in COLUMNS:
        value = values.get(column)
        if value is None:
            cells.append(f"{'-':>8}")
        else:  # milliseconds, ratios and ms per MB are small: three decimals for them
            cells.append(f"{value:8.3f}" if abs(value) < 10 else f"{value:8.1f}")
    return f"{label:<12}" + "".join(cells)


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    columns = {column for run in runs for column in run}
    return {c: statistics.median(run[c] for run in runs if c in run) for c in columns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", help="git revision or directory of side A")
    parser.add_argument("b", help="git revision or directory of side B")
    parser.add_argument("--runs", type=int, default=3, help="runs of each side (default 3)")
    parser.add_argument(
        "--only",
        action="append",
        choices=["get", "ws", "transfer"],
        help="workloads (repeatable; default get and ws)",
    )
    args = parser.parse_args()
    if not 1 <= args.runs <= 20:
        parser.error("--runs must be 1 to 20")
    only = args.only or ["get", "ws"]
    runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="homeport-ab-")))
        trees = {
            "A": stack.enter_context(checked_out(args.a, tmp, "a")),
            "B": stack.enter_context(checked_out(args.b, tmp, "b")),
        }
        print(f"A = {args.a}, B = {args.b}; bench/run.py --path relay, --only {' '.join(only)}")
        print(f"{'':<12}" + "".join(f"{column:>8}" for column, _, _ in COLUMNS))
        for number in range(1, args.runs + 1):
            order = ("A", "B") if number % 2 else ("B", "A")
            for side in order:
                found = run_once(trees[side], only)
                runs[side].append(found)
                print(row(f"{side} run {number}", found), flush=True)
    print()
    for side in ("A", "B"):
        print(row(f"{side} median", medians(runs[side])))
    a, b = medians(runs["A"]), medians(runs["B"])
    change = {c: (b[c] - a[c]) / a[c] * 100 for c in a if c in b and a[c]}
    print(
        f"{'B vs A, %':<12}"
        + "".join(f"{change[c]:+8.1f}" if c in change else f"{'-':>8}" for c, _, _ in COLUMNS)
    )


if __name__ == "__main__":
    main()
