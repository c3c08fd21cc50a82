"""``homeport cluster``: one command starts a local cluster and prints where it is.

Runs the real command (PostgreSQL, Redis, three relay nodes, HAProxy and an add-on
on loopback), waits for its banner, checks that the printed account URL answers
through HAProxy and that the home's tunnel is up, then stops it with SIGTERM and
checks that it stopped everything it started.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import sys
from pathlib import Path

import aiohttp
import pytest
from ports import reserve_port

from homeport.addon.client import LocalhostResolver

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


async def test_homeport_cluster_starts_three_nodes_behind_haproxy_and_stops_them(
    tmp_path: Path,
) -> None:
    port = reserve_port()
    out = tmp_path / "cluster.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEPORT_")}
    with out.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "homeport.cli", "cluster",
            "--data-dir", str(tmp_path / "cluster"), "--port", str(port),
            "--ha-url", "http://127.0.0.1:9",  # nothing there: the stand-in serves
            stdout=sink, stderr=sink, env=env,
        )  # fmt: skip
    try:
        async with asyncio.timeout(120):
            while b"Press Ctrl+C to stop." not in out.read_bytes():
                assert proc.returncode is None, out.read_text()[-3000:]
                await asyncio.sleep(0.2)
        text = out.read_text()
        pids = [int(p) for p in re.findall(r"node\d pid (\d+)", text)]
        assert len(pids) == 3
        account = re.search(r"Account:\s+(\S+)", text)
        ca = re.search(r"Trust CA:\s+(\S+)", text)
        assert account is not None
        assert ca is not None
        assert account.group(1) == f"https://homeport.localhost:{port}/"
        context = ssl.create_default_context(cafile=ca.group(1))
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context, resolver=LocalhostResolver())
            ) as session,
            session.get(account.group(1) + "signin") as r,
        ):
            assert r.status == 200
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, out.read_text()[-3000:]
    # Every node it started is gone (it waited for them before exiting).
    assert [pid for pid in pids if Path(f"/proc/{pid}").exists()] == []
