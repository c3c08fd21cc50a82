"""What a microsecond of Python costs at GET c=1: in a tight loop, or spread over many functions.

At c=1 every process of the path runs with its caches cold (``docs/performance.md``,
"hop by hop"), and Homeport's CPU per request there is three to four times its
c=32 figure.  Is that a fixed multiplier on every microsecond of work, or does
it depend on how much code and data the work touches?  This adds a known
amount of work to the Python floor's relay pump (``bench/shape_floor.py``),
once per request, in two forms that cost the same warm:

* ``spin``: a tight loop (one small code object, no data);
* ``spread``: as many distinct small functions, each called once (many code
  objects, touched once each per request, as a request touches a program's
  layers).

Both are calibrated in this process to ``--micros`` (40 µs by default) warm,
then the floor, floor+spin and floor+spread run GET c=1 and c=32 beside
direct, in one run (``bench/run.py``'s backend and load generator; no
Homeport, no nginx).  What each adds to the floor's relay CPU per request,
divided by its warm cost, is the multiplier the machine puts on that kind of
work.  About two minutes; ``--quick`` about thirty seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

import lean_path
import run as bench
import shape_floor

KINDS = ("spin", "spread")
for _kind in KINDS:
    bench.SIDES[_kind] = ((f"{_kind}_relay",), (f"{_kind}_addon",))
    bench.TITLES[_kind] = f"floor+{_kind}"


def make_work(kind: str, size: int) -> Callable[[], None]:
    """The work of ``kind`` and ``size``: loop turns (spin) or distinct functions (spread)."""
    if kind == "spin":

        def spin() -> None:
            for _ in range(size):
                pass

        return spin
    if kind != "spread":
        raise ValueError(f"unknown work {kind!r}")
    body = "def f{0}(x):\n    y = x + {0}\n    return y * 2 if y > {0} else y - 1"
    source = "\n".join(body.format(i) for i in range(size))
    namespace: dict[str, Any] = {}
    exec(compile(source, "<spread>", "exec"), namespace)  # our own text, no input
    functions = [namespace[f"f{i}"] for i in range(size)]

    def spread() -> None:
        x = 1
        for function in functions:
            x = function(x) & 0xFFFF

    return spread


def warm_micros(work: Callable[[], None], rounds: int = 2000) -> float:
    """Best of five: µs per call of ``work``, warm."""
    work()
    return lean_path.best_micros(work, rounds)


def calibrate(kind: str, micros: float) -> tuple[int, float]:
    """The size of ``kind`` that costs about ``micros`` warm, and what it costs."""
    size = 64
    while True:
        cost = warm_micros(make_work(kind, size), rounds=200)
        if cost >= micros / 2 or size > 10**6:
            break
        size *= 2
    size = max(1, round(size * micros / cost))
    return size, warm_micros(make_work(kind, size))


async def compare(plan: bench.Plan, works: dict[str, str]) -> bench.Results:
    results = bench.Results()
    with tempfile.TemporaryDirectory(prefix="homeport-footprint-") as tmp:
        workdir = Path(tmp)
        stack = await bench.start_stack(workdir, "warning", homeport=False)
        pumps: list[bench.Proc] = []
        sessions: dict[str, tuple[Any, str]] = {}
        try:
            cert, key, plain_port = shape_floor.backend_tls(stack)
            sessions["direct"] = (bench.client_session(stack.direct_ca), stack.direct_origin)
            for name, work in {"floor": "", **works}.items():
                procs, origin = await shape_floor.start_pumps(
                    workdir, plain_port, cert, key, stack.direct_ca, name, work=work
                )
                pumps += procs
                sessions[name] = (bench.client_session(stack.direct_ca), origin)
            pids = {"backend": stack.backend.pid, "client": os.getpid()}
            pids |= {p.name: p.pid for p in pumps}
            watch = bench.Watch(pids, {}, bench.Sampler({}))
            await bench.run_workloads(plan, {"get"}, results, sessions, watch)
        finally:
            for session, _ in sessions.values():
                await session.close()
            for proc in [*pumps, *stack.procs]:
                proc.stop()
    return results


def report(results: bench.Results, costs: dict[str, float]) -> str:
    r = bench.Report(results)

    def relay_us(figure: str, path: str) -> float | None:
        record = results.get(figure, path)
        if record is None or not record.get("requests"):
            return None
        return float(record["relay_cpu_s"]) / float(record["requests"]) * 1e6

    lines = [
        "path".ljust(16)
        + "warm µs".rjust(9)
        + "c=1 +ms".rjust(9)
        + "c=1 relay µs".rjust(14)
        + "added".rjust(8)
        + "x warm".rjust(8)
        + "c=32 relay µs".rjust(15)
        + "added".rjust(8)
        + "x warm".rjust(8)
    ]
    base1, base32 = relay_us("get_c1", "floor"), relay_us("get_c32", "floor")
    for path in ("floor", *KINDS):
        if results.get("get_c1", path) is None:
            continue
        c1, c32 = relay_us("get_c1", path), relay_us("get_c32", path)
        cost = costs.get(path)
        cells = [bench.fmt(cost, 1), bench.fmt(r.added("get_c1", path), 3), bench.fmt(c1, 0)]
        for value, base in ((c1, base1), (c32, base32)):
            extra = None if value is None or base is None or path == "floor" else value - base
            if value is not c1:
                cells.append(bench.fmt(value, 0))
            cells += [bench.fmt(extra, 0), bench.fmt(bench.ratio(extra, cost), 2)]
        widths = (9, 9, 14, 8, 8, 15, 8, 8)
        lines.append(
            bench.TITLES.get(path, path).ljust(16)
            + "".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
        )
    lines.append(
        "relay µs: the floor relay pump's CPU per request; added: over the floor's; "
        "x warm: added ÷ the work's warm cost"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micros", type=float, default=40.0, help="warm cost of each work")
    parser.add_argument("--quick", action="store_true", help="a smoke run (about 30 s)")
    args = parser.parse_args()
    if not 1 <= args.micros <= 1000:
        parser.error("--micros must be 1 to 1000")
    works: dict[str, str] = {}
    costs: dict[str, float] = {}
    for kind in KINDS:
        size, cost = calibrate(kind, args.micros)
        works[kind] = f"{kind}:{size}"
        costs[kind] = cost
        print(f"{kind}: size {size}, {cost:.1f} µs warm", file=sys.stderr)
    results = uvloop.run(compare(bench.QUICK if args.quick else bench.FULL, works))
    print(report(results, costs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
