"""The ``flood`` workload: one home pulls downloads flat out; how slow does another home get?

Run: ``.venv/bin/python bench/run.py --flood`` (about a minute; ``--quick`` halves it).

Two runs, each on a fresh set of processes (two backends, the relay, two
add-ons, two users, and the flooder as its own client process, so the only
thing the homes share is the relay): the relay as shipped (no bandwidth cap)
and with ``--tenant-bandwidth`` (default 8M).  In each, the *quiet* home's
small GETs (one at a time, like a dashboard polling) are measured alone,
then while the *flooding* home runs 8 parallel 256 MiB downloads in a loop.  The
figures are the quiet home's p50/p99 with and without the flood, their
ratios, and what the flooder moved (MB/s).  docs/security.md states the
bound the test suite asserts loosely
(``tests/edge/test_edge_limits.py::test_a_flooding_home_does_not_slow_another_beyond_the_bound``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from yarl import URL

from run import (
    EMAIL,
    HERE,
    MB,
    PASSWORD,
    SMALL_PATH,
    TENANT_DOMAIN,
    MiB,
    Proc,
    Stack,
    cli,
    client_session,
    emit,
    free_port,
    percentile,
    sign_in,
    start_stack,
    wait_for_output,
)

SECOND_EMAIL = "quiet@example.com"
FLOODERS = 8
FLOOD_FILE = 256 * MiB


@dataclasses.dataclass(frozen=True)
class FloodPlan:
    requests: int
    cap: float


FULL_FLOOD = FloodPlan(requests=2_000, cap=15.0)
QUICK_FLOOD = FloodPlan(requests=500, cap=6.0)


async def add_home(stack: Stack, email: str, log_level: str) -> tuple[Stack, list[Proc]]:
    """A second user, backend and add-on on ``stack``'s relay."""
    plain_port = free_port()
    backend = Proc(
        "backend-quiet",
        [
            sys.executable,
            str(HERE / "backend.py"),
            f"--tls-port={free_port()}",
            f"--plain-port={plain_port}",
            f"--cert={stack.workdir / 'backend-tls' / 'server.pem'}",
            f"--key={stack.workdir / 'backend-tls' / 'server.key'}",
        ],
        stack.workdir,
    )
    await wait_for_output(backend, r"ready", 30)
    relay_opts = [
        f"--data-dir={stack.workdir / 'relay'}",
        "--account-host=homeport.localhost",
        f"--tenant-domain={TENANT_DOMAIN}",
    ]
    port = URL(stack.tenant_origin).port
    await cli("admin", "user", "create", email, *relay_opts, stdin=PASSWORD.encode() + b"\n")
    pubkey = (await cli("keys", "show", *relay_opts)).strip()
    addon = Proc(
        "addon-quiet",
        [
            sys.executable,
            "-m",
            "homeport.cli",
            f"--log-level={log_level}",
            "addon",
            f"--relay=wss://homeport.localhost:{port}/v1/tunnel",
            f"--ha-url=http://127.0.0.1:{plain_port}",
            f"--state-dir={stack.workdir / 'addon-quiet'}",
            f"--relay-ca={stack.relay_ca}",
            f"--server-pubkey={pubkey}",
        ],
        stack.workdir,
    )
    code = (await wait_for_output(addon, r"Link code: (\S+)", 60)).group(1)
    await cli("admin", "link", code, email, *relay_opts)
    listing = json.loads(await cli("admin", "instance", "list", "--json", *relay_opts))
    (instance,) = [row["id"] for row in listing if row["owner"] == email]
    origin = f"https://{instance}.{TENANT_DOMAIN}:{port}"
    return dataclasses.replace(stack, tenant_origin=origin, addon=addon), [backend, addon]


async def latencies(session: aiohttp.ClientSession, url: str, plan: FloodPlan) -> list[float]:
    out: list[float] = []
    deadline = time.perf_counter() + plan.cap
    while len(out) < plan.requests and time.perf_counter() < deadline:
        t0 = time.perf_counter_ns()
        async with session.get(url, allow_redirects=False) as r:
            await r.read()
            if r.status != 204:
                raise RuntimeError(f"quiet home answered HTTP {r.status}")
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return sorted(out)


async def flood_once(
    workdir: Path, bandwidth: str, plan: FloodPlan, log_level: str
) -> dict[str, Any]:
    extra = (f"--tenant-bandwidth={bandwidth}",) if bandwidth != "0" else ()
    stack = await start_stack(workdir, log_level, relay_extra=extra)
    procs = list(stack.procs)
    try:
        loud_token = await sign_in(stack, EMAIL)
        quiet, quiet_procs = await add_home(stack, SECOND_EMAIL, log_level)
        procs += quiet_procs
        quiet_token = await sign_in(quiet, SECOND_EMAIL)
        loud_session = client_session(stack.relay_ca, cookie=loud_token)
        quiet_session = client_session(stack.relay_ca, cookie=quiet_token)
        url = quiet.tenant_origin + SMALL_PATH
        try:
            await latencies(quiet_session, url, dataclasses.replace(plan, requests=100))
            alone = await latencies(quiet_session, url, plan)
            report = stack.workdir / "flooder.json"
            flooder = Proc(
                "flooder",
                [
                    sys.executable,
                    str(HERE / "flood.py"),
                    f"{stack.tenant_origin}/bytes/{FLOOD_FILE}",
                    loud_token,
                    str(stack.relay_ca),
                    str(report),
                ],
                stack.workdir,
            )
            procs.append(flooder)
            try:
                await asyncio.sleep(3.0)  # under way
                started = time.perf_counter()
                flooded = await latencies(quiet_session, url, plan)
                seconds = time.perf_counter() - started
            finally:
                flooder.stop()  # SIGTERM: it writes how many bytes it moved, and when
            moved = json.loads(report.read_text())
        finally:
            await loud_session.close()
            await quiet_session.close()
    finally:
        for proc in reversed(procs):
            proc.stop()
    figures = {
        "p50_ms_alone": percentile(alone, 0.50),
        "p99_ms_alone": percentile(alone, 0.99),
        "p50_ms_flooded": percentile(flooded, 0.50),
        "p99_ms_flooded": percentile(flooded, 0.99),
    }
    return {
        "figure": "flood",
        "tenant_bandwidth": bandwidth,
        "flooders": FLOODERS,
        "requests": [len(alone), len(flooded)],
        **{k: round(v, 3) for k, v in figures.items()},
        "p50_ratio": round(figures["p50_ms_flooded"] / figures["p50_ms_alone"], 2),
        "p99_ratio": round(figures["p99_ms_flooded"] / figures["p99_ms_alone"], 2),
        "quiet_seconds": round(seconds, 2),
        "flooder_mb_per_s": round(moved["bytes"] / MB / moved["seconds"], 1),
    }


async def run_flood(
    workdir: Path, *, quick: bool, bandwidth: str, log_level: str
) -> list[dict[str, Any]]:
    plan = QUICK_FLOOD if quick else FULL_FLOOD
    records = []
    for number, cap in enumerate(("0", bandwidth)):
        (workdir / f"flood-{number}").mkdir()
        record = await flood_once(workdir / f"flood-{number}", cap, plan, log_level)
        emit(record)
        records.append(record)
    return records


def flood_table(records: list[dict[str, Any]]) -> str:
    lines = [
        f"flood: the quiet home's small GETs while another home pulls {FLOODERS} downloads at once",
        f"{'--tenant-bandwidth':>20} {'p50 alone':>10} {'p50 flood':>10} {'ratio':>6} "
        f"{'p99 alone':>10} {'p99 flood':>10} {'ratio':>6} {'flooder MB/s':>13}",
    ]
    for r in records:
        lines.append(
            f"{r['tenant_bandwidth']:>20} {r['p50_ms_alone']:>8.2f}ms "
            f"{r['p50_ms_flooded']:>8.2f}ms {r['p50_ratio']:>6.2f} "
            f"{r['p99_ms_alone']:>8.2f}ms {r['p99_ms_flooded']:>8.2f}ms "
            f"{r['p99_ratio']:>6.2f} {r['flooder_mb_per_s']:>13.1f}"
        )
    return "\n".join(lines)


async def pull(url: str, token: str, ca: Path, report: Path) -> None:
    """The flooder process: FLOODERS downloads of ``url`` in a loop until SIGTERM."""
    moved = 0
    started = time.perf_counter()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal moved
        while not stop.is_set():
            async with session.get(url) as r:
                async for chunk in r.content.iter_any():
                    moved += len(chunk)
                    if stop.is_set():
                        return

    session = client_session(ca, cookie=token)
    tasks = [asyncio.create_task(one(session)) for _ in range(FLOODERS)]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await session.close()
    seconds = time.perf_counter() - started
    await asyncio.to_thread(report.write_text, json.dumps({"bytes": moved, "seconds": seconds}))


if __name__ == "__main__":
    url, token, ca, report = sys.argv[1:5]
    uvloop.run(pull(url, token, Path(ca), Path(report)))
