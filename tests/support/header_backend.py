"""The stand-in backend plus ``/headers``: answers with whatever response headers it is asked for.

``GET /headers?h=Name:Value&h=Name2:Value2`` answers ``200`` with those
headers added (in order, duplicates allowed), so a test can play a Home
Assistant that sends its own HSTS, framing policy, CSP or CORS headers and
check what the relay makes of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from homeport.standin import build_app

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Every request head the recording backend received, as (name, value) text pairs.
Seen = list[list[tuple[str, str]]]


async def headers(request: web.Request) -> web.Response:
    response = web.Response(text="<!doctype html><p>headers</p>", content_type="text/html")
    for item in request.query.getall("h", []):
        name, _, value = item.partition(":")
        response.headers.add(name, value)
    return response


async def start_header_backend() -> tuple[web.AppRunner, str]:
    app = build_app()
    app.router.add_get("/headers", headers)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@contextlib.asynccontextmanager
async def recording_backend() -> AsyncIterator[tuple[str, Seen]]:
    """The stand-in plus ``/headers``, recording every request head it receives (the
    positive control that a header really crossed); yields its URL and the record."""
    seen: Seen = []

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        seen.append([(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.raw_headers])
        return await handler(request)

    app = build_app()
    app.middlewares.append(record)
    app.router.add_get("/headers", headers)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()
