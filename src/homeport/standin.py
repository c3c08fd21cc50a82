"""A small stand-in for Home Assistant: for ``homeport dev`` and the edge-case tests.

It mimics the few things a relay in front of Home Assistant must carry
(a page, ``/api/`` answering 401 without a token, a WebSocket API that asks
for auth first) and adds endpoints that produce the awkward traffic shapes:
huge bodies, uploads, server-sent events, MJPEG, slow and aborted responses.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os

from aiohttp import WSMsgType, web

TOKEN = "standin-token"  # noqa: S105 - a fixed test token for a fake server
CHUNK = 256 * 1024

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Home Assistant stand-in</title></head>
<body><h1>Home Assistant stand-in</h1>
<p>Homeport is working: this page came through the relay and the add-on.</p>
<p>No Home Assistant answered at the configured address, so <code>homeport dev</code>
started this stand-in. Start Home Assistant and run <code>homeport dev</code> again.</p>
</body></html>
"""


async def index(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def manifest(request: web.Request) -> web.Response:
    return web.json_response({"name": "Home Assistant stand-in", "short_name": "stand-in"})


async def api_root(request: web.Request) -> web.Response:
    if request.headers.get("Authorization") != f"Bearer {TOKEN}":
        return web.Response(status=401, text="401: Unauthorized")
    return web.json_response({"message": "API running."})


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path_qs": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body_length": len(body),
            "remote": request.remote,
        }
    )


async def upload(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"length": size, "sha256": digest.hexdigest()})


def pattern_chunk(size: int) -> bytes:
    """Deterministic, incompressible-enough bytes so tests can verify a download."""
    block = hashlib.sha256(b"homeport").digest() * (CHUNK // 32)
    return block[:size]


async def download(request: web.Request) -> web.StreamResponse:
    total = int(request.match_info["size"])
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = total
    await response.prepare(request)
    block = pattern_chunk(CHUNK)
    sent = 0
    while sent < total:
        piece = block[: min(CHUNK, total - sent)]
        await response.write(piece)
        sent += len(piece)
    await response.write_eof()
    return response


async def sse(request: web.Request) -> web.StreamResponse:
    count = int(request.query.get("count", "5"))
    interval = float(request.query.get("interval", "0.1"))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(count):
        await response.write(f"id: {i}\ndata: event {i}\n\n".encode())
        await asyncio.sleep(interval)
    await response.write_eof()
    return response


async def mjpeg(request: web.Request) -> web.StreamResponse:
    frames = int(request.query.get("frames", "10"))
    interval = float(request.query.get("interval", "0.05"))
    boundary = "frame"
    response = web.StreamResponse(
        headers={"Content-Type": f"multipart/x-mixed-replace; boundary={boundary}"}
    )
    await response.prepare(request)
    for i in range(frames):
        jpeg = b"\xff\xd8" + os.urandom(2048) + i.to_bytes(4, "big") + b"\xff\xd9"
        part_head = f"--{boundary}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}"
        await response.write(part_head.encode() + b"\r\n\r\n" + jpeg + b"\r\n")
        await asyncio.sleep(interval)
    return response


async def abort(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = 10 * CHUNK
    await response.prepare(request)
    await response.write(pattern_chunk(CHUNK))
    assert request.transport is not None
    request.transport.abort()
    return response


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("seconds", "1")))
    return web.Response(text="slow done")


async def status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["code"]), text="status")


async def redirect(request: web.Request) -> web.Response:
    # Home Assistant sometimes answers with its own internal absolute URL.
    own = f"http://{request.host}/target"
    return web.Response(status=302, headers={"Location": own})


async def set_cookie(request: web.Request) -> web.Response:
    response = web.Response(text="cookies")
    response.headers.add("Set-Cookie", "ha_pref=1; Path=/")
    response.headers.add("Set-Cookie", "__Host-homeport_session=evil; Path=/; Secure")
    response.headers.add("Set-Cookie", "wide=1; Domain=home.localhost; Path=/")
    return response


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """Echo, after a Home Assistant-like auth exchange if the path asks for it."""
    ws = web.WebSocketResponse(protocols=("chat", "homeport-test"), max_msg_size=32 * 1024 * 1024)
    await ws.prepare(request)
    if request.path == "/api/websocket":
        await ws.send_json({"type": "auth_required", "ha_version": "stand-in"})
        msg = await ws.receive()
        ok = msg.type is WSMsgType.TEXT and json.loads(msg.data).get("access_token") == TOKEN
        await ws.send_json({"type": "auth_ok" if ok else "auth_invalid"})
        if not ok:
            await ws.close()
            return ws
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            if msg.data == "close-me":
                await ws.close(code=4321, message=b"asked to")
                break
            await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


def build_app() -> web.Application:
    app = web.Application(client_max_size=1024**3)
    app.router.add_get("/", index)
    app.router.add_get("/manifest.json", manifest)
    app.router.add_get("/api/", api_root)
    app.router.add_get("/api/websocket", websocket)
    app.router.add_get("/ws/echo", websocket)
    app.router.add_route("*", "/echo", echo)
    app.router.add_post("/upload", upload)
    app.router.add_put("/upload", upload)
    app.router.add_get("/bytes/{size:\\d+}", download)
    app.router.add_get("/sse", sse)
    app.router.add_get("/mjpeg", mjpeg)
    app.router.add_get("/abort", abort)
    app.router.add_get("/slow", slow)
    app.router.add_get("/status/{code:\\d{3}}", status)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/set-cookie", set_cookie)
    return app


async def start_standin(host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start the stand-in; returns the runner and its base URL."""
    runner = web.AppRunner(build_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, f"http://{host}:{bound}"
