"""Where one small request's time goes, hop by hop: Homeport beside two nginx (GET c=1).

``--workload ws`` does the same for one WebSocket echo (a 1 KiB message there
and back, one at a time), whose chain of reads and writes is the same.

``bench/run.py`` gives the added latency of a small GET at c=1 as one figure.
This tells where it goes.  It runs ``bench/run.py --only get --path P`` for
each path and, while that path's GET c=1 is being measured, records the
system calls of the load generator, the two proxy processes and the backend
with ``perf record`` (tracepoints ``raw_syscalls:sys_enter``/``sys_exit`` of
those processes only) for a short window.  Every request is then followed
through its chain of reads and writes::

    client write -> relay read .. relay write -> add-on read .. add-on write
    -> backend -> add-on read .. add-on write -> relay read .. relay write
    -> client read

and the median of each segment is printed: a *hop* is one process's own
time from the read that brought the bytes to the write that passes them on
(its TLS, parsing and logic, in user space and system calls); a *wake* is
the time from one process's write to the next one's read (the kernel, the
scheduler, the other CPU waking).  Tracing slows every system call a little,
the same for both paths; the figures are for comparing the paths' hops, not
for the latency itself (that is ``bench/run.py``'s).

Needs ``perf`` and the right to trace other processes (root, or
``kernel.perf_event_paranoid`` at -1).  About a minute and a half.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: How long the system calls are recorded, once the path's GET c=1 is under way.
WINDOW = 0.5
#: How long to wait for the path's GET c=1 to start (the stack comes up first).
START_TIMEOUT = 120.0
#: bench/run.py's workload group, and the figure that is followed, per workload.
#: and how long after direct's figure the path is past its warm-up (and still measured).
WORKLOADS = {"get": ("get", "get_c1", 2.0), "ws": ("ws", "ws_echo", 1.0)}

_READS = {0: "read", 19: "readv", 45: "recvfrom", 47: "recvmsg"}
_WRITES = {1: "write", 20: "writev", 44: "sendto", 46: "sendmsg"}
_WAITS = {232: "epoll_wait", 281: "epoll_pwait", 441: "epoll_pwait2"}
_EVENT = re.compile(
    r"\s*\S+\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+raw_syscalls:sys_(enter|exit): NR (\d+)"
    r"(?: \(([0-9a-f]+)| = (-?\d+))?"
)

#: The chain of one request: (process, what it does), in order.
CHAIN = (
    ("client", "write"),
    ("relay", "read"),
    ("relay", "write"),
    ("addon", "read"),
    ("addon", "write"),
    ("backend", "read"),
    ("backend", "write"),
    ("addon", "read"),
    ("addon", "write"),
    ("relay", "read"),
    ("relay", "write"),
    ("client", "read"),
)
SEGMENTS = (
    "wake: client -> relay",
    "hop: relay, request in",
    "wake: relay -> add-on",
    "hop: add-on, request in",
    "wake: add-on -> backend",
    "backend (the same on every path)",
    "wake: backend -> add-on",
    "hop: add-on, response out",
    "wake: add-on -> relay",
    "hop: relay, response out",
    "wake: relay -> client",
)


def roles(run_pid: int) -> dict[int, str]:
    """The processes of ``bench/run.py``'s stack, by what they stand for."""
    found: dict[int, str] = {run_pid: "client"}
    masters: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        pid = int(entry.name)
        if "backend.py" in args:
            found[pid] = "backend"
        elif "homeport" in args and " relay " in args:
            found[pid] = "relay"
        elif "homeport" in args and " addon " in args:
            found[pid] = "addon"
        elif "nginx: master" in args:
            masters[pid] = "relay" if "nginx_relay" in args else "addon"
        elif "nginx: worker" in args:
            found[pid] = f"worker-of-{parent}"
    for pid, role in list(found.items()):
        if role.startswith("worker-of-"):
            found[pid] = masters.get(int(role.removeprefix("worker-of-")), "?")
    return found


def record(path: str, workload: str, workdir: Path) -> tuple[dict[int, str], Path, str]:
    """Run the benchmark for ``path`` and record its ``workload`` for a short window."""
    group, figure_name, settle = WORKLOADS[workload]
    out = workdir / f"{path}.log"
    data = workdir / f"{path}.perf"
    env = {**os.environ, "PYTHONPATH": f"{HERE.parent / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    with out.open("w") as log:
        bench = subprocess.Popen(
            [sys.executable, str(HERE / "run.py"), "--only", group, "--path", path],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        started = time.monotonic()
        direct_done = f'"figure":"{figure_name}","path":"direct"'
        while direct_done not in out.read_text():
            if bench.poll() is not None or time.monotonic() - started > START_TIMEOUT:
                raise SystemExit(
                    f"bench/run.py never ran {figure_name}:\n{out.read_text()[-2000:]}"
                )
            time.sleep(0.2)
        time.sleep(settle)
        who = {pid: role for pid, role in roles(bench.pid).items() if role != "?"}
        subprocess.run(
            ["perf", "record", "-q", "-o", str(data), "-p", ",".join(map(str, who)),
             "-e", "raw_syscalls:sys_enter,raw_syscalls:sys_exit", "--", "sleep", str(WINDOW)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        bench.wait(timeout=600)
    finally:
        if bench.poll() is None:
            bench.terminate()
            bench.wait()
    figure = next(
        (
            line
            for line in out.read_text().splitlines()
            if f'"{figure_name}","path":"{path}"' in line
        ),
        "",
    )
    return who, data, figure


def calls(data: Path, who: dict[int, str]) -> dict[str, list[tuple[float, str, int]]]:
    """Each role's reads and writes that moved bytes, and its waits for the next
    event: (entry time, 'read', 'write' or 'wait', the core it ran on)."""
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "comm,pid,tid,cpu,time,event,trace"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    pending: dict[int, tuple[float, int]] = {}
    out: dict[str, list[tuple[float, str, int]]] = defaultdict(list)
    for line in script.splitlines():
        match = _EVENT.match(line)
        if match is None:
            continue
        pid, tid, cpu, at, kind, number, _, result = match.groups()
        core = int(cpu)
        if int(pid) not in who or pid != tid:
            continue  # the event loops run on the main thread
        nr = int(number)
        if kind == "enter":
            pending[int(tid)] = (float(at), nr)
            if nr in _WAITS:
                out[who[int(pid)]].append((float(at), "wait", core))
            continue
        entered = pending.pop(int(tid), None)
        if entered is None or entered[1] != nr or result is None:
            continue
        if nr in _READS and int(result) > 0:
            out[who[int(pid)]].append((entered[0], "read", core))
        elif nr in _WRITES and int(result) > 0:
            out[who[int(pid)]].append((entered[0], "write", core))
    return out


def segments(timeline: dict[str, list[tuple[float, str, int]]]) -> dict[str, list[float]]:
    """Follow each request along CHAIN; the microseconds of every segment.

    Wakes are also filed by whether the process woken read on the core the
    writer wrote on, or on the other one."""
    index = {
        (role, kind): [at for at, k, _ in events if k == kind]
        for role, events in timeline.items()
        for kind in ("read", "write", "wait")
    }
    cores = {
        (role, kind): [core for _, k, core in events if k == kind]
        for role, events in timeline.items()
        for kind in ("read", "write")
    }
    found: dict[str, list[float]] = defaultdict(list)
    client_cores = cores.get(("client", "write"), [])
    for start, start_core in zip(index.get(("client", "write"), []), client_cores, strict=True):
        times = [start]
        on = [start_core]
        for role, kind in CHAIN[1:]:
            series = index.get((role, kind), [])
            i = bisect.bisect_right(series, times[-1])
            if i == len(series):
                break
            times.append(series[i])
            on.append(cores[(role, kind)][i])
        else:
            if times[-1] - start > 0.01:
                continue  # lost track (a timer, a retransmission): skip this one
            for k, (name, (a, b)) in enumerate(
                zip(SEGMENTS, itertools.pairwise(times), strict=True)
            ):
                found[name].append((b - a) * 1e6)
                if name.startswith("wake:"):
                    where = "same core" if on[k] == on[k + 1] else "other core"
                    found[f"wakes to the {where}"].append((b - a) * 1e6)
            # What each hop's process still does after passing the bytes on, until it
            # waits again: on a shared core the next process may wait for it.
            for k, name in enumerate(SEGMENTS):
                if name.startswith("hop:"):
                    role, written = CHAIN[k + 1][0], times[k + 1]
                    waits = index.get((role, "wait"), [])
                    w = bisect.bisect_right(waits, written)
                    if w < len(waits):
                        found["tail after " + name].append((waits[w] - written) * 1e6)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", action="append", choices=("relay", "nginx"), help="default: both")
    parser.add_argument("--workload", choices=tuple(WORKLOADS), default="get")
    args = parser.parse_args()
    if shutil.which("perf") is None:
        print("needs perf (Debian: linux-perf)", file=sys.stderr)
        return 2
    paths = args.path or ["relay", "nginx"]
    table: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="homeport-hops-") as tmp:
        for path in paths:
            who, data, figure = record(path, args.workload, Path(tmp))
            table[path] = segments(calls(data, who))
            print(f"{path}: {figure}", flush=True)

    def median(path: str, name: str) -> float:
        values = table[path].get(name)
        return statistics.median(values) if values else math.nan

    def line(label: str, values: list[float]) -> None:
        print(f"{label:<40}" + "".join(f"{v:10.1f}" for v in values))

    title = {"get": "per request (GET c=1", "ws": "per echo (WebSocket"}[args.workload]
    print(f"\n{'median µs ' + title + ', traced)':<40}" + "".join(f"{p:>10}" for p in paths))
    for name in SEGMENTS:
        line(name, [median(p, name) for p in paths])
        if name.startswith("hop:"):
            line(
                "  then busy until it waits again", [median(p, "tail after " + name) for p in paths]
            )
    for label, prefix in (("all four hops", "hop:"), ("all six wakes", "wake:")):
        line(label, [sum(median(p, n) for n in SEGMENTS if n.startswith(prefix)) for p in paths])
    for where in ("same core", "other core"):
        key = f"wakes to the {where}"
        shares = [
            100 * len(table[p].get(key, [])) / max(1, 6 * len(table[p].get(SEGMENTS[0], [])))
            for p in paths
        ]
        line(f"wakes to the {where}: % of them", shares)
        line("  median µs", [median(p, key) for p in paths])
    counts = [len(table[p].get(SEGMENTS[0], [])) for p in paths]
    print(f"{'requests followed':<40}" + "".join(f"{v:10d}" for v in counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
