"""The stand-in backend with a witness: it records what reached it and how each request ended.

Edge-case tests need to prove a negative ("this request never reached Home
Assistant") and a release ("the upstream request was let go when the browser
vanished").  ``start_observed_standin`` serves the ordinary stand-in app with
one middleware in front that notes every request's method and target, and
whether its handler finished, failed because the peer disconnected, or was
cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from homeport.standin import build_app

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    target: str
    started: float
    ended: float | None = None
    #: "done", "disconnected" (the add-on's connection went away) or "cancelled".
    outcome: str | None = None


@dataclass
class Witness:
    requests: list[Seen] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def targets(self) -> list[str]:
        return [seen.target for seen in self.requests]

    def matching(self, prefix: str) -> list[Seen]:
        return [seen for seen in self.requests if seen.target.startswith(prefix)]

    async def wait_for(self, check: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                await self.changed.wait()

    def _touch(self) -> None:
        self.changed.set()


def _middleware(
    witness: Witness,
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        seen = Seen(request.method, request.raw_path, time.monotonic())
        witness.requests.append(seen)
        witness._touch()
        try:
            response = await handler(request)
        except (ConnectionResetError, ConnectionError):
            seen.outcome = "disconnected"
            raise
        except asyncio.CancelledError:
            seen.outcome = "cancelled"
            raise
        finally:
            seen.ended = time.monotonic()
            if seen.outcome is None:
                seen.outcome = "done"
            witness._touch()
        return response

    return record


async def start_observed_standin() -> tuple[web.AppRunner, str, Witness]:
    """The stand-in on 127.0.0.1 behind a recording middleware: (runner, base URL, witness)."""
    witness = Witness()
    app = build_app()
    app.middlewares.append(_middleware(witness))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}", witness
