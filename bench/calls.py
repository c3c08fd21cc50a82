"""How many Python functions the relay and the add-on run per small request (GET c=1).

At c=1 every process of the path finds its caches cold, and the relay's and
the add-on's time per request follows how much of their code and data a
request touches (``docs/performance.md``, "hop by hop").  The number of
Python functions each runs per request, and which, is the measure the data
plane's passes were steered by; this counts them exactly.

It runs ``bench/run.py --path relay --only get`` with a ``sitecustomize``
module first on the path of every process it starts (harmless where unused:
it only installs two signal handlers, and only under this script).  While
the relay path's GET c=1 runs, the relay and the add-on get ``SIGUSR1``,
which starts a ``sys.setprofile`` counter in their event loop's thread, and
``--seconds`` later ``SIGUSR2``, which stops it and writes what it counted.
The counts are divided by the requests seen in that window (calls of the
relay's ``TenantConnection.request_started`` and of the add-on's
``HttpExchange.start``: one each per request).  Counting slows both
processes several times over: the figures are counts, not times.

::

    .venv/bin/python bench/calls.py              # the 25 most frequent in each
    .venv/bin/python bench/calls.py --top 200    # all of them

About a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hops

HERE = Path(__file__).resolve().parent
#: How long to wait for the relay path's GET c=1 to start (the stack comes up first).
START_TIMEOUT = 180.0
#: Once a request per process: (end of the file's path, function name).
MARKERS = {
    "relay": ("relay/proxy/connection.py", "request_started"),
    "addon": ("addon/exchange.py", "start"),
}

#: Installed in every process of the run; counts only between SIGUSR1 and SIGUSR2.
SITECUSTOMIZE = """
import collections, json, os, signal, sys

_out = os.environ.get("BENCH_CALLS_OUT")
if _out:
    _python = collections.Counter()
    _builtin = collections.Counter()

    def _count(frame, event, arg):
        if event == "call":
            code = frame.f_code
            if code.co_filename == "<string>":  # made by dataclasses: name the class
                owner = type(frame.f_locals.get("self")).__qualname__
                _python[("<dataclass>", 0, f"{owner}.{code.co_name}")] += 1
            else:
                _python[(code.co_filename, code.co_firstlineno, code.co_qualname)] += 1
        elif event == "c_call":
            _builtin[getattr(arg, "__qualname__", repr(arg))] += 1

    def _start(signum, frame):
        _python.clear()
        _builtin.clear()
        sys.setprofile(_count)

    def _stop(signum, frame):
        sys.setprofile(None)
        rows = [[f, line, name, n] for (f, line, name), n in _python.items()]
        with open(os.path.join(_out, f"{os.getpid()}.json"), "w") as fh:
            json.dump({"python": rows, "builtin": dict(_builtin)}, fh)

    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
"""


def short(filename: str) -> str:
    """A file's path from its package (``homeport/...``, ``asyncio/...``)."""
    for cut in ("/src/", "/site-packages/", "/lib/python3"):
        if cut in filename:
            rest = filename.split(cut, 1)[1]
            return rest.split("/", 1)[1] if cut == "/lib/python3" else rest
    return filename


def report(role: str, counts: dict[str, Any], top: int) -> None:
    rows: list[tuple[str, int, str, int]] = [tuple(row) for row in counts["python"]]
    builtin: dict[str, int] = counts["builtin"]
    suffix, name = MARKERS[role]
    requests = sum(
        n for f, _, qualname, n in rows if f.endswith(suffix) and qualname.endswith(f".{name}")
    )
    if not requests:
        print(f"{role}: no request seen in the window")
        return
    python = sum(row[3] for row in rows)
    print(
        f"{role}: {requests} requests; per request {python / requests:.1f} Python calls "
        f"({len(rows)} functions), {sum(builtin.values()) / requests:.1f} calls of built-ins"
    )
    rows.sort(key=lambda row: -row[3])
    for f, line, qualname, n in rows[:top]:
        print(f"  {n / requests:6.2f}  {qualname}  ({short(f)}:{line})")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="counting window (1 s)")
    parser.add_argument("--top", type=int, default=25, help="functions listed per process")
    args = parser.parse_args()
    if not 0.1 <= args.seconds <= 5:
        parser.error("--seconds must be 0.1 to 5")
    with tempfile.TemporaryDirectory(prefix="homeport-calls-") as tmp:
        work = Path(tmp)
        (work / "site").mkdir()
        (work / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        (work / "out").mkdir()
        out = work / "run.log"
        paths = [str(work / "site"), str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]
        env = {
            **os.environ,
            "PYTHONPATH": ":".join(p for p in paths if p),
            "BENCH_CALLS_OUT": str(work / "out"),
        }
        argv = [sys.executable, str(HERE / "run.py"), "--only", "get", "--path", "relay"]
        with out.open("w") as log:
            bench = subprocess.Popen(
                [*argv, "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        try:
            started = time.monotonic()
            while '"figure":"get_c1","path":"direct"' not in out.read_text():
                if bench.poll() is not None or time.monotonic() - started > START_TIMEOUT:
                    raise SystemExit(f"bench/run.py never ran GET c=1:\n{out.read_text()[-2000:]}")
                time.sleep(0.2)
            time.sleep(2.0)  # past the relay path's warm-up
            who = {
                pid: role
                for pid, role in hops.roles(bench.pid).items()
                if role in MARKERS and pid != bench.pid
            }
            if sorted(who.values()) != ["addon", "relay"]:
                raise SystemExit(f"relay and add-on not found: {who}")
            for pid in who:
                os.kill(pid, signal.SIGUSR1)
            time.sleep(args.seconds)
            for pid in who:
                os.kill(pid, signal.SIGUSR2)
            deadline = time.monotonic() + 30
            while len(list((work / "out").glob("*.json"))) < len(who):
                if time.monotonic() > deadline:
                    raise SystemExit("the counts were not written")
                time.sleep(0.2)
            bench.wait(timeout=600)  # the run ends by itself, and stops its stack
        finally:
            if bench.poll() is None:
                bench.terminate()
                bench.wait()
        for pid, role in sorted(who.items(), key=lambda item: item[1], reverse=True):
            report(role, json.loads((work / "out" / f"{pid}.json").read_text()), args.top)


if __name__ == "__main__":
    main()
