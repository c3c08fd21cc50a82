"""A local stand-in of Have I Been Pwned's range API, for the breached-password tests.

``RangeService`` serves ``GET /range/{prefix}`` on 127.0.0.1 (a port the kernel
picks) the way the real service does: one ``SUFFIX:COUNT`` line per known hash
under the prefix, CRLF-separated, and, when asked with ``Add-Padding: true``,
extra lines of count 0. Tests never reach the real service.

Knobs: ``breached`` (passwords it knows, with a count), ``padding`` (extra
count-0 suffixes to add, e.g. the exact suffix of a password that was never
breached), ``delay`` (seconds before answering: a timeout), ``status`` (answer
with an error instead), ``body`` (answer 200 with this text instead).
``requests`` records what arrived (path and headers).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass, field

from aiohttp import web

#: Random padding lines added to every padded answer (the real service pads to 800-1000).
PADDING_LINES = 200


def sha1_split(password: str) -> tuple[str, str]:
    digest = hashlib.sha1(password.encode()).hexdigest().upper()
    return digest[:5], digest[5:]


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


@dataclass
class RangeService:
    breached: dict[str, int] = field(default_factory=dict)
    padding: set[str] = field(default_factory=set)
    delay: float = 0.0
    status: int = 200
    #: Answer this text instead of a range answer (a captive portal, a wrong URL).
    body: str | None = None
    requests: list[Seen] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def __aenter__(self) -> RangeService:
        app = web.Application()
        app.router.add_get("/range/{prefix}", self._range)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _range(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Seen(request.path, dict(request.headers)))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, text="unavailable")
        if self.body is not None:
            return web.Response(text=self.body, content_type="text/html")
        prefix = request.match_info["prefix"].upper()
        lines = []
        for password, count in self.breached.items():
            p, suffix = sha1_split(password)
            if p == prefix:
                lines.append(f"{suffix}:{count}")
        if request.headers.get("Add-Padding") == "true":
            lines += [f"{s}:0" for s in self.padding]
            lines += [f"{secrets.token_hex(18)[:35].upper()}:0" for _ in range(PADDING_LINES)]
        return web.Response(text="\r\n".join(lines), content_type="text/plain")
