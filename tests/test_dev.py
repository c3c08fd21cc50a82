"""The README's first command: ``homeport dev`` runs everything and prints what to open."""

from __future__ import annotations

import asyncio
import re
import ssl
import sys
from pathlib import Path

import aiohttp
from ports import reserve_port

from homeport.addon.client import LocalhostResolver


async def _read_until(stream: asyncio.StreamReader, marker: str, seen: list[str]) -> None:
    async with asyncio.timeout(60):
        while marker not in "".join(seen):
            line = (await stream.readline()).decode()
            if not line:
                raise AssertionError("homeport dev ended early:\n" + "".join(seen))
            seen.append(line)


async def test_dev_prints_a_working_url(tmp_path: Path) -> None:
    port = reserve_port()
    dead_ha = f"http://127.0.0.1:{reserve_port()}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "homeport.cli", "dev",
        "--data-dir", str(tmp_path / "dev"), "--port", str(port), "--ha-url", dead_ha,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        await _read_until(proc.stdout, "Press Ctrl+C to stop.", seen)
        out = "".join(seen)
        assert f"No Home Assistant answers at {dead_ha}" in out  # said clearly, with a way out
        assert "hass --config" in out
        url = re.search(r"Open:\s+(https://\S+)", out)
        email = re.search(r"Sign in as:\s+(\S+)", out)
        password = re.search(r"Password:\s+(\S+)", out)
        ca = re.search(r"Trust CA:\s+(\S+)", out)
        assert url
        assert email
        assert password
        assert ca
        assert url[1].endswith(f".home.localhost:{port}/")

        context = ssl.create_default_context(cafile=ca[1])
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, resolver=LocalhostResolver())
        ) as browser:
            async with browser.get(url[1], headers={"Accept": "text/html"}) as page:
                # Not signed in: the sign-in page of the account site.
                assert page.url.path == "/signin"
                form_url = page.url.with_query(None)
                next_path = page.url.query["next"]
            async with browser.post(
                form_url,
                data={"email": email[1], "password": password[1], "next": next_path},
                headers={"Origin": f"https://homeport.localhost:{port}"},
            ) as page:
                # A new browser on a new network: the code "mailed" to the dev console.
                assert page.status == 200
                assert page.url.path == "/signin/email-code"
                assert "Check your email" in await page.text()
            await _read_until(proc.stdout, "Never give this code", seen)
            mail = "".join(seen)
            assert "[dev mail, not sent] To: dev@homeport.localhost" in mail
            code = re.search(r"^\s+(\d{6})\s*$", mail, re.MULTILINE)
            assert code
            async with browser.post(
                page.url,
                data={"code": code[1]},
                headers={"Origin": f"https://homeport.localhost:{port}"},
            ) as page:
                assert page.status == 200
                assert "Home Assistant stand-in" in await page.text()
                assert page.url.host is not None
                assert page.url.host.endswith(".home.localhost")
    finally:
        proc.terminate()
        async with asyncio.timeout(30):
            await proc.wait()
