"""A mixed soak: page loads, WebSockets, uploads and downloads, with clients giving up at random.

Run: ``.venv/bin/python bench/soak.py`` (10 minutes; ``--seconds 60`` for a short one).

The relay and the add-on run as their own processes, as deployed (the stack
of ``bench/run.py``), the relay with ``--metrics-listen`` so its leak gauges
can be read.  ``--users`` virtual users loop until the time is up, each turn
one of:

* a page load: 20 requests at once (small, medium and a few large bodies);
* a WebSocket: connect, 20 echoes of 1 KiB to 64 KiB, close;
* an upload of 1 to 8 MiB, checked by its SHA-256;
* a download of 1 to 32 MiB, checked byte for byte;

and about one turn in five is abandoned at a random point: the client closes
its connection before the answer, mid-body, mid-upload or mid-WebSocket.

At the end, once the clients are gone, the soak passes only if the tunnel
never dropped (the add-on connected once), no stream, browser connection or
live exchange is left open on the relay, the relay's asyncio tasks are back
to their count before the load, the relay's and the add-on's memory stayed
flat (growth over the second half within 16 MiB), and no exchange that was
not abandoned failed.  Everything is bounded in time and in count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from homeport.standin import CHUNK, pattern_chunk
from run import (
    MiB,
    Sampler,
    Stack,
    client_session,
    free_port,
    group_rss,
    percentile,
    sign_in,
    start_stack,
)

#: Growth allowed over the second half of the soak, per process.
FLAT = 16 * MiB
#: How many asyncio tasks more than before the load count as a leak.
TASK_SLACK = 5


@dataclass
class Tally:
    ops: Counter[str] = field(default_factory=Counter)
    aborted: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)

    def done(self, kind: str, started: float) -> None:
        self.ops[kind] += 1
        self.latencies.setdefault(kind, []).append(time.monotonic() - started)


async def scrape(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^(homeport_[a-z_]+)\s+([0-9.e+-]+)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


async def page_load(client: aiohttp.ClientSession, origin: str, abort: bool) -> None:
    sizes = [512] * 12 + [16 * 1024] * 6 + [256 * 1024] * 2

    async def one(size: int) -> None:
        async with client.get(f"{origin}/bytes/{size}") as response:
            body = await response.read()
            if response.status != 200 or len(body) != size:
                raise AssertionError(f"GET /bytes/{size}: {response.status}, {len(body)} bytes")

    tasks = [asyncio.ensure_future(one(size)) for size in sizes]
    if abort:
        await asyncio.sleep(random.uniform(0, 0.01))
        for task in tasks:
            task.cancel()  # closes their connections: before the head or mid-body
    await asyncio.gather(*tasks, return_exceptions=abort)


async def websocket(client: aiohttp.ClientSession, origin: str, abort: bool) -> None:
    url = origin.replace("https://", "wss://") + "/ws/echo"
    cut_at = random.randrange(20) if abort else -1
    async with client.ws_connect(url, origin=origin) as ws:
        for i in range(20):
            if i == cut_at:
                transport = ws.get_extra_info("transport")
                if transport is not None:
                    transport.abort()  # vanished mid-WebSocket, no close frame
                return
            message = "x" * random.choice((1024, 8 * 1024, 64 * 1024))
            await ws.send_str(message)
            if await ws.receive_str(timeout=30) != message:
                raise AssertionError("WebSocket echo changed the message")


async def upload(client: aiohttp.ClientSession, origin: str, abort: bool) -> None:
    size = random.randint(1, 8) * MiB
    cut = random.randrange(size) if abort else size
    block = pattern_chunk(CHUNK)

    async def body() -> Any:
        sent = 0
        while sent < size:
            if sent >= cut:
                raise ConnectionAbortedError("client gave up mid-upload")
            piece = block[: min(CHUNK, size - sent)]
            sent += len(piece)
            yield piece

    async with client.put(f"{origin}/upload", data=body()) as response:
        result = await response.json()
    expected = hashlib.sha256((block * (size // CHUNK + 1))[:size]).hexdigest()
    if result != {"length": size, "sha256": expected}:
        raise AssertionError(f"upload of {size} bytes arrived as {result}")


async def download(client: aiohttp.ClientSession, origin: str, abort: bool) -> None:
    size = random.randint(1, 32) * MiB
    cut = random.randrange(size) if abort else size
    got = 0
    digest = hashlib.sha256()
    async with client.get(f"{origin}/bytes/{size}") as response:
        async for chunk in response.content.iter_chunked(256 * 1024):
            got += len(chunk)
            digest.update(chunk)
            if got >= cut and abort:
                response.close()  # gave up mid-download
                return
    block = pattern_chunk(CHUNK)
    expected = hashlib.sha256((block * (size // CHUNK + 1))[:size]).hexdigest()
    if got != size or digest.hexdigest() != expected:
        raise AssertionError(f"download of {size} bytes: got {got}")


KINDS = {"page": page_load, "websocket": websocket, "upload": upload, "download": download}
WEIGHTS = {"page": 6, "websocket": 2, "upload": 1, "download": 1}


async def user(
    stack: Stack,
    token: str,
    deadline: float,
    tally: Tally,
    abort_share: float,
    seed: int,
    weights: dict[str, int] = WEIGHTS,
) -> None:
    rng = random.Random(seed)
    kinds = [k for k, w in weights.items() for _ in range(w)]
    async with client_session(stack.relay_ca, cookie=token) as client:
        while time.monotonic() < deadline:
            kind = rng.choice(kinds)
            abort = rng.random() < abort_share
            started = time.monotonic()
            try:
                async with asyncio.timeout(120):
                    await KINDS[kind](client, stack.tenant_origin, abort)
            except (aiohttp.ClientError, ConnectionError, asyncio.CancelledError) as exc:
                if not abort:
                    tally.failures.append(f"{kind}: {type(exc).__name__}: {exc}")
            except (AssertionError, TimeoutError) as exc:
                tally.failures.append(f"{kind}: {type(exc).__name__}: {exc}")
            if abort:
                tally.aborted[kind] += 1
            else:
                tally.done(kind, started)


async def soak(
    seconds: float, users: int, abort_share: float, weights: dict[str, int] = WEIGHTS
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="homeport-soak-") as tmp:
        metrics_port = free_port()
        stack = await start_stack(
            Path(tmp), "info", (f"--metrics-listen=127.0.0.1:{metrics_port}",)
        )
        metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        assert stack.relay is not None
        assert stack.addon is not None
        pids = {"relay": (stack.relay.pid,), "addon": (stack.addon.pid,)}
        sampler = Sampler(pids, interval=1.0)
        sampler.start()
        try:
            token = await sign_in(stack)
            # Warm up (pools, caches, the first TLS sessions), then the baseline.
            warm = Tally()
            await user(stack, token, time.monotonic() + 5, warm, 0.0, 0)
            await asyncio.sleep(1)
            before = await scrape(metrics)
            rss_before = {name: group_rss(p) for name, p in pids.items()}
            started = time.monotonic()
            tally = Tally()
            deadline = started + seconds
            await asyncio.gather(
                *(
                    user(stack, token, deadline, tally, abort_share, i + 1, weights)
                    for i in range(users)
                )
            )
            ended = time.monotonic()
            # Let the relay and the add-on notice the last closed connections.
            await asyncio.sleep(5)
            after = await scrape(metrics)
            rss_after = {name: group_rss(p) for name, p in pids.items()}
            # Read before stopping: stopping ends the tunnel, and says so.
            relay_log = stack.relay.output()
            addon_log = stack.addon.output()
        finally:
            sampler.stop()
            for proc in stack.procs:
                proc.stop()
        middle = (started + ended) / 2
        growth = {}
        for name in pids:
            first = [r for t, r in sampler.between(started, middle, name)]
            second = [r for t, r in sampler.between(middle, ended, name)]
            growth[name] = (max(second, default=0) - max(first, default=0)) / MiB
        report = {
            "seconds": round(ended - started, 1),
            "users": users,
            "ops": dict(tally.ops),
            "aborted": dict(tally.aborted),
            "failures": tally.failures[:20],
            "failure_count": len(tally.failures),
            "p50_ms": {
                k: round(percentile(sorted(v), 0.5) * 1000, 1) for k, v in tally.latencies.items()
            },
            "tunnel_drops": relay_log.count('"hub.tunnel_down"'),
            "addon_connects": addon_log.count('"addon.connected"'),
            "after": {k: after.get(k) for k in GAUGES},
            "tasks_before": before.get("homeport_asyncio_tasks"),
            "rss_mib": {
                name: [round(rss_before[name] / MiB, 1), round(rss_after[name] / MiB, 1)]
                for name in pids
            },
            "rss_growth_second_half_mib": {k: round(v, 1) for k, v in growth.items()},
        }
        report["verdict"] = verdict(report)
        return report


GAUGES = (
    "homeport_tunnel_streams",
    "homeport_live_exchanges",
    "homeport_tenant_connections",
    "homeport_asyncio_tasks",
    "homeport_tunnels_connected",
)


def verdict(report: dict[str, Any]) -> list[str]:
    """What failed, if anything (an empty list is a pass)."""
    problems = []
    after = report["after"]
    if report["failure_count"]:
        problems.append(f"{report['failure_count']} exchanges failed that nobody abandoned")
    if report["tunnel_drops"] or report["addon_connects"] != 1:
        problems.append("the tunnel dropped")
    for name in ("homeport_tunnel_streams", "homeport_live_exchanges"):
        if after.get(name):
            problems.append(f"{name} = {after[name]} after the load (leak)")
    if after.get("homeport_tenant_connections"):
        problems.append(f"{after['homeport_tenant_connections']} browser connections left open")
    tasks_before = report["tasks_before"] or 0
    if (after.get("homeport_asyncio_tasks") or 0) > tasks_before + TASK_SLACK:
        problems.append(f"asyncio tasks {tasks_before} -> {after['homeport_asyncio_tasks']}")
    for name, grown in report["rss_growth_second_half_mib"].items():
        if grown * MiB > FLAT:
            problems.append(f"{name} memory grew {grown} MiB over the second half")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--abort", type=float, default=0.2, help="share of turns abandoned")
    parser.add_argument(
        "--only", action="append", choices=list(KINDS), help="only these kinds of turn"
    )
    args = parser.parse_args()
    weights = {k: w for k, w in WEIGHTS.items() if not args.only or k in args.only}
    report = uvloop.run(soak(args.seconds, args.users, args.abort, weights))
    print(json.dumps(report, indent=2))
    if report["verdict"]:
        print("SOAK FAILED: " + "; ".join(report["verdict"]), file=sys.stderr)
        return 1
    print("SOAK PASSED")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
