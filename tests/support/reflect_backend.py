"""The stand-in backend plus a ``/reflect`` endpoint and a record of what arrived.

``/reflect/...`` answers with the request body as its body and puts the
request's ``X-Marker`` header back into a response header and a cookie, so a
test can push one value through every part of a response.  ``seen`` records
every request target and header block the backend received: the positive
control that a value really crossed the relay and the tunnel.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from homeport.standin import build_app


@dataclass
class Seen:
    requests: list[bytes] = field(default_factory=list)

    def text(self) -> bytes:
        return b"\n".join(self.requests)

    def targets(self) -> list[str]:
        return [r.split(b"\n", 1)[0].decode("latin-1") for r in self.requests]


async def reflect(request: web.Request) -> web.Response:
    body = await request.read()
    marker = request.headers.get("X-Marker", "")
    response = web.Response(body=body, content_type="application/octet-stream")
    response.headers["X-Reflect"] = marker
    response.set_cookie("pref", marker, path="/")
    return response


async def start_reflecting_backend() -> tuple[web.AppRunner, str, Seen]:
    seen = Seen()

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        lines = [f"{request.method} {request.raw_path}".encode("latin-1")]
        lines += [name + b": " + value for name, value in request.raw_headers]
        seen.requests.append(b"\n".join(lines))
        return await handler(request)

    app = build_app()
    app.middlewares.append(record)
    app.router.add_route("*", "/reflect/{tail:.*}", reflect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}", seen
