"""The trust monitor's verdicts over time, against a loopback stand-in for Home Assistant's
``forwarded`` and ban middlewares (the real thing: tests/e2e/test_home_assistant_trust.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from ports import reserve_port

from homeport.addon.ha_trust import PROBE_CLIENT, Trust, TrustMonitor, proxies_for

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def home_assistant(mode: str, seen: list[str]) -> web.Application:
    @web.middleware
    async def forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        seen.append(request.headers.get("X-Forwarded-For", "-"))
        if mode == "banned":
            return web.Response(status=403, text="403: Forbidden")
        if "X-Forwarded-For" in request.headers and mode == "untrusted":
            return web.Response(status=400, text="400: Bad Request")
        return await handler(request)

    async def manifest(_request: web.Request) -> web.Response:
        return web.json_response({"name": "Home Assistant"})

    app = web.Application(middlewares=[forwarded])
    app.router.add_get("/manifest.json", manifest)
    return app


async def _serve(mode: str, port: int, seen: list[str]) -> web.AppRunner:
    runner = web.AppRunner(home_assistant(mode, seen))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def test_verdicts_follow_home_assistant_and_survive_its_restarts() -> None:
    port = reserve_port()
    url = f"http://127.0.0.1:{port}"
    monitor = TrustMonitor(url, supervised=False)
    seen: list[str] = []
    assert not monitor.send_forwarded()  # nothing known yet: send nothing HA might refuse
    async with aiohttp.ClientSession() as client:
        runner = await _serve("trusted", port, seen)
        report = await monitor.check(client)
        assert report.trust is Trust.TRUSTED
        assert monitor.send_forwarded()
        assert seen == ["-", PROBE_CLIENT]  # one plain request, one with the probe address
        await runner.cleanup()

        # Restarting: unreachable, but the last verdict holds.
        report = await monitor.check(client)
        assert report.trust is Trust.UNREACHABLE
        assert "did not answer" in report.detail
        assert monitor.send_forwarded()

        runner = await _serve("untrusted", port, seen)
        report = await monitor.check(client)
        assert report.trust is Trust.UNTRUSTED
        assert not monitor.send_forwarded()
        assert report.seen_as == "127.0.0.1"
        await runner.cleanup()

        runner = await _serve("banned", port, seen)
        report = await monitor.check(client)
        assert report.trust is Trust.BANNED
        assert "ip_bans.yaml" in report.detail
        assert not monitor.send_forwarded()
        await runner.cleanup()


def test_proxies_to_trust() -> None:
    assert proxies_for("172.30.33.4", supervised=True) == ("172.30.32.0/23",)
    assert proxies_for("127.0.0.1", supervised=False) == ("127.0.0.1", "::1")
    assert proxies_for("::1", supervised=False) == ("127.0.0.1", "::1")
    assert proxies_for("192.168.1.20", supervised=False) == ("192.168.1.20",)
    assert proxies_for(None, supervised=False) == ("127.0.0.1", "::1")
