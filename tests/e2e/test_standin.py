"""End to end through real sockets: browser → relay (TLS) → tunnel → add-on → stand-in backend."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import aiohttp
import pytest
from rawhttp import connect, read_head
from stack import Stack

from homeport.relay.tenant import SESSION_COOKIE
from homeport.standin import CHUNK, pattern_chunk


async def test_sign_in_then_page_is_proxied(stack: Stack) -> None:
    async with stack.browser() as browser:
        page = await browser.sign_in("/")
        assert page.status == 200
        assert "Home Assistant stand-in" in await page.text()
        assert page.headers["Strict-Transport-Security"].startswith("max-age=63072000")
        assert "Server" not in page.headers


async def test_without_session_nothing_is_proxied(stack: Stack) -> None:
    async with stack.browser() as browser:
        async with browser.request("GET", stack.tenant_origin + "/api/") as r:
            assert r.status == 401
            assert "stand-in" not in await r.text()
        async with browser.request(
            "GET", stack.tenant_origin + "/", headers={"Accept": "text/html"}
        ) as r:
            assert r.status == 303
            assert r.headers["Location"].startswith(stack.account_origin + "/connect?")
            assert "__Host-homeport_state" in r.headers.get("Set-Cookie", "")


async def test_forged_or_foreign_cookie_is_refused(stack: Stack) -> None:
    async with stack.browser() as browser:
        await browser.sign_in("/")
        jar = {c.key: c.value for c in browser.session.cookie_jar}
        token = jar["__Host-homeport_session"]
    other = stack.config.tenant_origin("a" * 26)
    async with stack.browser() as browser:
        # A valid session for one instance opens no other instance.
        async with browser.request(
            "GET", other + "/api/", headers={"Cookie": f"__Host-homeport_session={token}"}
        ) as r:
            assert r.status == 401
        async with browser.request(
            "GET", stack.tenant_origin + "/api/", headers={"Cookie": "__Host-homeport_session=x"}
        ) as r:
            assert r.status == 401


async def test_headers_cleaned_both_ways(stack: Stack) -> None:
    async with stack.browser() as browser:
        await browser.sign_in("/")
        async with browser.request(
            "POST",
            stack.tenant_origin + "/echo?x=1",
            data=b"hello",
            headers={
                "X-Forwarded-For": "6.6.6.6",
                "Forwarded": "for=6.6.6.6",
                "X-Real-IP": "6.6.6.6",
                "Cookie": "theme=dark",
            },
        ) as r:
            assert r.status == 200
            seen = await r.json()
        headers = {k.lower(): v for k, v in seen["headers"]}
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert headers["x-forwarded-proto"] == "https"
        assert headers["x-forwarded-host"] == stack.tenant_origin.removeprefix("https://")
        assert "forwarded" not in headers
        assert "x-real-ip" not in headers
        assert "homeport" not in headers.get("cookie", "")
        assert "theme=dark" in headers.get("cookie", "")
        assert seen["path_qs"] == "/echo?x=1"
        assert seen["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
        async with browser.request("GET", stack.tenant_origin + "/set-cookie") as r:
            cookies = r.headers.getall("Set-Cookie")
        assert any(c.startswith("ha_pref=1") for c in cookies)
        assert not any("__Host-homeport" in c for c in cookies)
        assert not any("Domain=" in c for c in cookies)
        async with browser.request("GET", stack.tenant_origin + "/redirect") as r:
            assert r.status == 302
            assert r.headers["Location"] == "/target"


async def test_websocket_echo_and_origin_check(stack: Stack) -> None:
    async with stack.browser() as browser:
        await browser.sign_in("/")
        ws_url = stack.tenant_origin.replace("https://", "wss://") + "/ws/echo"
        async with browser.session.ws_connect(
            ws_url, origin=stack.tenant_origin, protocols=("chat",)
        ) as ws:
            assert ws.protocol == "chat"
            await ws.send_str("hello")
            assert await ws.receive_str() == "hello"
            big = b"\x01" * (3 * 1024 * 1024)
            await ws.send_bytes(big)
            assert await ws.receive_bytes() == big
            await ws.send_str("close-me")
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 4321
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await browser.session.ws_connect(ws_url, origin="https://evil.example")
        assert refused.value.status == 403


@pytest.mark.slow
async def test_large_upload_and_download(stack: Stack) -> None:
    size = 64 * 1024 * 1024
    async with stack.browser() as browser:
        await browser.sign_in("/")

        async def body():
            block = pattern_chunk(CHUNK)
            for _ in range(size // CHUNK):
                yield block

        async with browser.request("PUT", stack.tenant_origin + "/upload", data=body()) as r:
            result = await r.json()
        expected = hashlib.sha256(pattern_chunk(CHUNK) * (size // CHUNK)).hexdigest()
        assert result == {"length": size, "sha256": expected}
        digest = hashlib.sha256()
        async with browser.request("GET", stack.tenant_origin + f"/bytes/{size}") as r:
            assert r.headers["Content-Length"] == str(size)
            async for chunk in r.content.iter_chunked(CHUNK):
                digest.update(chunk)
        assert digest.hexdigest() == expected


async def test_streaming_responses_flow(stack: Stack) -> None:
    async with stack.browser() as browser:
        await browser.sign_in("/")
        started = time.monotonic()
        async with browser.request("GET", stack.tenant_origin + "/sse?count=3&interval=1.5") as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            first = await r.content.readuntil(b"\n\n")
            # Each event is passed on as it comes, not held until more data arrives.
            assert time.monotonic() - started < 1.0
            assert first == b"id: 0\ndata: event 0\n\n"
            second = await r.content.readuntil(b"\n\n")
            assert time.monotonic() - started < 2.5
            assert second == b"id: 1\ndata: event 1\n\n"
            rest = await r.read()
            assert rest.count(b"data: event") == 1
        async with browser.request("GET", stack.tenant_origin + "/mjpeg?frames=5") as r:
            assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            data = await r.read()
            assert data.count(b"--frame") == 5


async def test_backend_failures_give_clear_pages(stack: Stack) -> None:
    async with stack.browser() as browser:
        await browser.sign_in("/")
        async with browser.request("GET", stack.tenant_origin + "/abort") as r:
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
        # The tunnel carries on for the next request.
        async with browser.request("GET", stack.tenant_origin + "/status/204") as r:
            assert r.status == 204
        assert stack.standin is not None
        await stack.standin.cleanup()
        stack.standin = None
        async with browser.request("GET", stack.tenant_origin + "/") as r:
            assert r.status == 502
            assert "Home Assistant is not answering" in await r.text()


async def test_offline_addon_page(stack: Stack) -> None:
    async with stack.browser() as browser:
        await browser.sign_in("/")
        stack.addon_task.cancel()
        await stack.addon.__aexit__(None, None, None)
        for _ in range(100):
            if stack.relay.hub.tunnel_for(stack.instance_id) is None:
                break
            import asyncio

            await asyncio.sleep(0.05)
        async with browser.request("GET", stack.tenant_origin + "/") as r:
            assert r.status == 503
            assert "offline" in (await r.text()).lower()


async def test_unknown_hosts_get_one_answer(stack: Stack) -> None:
    async with stack.browser() as browser:
        for host in ("unknown.localhost", "x.home.localhost", "homeport.localhost.evil"):
            async with browser.request(
                "GET", stack.account_origin + "/", headers={"Host": host}
            ) as r:
                assert r.status == 421
        # A well-formed id that does not exist answers exactly like one that does.
        answers = []
        for origin in (stack.tenant_origin, stack.config.tenant_origin("b" * 26)):
            async with browser.request("GET", origin + "/", headers={"Accept": "text/html"}) as r:
                location = r.headers["Location"]
                answers.append((r.status, location.split("?")[0]))
        assert answers[0] == answers[1]
        # Host must name the site the TLS session was opened for (SNI), both ways.
        await browser.sign_in("/")
        tenant_host = stack.tenant_origin.removeprefix("https://")
        async with browser.request(
            "GET", stack.account_origin + "/api/", headers={"Host": tenant_host}
        ) as r:
            assert r.status == 421
        async with browser.request(
            "GET", stack.tenant_origin + "/", headers={"Host": stack.config.account_host}
        ) as r:
            assert r.status == 421
            assert r.headers["X-Content-Type-Options"] == "nosniff"


async def test_expect_100_continue_is_answered_before_the_body(stack: Stack) -> None:
    """A client that waits for "100 Continue" (curl does, for uploads) gets it at once."""
    async with stack.browser() as browser:
        await browser.sign_in("/")
        token = next(c.value for c in browser.session.cookie_jar if c.key == SESSION_COOKIE)
    host = stack.tenant_origin.removeprefix("https://")
    reader, writer = await connect(stack.config.listen_port, host.rsplit(":", 1)[0], stack.ca_path)
    writer.write(
        f"POST /echo HTTP/1.1\r\nHost: {host}\r\nCookie: {SESSION_COOKIE}={token}\r\n"
        "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    async with asyncio.timeout(5):
        interim = await reader.readuntil(b"\r\n\r\n")
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    async with asyncio.timeout(10):
        status, _, headers = await read_head(reader)
        body = await reader.readexactly(int(dict(headers)["content-length"]))
    assert status == 200
    echoed = json.loads(body)
    assert echoed["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert "expect" not in {name.lower() for name, _ in echoed["headers"]}
    writer.close()
