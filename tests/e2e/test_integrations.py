"""End to end: integrations past the gate, with a recording backend in place of Home Assistant.

Real relay, add-on and account site over TLS on loopback; the backend records
every webhook and voice call it completes (after reading the whole body) and
serves ``/api/states`` as the target a look-alike path would reach.  The
real Home Assistant side (its webhook triggers, ``local_only``, tokens) is in
``test_integrations_home_assistant.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from rawhttp import RawResponse, exchange, tls_context
from stack import Browser, Stack, start_stack
from tenants import extra_tenant

from homeport.accounts.integrations import CALL_EVENT, CHANGED_EVENT, Switches
from homeport.addon.client import LocalhostResolver
from homeport.addon.gate import RemoteAccessGate
from homeport.standin import build_app

pytestmark = pytest.mark.timeout(120)

HOOK = "/api/webhook/homeport-hook_01"
GATED = 401  # the relay's answer to a request without a session that is not let through


@dataclass
class Backend:
    url: str = ""
    #: (path, method, body length, X-Forwarded-For, Cookie) of every call completed.
    calls: list[tuple[str, str, int, str, str]] = field(default_factory=list)
    #: Every request head that arrived, by path (completed or not).
    heads: list[str] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [c[0] for c in self.calls]


@contextlib.asynccontextmanager
async def recording_backend() -> AsyncIterator[Backend]:
    backend = Backend()

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        backend.heads.append(request.raw_path)
        return await handler(request)

    async def call(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        backend.calls.append(
            (
                request.raw_path,
                request.method,
                len(body),
                request.headers.get("X-Forwarded-For", ""),
                request.headers.get("Cookie", ""),
            )
        )
        if request.match_info.get("id") == "slow":
            response = web.StreamResponse()
            await response.prepare(request)
            for _ in range(600):  # 60 s at most: the tests cut it long before
                await response.write(b"tick\n")
                await asyncio.sleep(0.1)
            return response
        return web.json_response({"ok": True, "path": request.raw_path})

    async def states(request: web.Request) -> web.Response:
        backend.calls.append((request.raw_path, request.method, 0, "", ""))
        return web.Response(text="STATES")

    app = build_app()
    app.middlewares.append(record)
    app.router.add_route("*", "/api/webhook/{id}", call)
    for path in ("/api/google_assistant", "/api/alexa/smart_home", "/auth/token"):
        app.router.add_post(path, call)
    app.router.add_get("/api/states", states)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    backend.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield backend
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def integration_stack(
    tmp_path: Path, backend: Backend, **options: Any
) -> AsyncIterator[Stack]:
    async with start_stack(tmp_path, ha_url=backend.url, **options) as stack:
        yield stack


async def switch(stack: Stack, *, webhooks: bool = False, voice: bool = False) -> None:
    """Set the home's switches in the store (before any call: nothing cached yet)."""
    owner = await stack.relay.accounts.get_user_by_email(stack.email)
    assert owner is not None
    await stack.relay.accounts.integrations.set(
        owner.id, stack.instance_id, Switches(webhooks=webhooks, voice=voice)
    )


def caller(stack: Stack, source_ip: str | None = None) -> aiohttp.ClientSession:
    """A service on the internet: no cookies, no Homeport session; from ``source_ip``."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            ssl=tls_context(stack.ca_path),
            resolver=LocalhostResolver(),
            local_addr=(source_ip, 0) if source_ip else None,
        ),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=20),
    )


async def post_form(browser: Browser, path: str, data: dict[str, str]) -> tuple[int, str]:
    stack = browser.stack
    async with browser.request(
        "POST", stack.account_origin + path, data=data, headers={"Origin": stack.account_origin}
    ) as r:
        return r.status, r.headers.get("Location", "")


async def raw(
    stack: Stack, head: str, body: bytes = b"", *, close_wait: float = 0.05
) -> RawResponse:
    host = f"{stack.instance_id}.{stack.config.tenant_domain}"
    data = head.replace("HOST", host).replace("\n", "\r\n").encode("latin-1") + body
    return await exchange(
        stack.config.listen_port, host, stack.ca_path, data, close_wait=close_wait
    )


# --------------------------------------------------------------------------- on, off


async def test_off_by_default_then_the_owner_turns_webhooks_on_at_the_site(tmp_path: Path) -> None:
    async with (
        recording_backend() as backend,
        integration_stack(tmp_path, backend) as stack,
        caller(stack) as service,
        stack.browser() as owner,
    ):
        url = stack.tenant_origin + HOOK
        async with service.post(url, json={"t": 21}) as r:
            assert r.status == GATED
            assert "Sign in to Homeport" in await r.text()
        assert backend.calls == []

        await owner.sign_in_account_site()
        async with owner.request(
            "GET", f"{stack.account_origin}/instances/{stack.instance_id}"
        ) as r:
            page = await r.text()
        assert 'name="webhooks"' in page
        assert "/api/webhook/" not in page  # no URL to paste while it is off

        status, location = await post_form(
            owner, f"/instances/{stack.instance_id}/integrations", {"webhooks": "yes"}
        )
        assert status == 303
        assert location.endswith("#integrations")
        async with owner.request(
            "GET", f"{stack.account_origin}/instances/{stack.instance_id}"
        ) as r:
            page = await r.text()
        assert f"{stack.tenant_origin}/api/webhook/" in page
        assert "/api/google_assistant" not in page  # voice is still off

        async with service.post(url, json={"t": 21}) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["path"] == HOOK
        # Voice assistants are a separate switch: still gated.
        async with service.post(stack.tenant_origin + "/api/google_assistant", json={}) as r:
            assert r.status == GATED
        assert backend.paths() == [HOOK]

        events = await stack.relay.accounts.audit.for_instance(stack.instance_id)
        changed = [e for e in events if e.kind == CHANGED_EVENT]
        assert len(changed) == 1
        assert changed[0].detail == "on: webhooks"
        assert changed[0].user_id is not None


async def test_voice_switch_lets_exactly_the_three_voice_paths_through(tmp_path: Path) -> None:
    async with (
        recording_backend() as backend,
        integration_stack(tmp_path, backend) as stack,
        caller(stack) as service,
    ):
        await switch(stack, voice=True)
        for path in ("/api/alexa/smart_home", "/api/google_assistant", "/auth/token"):
            async with service.post(stack.tenant_origin + path, data=b"{}") as r:
                assert r.status == 200, (path, await r.text())
        for path in (HOOK, "/auth/authorize", "/api/states", "/auth/login_flow"):
            async with service.post(stack.tenant_origin + path, data=b"{}") as r:
                assert r.status == GATED, path
        assert backend.paths() == ["/api/alexa/smart_home", "/api/google_assistant", "/auth/token"]

        # The owner's page shows what to paste into the Alexa skill and the Google project.
        async with stack.browser() as owner:
            await owner.sign_in_account_site()
            page_url = f"{stack.account_origin}/instances/{stack.instance_id}"
            async with owner.request("GET", page_url) as r:
                page = await r.text()
        origin = stack.tenant_origin
        assert f'value="{origin}/api/google_assistant"' in page
        assert f'value="{origin}/auth/authorize"' in page
        assert f'value="{origin}/auth/token"' in page
        assert f'value="{origin}"' in page
        assert "/api/webhook/" not in page  # webhooks are off


async def test_a_member_cannot_switch_integrations_and_nothing_changes(tmp_path: Path) -> None:
    async with (
        recording_backend() as backend,
        integration_stack(tmp_path, backend) as stack,
    ):
        accounts = stack.relay.accounts
        bob = await accounts.create_user("bob@example.com", stack.password)
        await accounts.instances.add_member(stack.instance_id, bob.id)
        async with Browser(dataclasses.replace(stack, email="bob@example.com")) as member:
            await member.sign_in_account_site()
            status, _ = await post_form(
                member, f"/instances/{stack.instance_id}/integrations", {"webhooks": "yes"}
            )
        assert status == 404
        assert await accounts.integrations.get(stack.instance_id) == Switches()


# ---------------------------------------------------------------- the caller's address


async def test_the_callers_own_address_reaches_home_assistant_and_relay_cookies_do_not(
    tmp_path: Path,
) -> None:
    async with (
        recording_backend() as backend,
        integration_stack(tmp_path, backend) as stack,
        caller(stack, source_ip="127.0.0.3") as service,
    ):
        await switch(stack, webhooks=True)
        async with service.post(
            stack.tenant_origin + HOOK,
            data=b"{}",
            headers={
                "X-Forwarded-For": "8.8.8.8",
                "X-Real-IP": "8.8.4.4",
                "Forwarded": "for=1.1.1.1",
                "Cookie": "__Host-homeport_session=forged; theirs=1",
            },
        ) as r:
            assert r.status == 200
        [(_path, _method, _length, forwarded, cookie)] = backend.calls
        assert forwarded == "127.0.0.3"  # what the relay saw, nothing the caller claimed
        assert cookie == "theirs=1"


# -------------------------------------------------------------------- bypass attempts

LOOK_ALIKES = [
    "/api/webhook/../states",
    "/api/webhook/homeport-hook_01/../../states",
    "/api/webhook/x%2F..%2F..%2Fstates",
    "/api/webhook/%2e%2e/states",
    "/api/webhook/%2E%2E%2Fstates",
    "/API/webhook/homeport-hook_01",
    "/api/Webhook/homeport-hook_01",
    "/api/webhook/homeport-hook_01/",
    "/api/webhook/homeport-hook_01/extra",
    "//api/webhook/homeport-hook_01",
    "/api//webhook/homeport-hook_01",
    "/api/webhook/homeport-hook_01#x",
    "/api/google_assistant/../states",
    "/api/google_assistant/",
    "/auth/token/../../api/states",
    "/auth/token?x=1",
    "/Auth/token",
]


async def test_look_alike_paths_meet_the_gate_and_never_reach_home_assistant(
    tmp_path: Path,
) -> None:
    async with (
        recording_backend() as backend,
        integration_stack(tmp_path, backend) as stack,
    ):
        await switch(stack, webhooks=True, voice=True)
        for target in LOOK_ALIKES:
            for method in ("GET", "POST"):
                answer = await raw(
                    stack, f"{method} {target} HTTP/1.1\nHost: HOST\nContent-Length: 2\n\n", b"{}"
                )
                assert answer.status in (GATED, 400), (method, target, answer.status)
        assert backend.heads == []
        # The positive control: the exact path, sent the same way, does reach it.
        answer = await raw(stack, f"POST {HOOK} HTTP/1.1\nHost: HOST\nContent-Length: 2\n\n", b"{}")
        assert answer.status == 200
        assert backend.paths() == [HOOK]


async def test_methods_and_upgrades_are_not_let_through(tmp_path: Path) -> None:
    async with (
        recording_backend() as backend,
        integration_stack(tmp_path, backend) as stack,
    ):
        await switch(stack, webhooks=True, voice=True)
        for method in ("DELETE", "PATCH", "OPTIONS"):
            answer = await raw(stack, f"{method} {HOOK} HTTP/1.1\nHost: HOST\n\n")
            assert answer.status == GATED, method
        for method in ("GET", "PUT"):
            answer = await raw(stack, f"{method} /auth/token HTTP/1.1\nHost: HOST\n\n")
            assert answer.status == GATED, method
        for method in ("TRACE", "CONNECT"):
            answer = await raw(stack, f"{method} {HOOK} HTTP/1.1\nHost: HOST\n\n")
            assert answer.status == 405, method
        upgrade = (
            f"GET {HOOK} HTTP/1.1\nHost: HOST\nConnection: Upgrade\nUpgrade: websocket\n"
            "Sec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\n"
        )
        assert (await raw(stack, upgrade)).status == GATED
        h2c = f"POST {HOOK} HTTP/1.1\nHost: HOST\nUpgrade: h2c\nContent-Length: 0\n\n"
        assert (await raw(stack, h2c)).status == GATED
        assert backend.heads == []


# ----------------------------------------------------------------------- body size


async def test_oversized_bodies_are_refused_for_calls_but_not_for_people(tmp_path: Path) -> None:
    async with (
        recording_backend() as backend,
        integration_stack(tmp_path, backend, integration_max_body=64 * 1024) as stack,
        caller(stack) as service,
        stack.browser() as owner,
    ):
        await switch(stack, webhooks=True)
        async with service.post(stack.tenant_origin + HOOK, data=b"x" * (64 * 1024)) as r:
            assert r.status == 200  # at the cap: fine
        # Announced too large: refused before a byte reaches the home.
        answer = await raw(
            stack,
            f"POST {HOOK} HTTP/1.1\nHost: HOST\nContent-Length: {64 * 1024 + 1}\n\n",
            close_wait=5.0,  # returns at the close; a loaded machine may take a while
        )
        assert answer.status == 413
        assert answer.closed

        # Chunked, growing past the cap: the stream is reset, Home Assistant never acts on it.
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(40):
                yield b"y" * 4096

        with contextlib.suppress(aiohttp.ClientError):
            async with service.post(stack.tenant_origin + HOOK, data=chunks()) as r:
                assert r.status == 413
        assert [c[2] for c in backend.calls] == [64 * 1024]

        # A signed-in person's upload is not held to the integrations' cap.
        await owner.sign_in("/")
        async with owner.request("POST", stack.tenant_origin + "/upload", data=b"z" * 300_000) as r:
            assert r.status == 200


# --------------------------------------------------------------------------- floods


async def test_a_flood_is_limited_per_home_and_other_homes_and_people_carry_on(
    tmp_path: Path,
) -> None:
    async with (
        recording_backend() as backend,
        integration_stack(
            tmp_path, backend, integration_rate=0.1, integration_burst=5, integration_max_requests=2
        ) as stack,
        extra_tenant(stack, tmp_path, email="other@example.com", ha_url=backend.url) as other,
        caller(stack) as service,
        stack.browser() as owner,
    ):
        await switch(stack, webhooks=True)
        await switch(other, webhooks=True)
        statuses = []
        for _ in range(12):
            async with service.post(stack.tenant_origin + HOOK, data=b"{}") as r:
                statuses.append(r.status)
                if r.status == 429:
                    assert r.headers["Retry-After"]
        assert statuses == [200] * 5 + [429] * 7
        assert len(backend.calls) == 5

        # The other home's webhooks, and the flooded home's own people, are unaffected.
        for _ in range(5):
            async with service.post(other.tenant_origin + HOOK, data=b"{}") as r:
                assert r.status == 200
        assert (await owner.sign_in("/")).status == 200
        async with owner.request("GET", stack.tenant_origin + "/bytes/10") as r:
            assert r.status == 200


async def test_calls_open_at_once_are_capped_without_taking_the_homes_people_slots(
    tmp_path: Path,
) -> None:
    async with (
        recording_backend() as backend,
        integration_stack(
            tmp_path, backend, integration_max_requests=2, tenant_max_requests=4
        ) as stack,
        caller(stack) as service,
        stack.browser() as owner,
    ):
        await switch(stack, webhooks=True)
        slow = stack.tenant_origin + "/api/webhook/slow"
        held = [await service.get(slow).__aenter__() for _ in range(2)]
        try:
            for response in held:
                assert response.status == 200
                assert await asyncio.wait_for(response.content.readline(), 10) == b"tick\n"
            async with service.get(slow) as r:
                assert r.status == 429
            # The home's people still have all their slots.
            assert (await owner.sign_in("/")).status == 200
            for _ in range(3):
                async with owner.request("GET", stack.tenant_origin + "/bytes/10") as r:
                    assert r.status == 200
        finally:
            for response in held:
                response.release()


# ----------------------------------------------------------------- cuts: off, unlink, add-on


async def _open_slow_call(stack: Stack, service: aiohttp.ClientSession) -> aiohttp.ClientResponse:
    response = await service.get(stack.tenant_origin + "/api/webhook/slow").__aenter__()
    assert response.status == 200
    assert await asyncio.wait_for(response.content.readline(), 10) == b"tick\n"
    return response


async def _cut(response: aiohttp.ClientResponse) -> None:
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(_read_to_end(response), 10)
    response.release()


async def _read_to_end(response: aiohttp.ClientResponse) -> None:
    while await response.content.readline():
        pass


async def test_switching_off_cuts_open_calls_at_once_and_gates_new_ones(tmp_path: Path) -> None:
    async with (
        recording_backend() as backend,
        integration_stack(tmp_path, backend) as stack,
        caller(stack) as service,
        stack.browser() as owner,
    ):
        await switch(stack, webhooks=True, voice=True)
        await owner.sign_in_account_site()
        response = await _open_slow_call(stack, service)
        # Voice off, webhooks still on: the webhook call goes on.
        status, _ = await post_form(
            owner, f"/instances/{stack.instance_id}/integrations", {"webhooks": "yes"}
        )
        assert status == 303
        assert await asyncio.wait_for(response.content.readline(), 10) == b"tick\n"
        status, _ = await post_form(owner, f"/instances/{stack.instance_id}/integrations", {})
        assert status == 303
        await _cut(response)
        async with service.post(stack.tenant_origin + HOOK, data=b"{}") as r:
            assert r.status == GATED


async def test_unlinking_cuts_open_calls(tmp_path: Path) -> None:
    async with (
        recording_backend() as backend,
        integration_stack(tmp_path, backend) as stack,
        caller(stack) as service,
        stack.browser() as owner,
    ):
        await switch(stack, webhooks=True)
        await owner.sign_in_account_site()
        response = await _open_slow_call(stack, service)
        status, _ = await post_form(
            owner, f"/instances/{stack.instance_id}/unlink", {"confirm": "yes"}
        )
        assert status == 200
        await _cut(response)
        async with service.post(stack.tenant_origin + HOOK, data=b"{}") as r:
            assert r.status in (GATED, 503)  # the home is gone: never Home Assistant's answer
        assert [c[0] for c in backend.calls] == ["/api/webhook/slow"]


async def test_the_addons_remote_access_switch_refuses_and_cuts_calls(tmp_path: Path) -> None:
    gate = RemoteAccessGate(tmp_path / "gate")
    async with (
        recording_backend() as backend,
        integration_stack(tmp_path, backend, addon_kwargs={"gate": gate}) as stack,
        caller(stack) as service,
    ):
        await switch(stack, webhooks=True)
        response = await _open_slow_call(stack, service)
        gate.set_enabled(False)
        await _cut(response)
        async with service.post(stack.tenant_origin + HOOK, data=b"{}") as r:
            assert r.status == 503
            assert "Remote access is switched off" in await r.text()
        assert backend.paths() == ["/api/webhook/slow"]


# --------------------------------------------------------------------------- audit


# Long and with characters an identifier never has, so it cannot occur by chance.
BODY_MARKER = "body-marker:never-in-an-identifier"


async def test_calls_are_audited_as_metadata_only(tmp_path: Path) -> None:
    async with (
        recording_backend() as backend,
        integration_stack(tmp_path, backend) as stack,
        caller(stack, source_ip="127.0.0.4") as service,
    ):
        await switch(stack, webhooks=True, voice=True)
        for _ in range(3):  # one event per kind and address per minute
            async with service.post(stack.tenant_origin + HOOK, json={"secret": BODY_MARKER}) as r:
                assert r.status == 200
        async with service.post(stack.tenant_origin + "/auth/token", data=b"x=1") as r:
            assert r.status == 200
        await stack.relay.integrations.drain()
        events = await stack.relay.accounts.audit.for_instance(stack.instance_id)
        calls = sorted((e.detail, e.ip, e.device) for e in events if e.kind == CALL_EVENT)
        assert calls == [
            ("auth_token", "127.0.0.4", "integration"),
            ("webhook", "127.0.0.4", "integration"),
        ]
        dump = json.dumps([vars(e) for e in events], default=str)
        assert "homeport-hook_01" not in dump
        assert BODY_MARKER not in dump
        assert len(backend.calls) == 4
