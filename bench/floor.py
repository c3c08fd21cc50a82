"""The floor: the cheapest relay + add-on pair that the same parts allow.

``bench/run.py`` measures Homeport's path against a direct connection.  This
module answers the next question: how much of the gap is the *shape* of the
path (one more TLS server, a WSS tunnel, one more HTTP client, four processes
on two cores) and how much is Homeport's own code?  It is a deliberately
minimal relay and add-on built from exactly the parts Homeport uses (aiohttp on
uvloop, TLS 1.3 from ``homeport.tls.context.server_context`` on the client
side, one WebSocket over TLS between the two, a pooled aiohttp client to the
backend), with everything that is not transport removed:

* no accounts, sessions, cookies, limits, header hygiene or logging;
* no flow control, priorities or stream resets: a tiny multiplexing format
  (``stream id:u32 | kind:u8 | payload`` per WebSocket message, request and
  response heads as JSON) and TCP's own back-pressure;
* a small complete response travels as one message, and body bytes that are
  already buffered travel together (up to 256 KiB), as in Homeport; a bounded
  inbox per stream, so a slow reader holds the tunnel back (TCP back-pressure)
  instead of growing memory.

It is **not** a product and must never be deployed: it checks nothing.  It
exists so the benchmark can print, in the same run, "floor" figures beside the
direct and the Homeport ones: a target that the floor itself misses cannot be
met by any relay built on these parts, and the distance between the floor and
Homeport is what Homeport's own code costs.

Run by ``bench/run.py`` as two processes::

    python bench/floor.py relay --port P --cert C --key K
    python bench/floor.py addon --relay wss://localhost:P/_floor/tunnel --ca CA --backend URL
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import ssl
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from aiohttp import web

from homeport.tls.context import server_context

TUNNEL_PATH = "/_floor/tunnel"
PREFIX = struct.Struct(">IB")
OPEN, BODY, END, RESPONSE, COMPLETE, WS_TEXT, WS_BINARY, WS_CLOSE = range(1, 9)
#: A response at most this big (by Content-Length) is read whole and sent as one message.
SMALL = 64 * 1024
#: Body bytes already buffered are sent together, up to this much per message
#: (Homeport batches up to the same size); messages a stream may have waiting.
BATCH = 256 * 1024
INBOX = 64
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-accept",
        "content-length",
    }
)


def message(stream_id: int, kind: int, payload: bytes = b"") -> bytes:
    return PREFIX.pack(stream_id, kind) + payload


def new_inbox() -> asyncio.Queue[tuple[int, bytes]]:
    return asyncio.Queue(INBOX)


async def batches(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The body as it arrives, with whatever is already buffered joined on (<= BATCH)."""
    async for chunk in content.iter_any():
        parts, size = [chunk], len(chunk)
        while size < BATCH and (more := content.read_nowait(BATCH - size)):
            parts.append(more)
            size += len(more)
        yield chunk if len(parts) == 1 else b"".join(parts)


async def pipe_websocket(
    ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    tunnel: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    stream_id: int,
    inbox: asyncio.Queue[tuple[int, bytes]],
) -> None:
    """Messages both ways between ``ws`` and the tunnel stream ``stream_id``, until one ends."""

    async def outgoing() -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await tunnel.send_bytes(message(stream_id, WS_TEXT, msg.data.encode()))
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await tunnel.send_bytes(message(stream_id, WS_BINARY, msg.data))
        await tunnel.send_bytes(message(stream_id, WS_CLOSE))

    task = asyncio.create_task(outgoing())
    try:
        while True:
            kind, payload = await inbox.get()
            if kind == WS_TEXT:
                await ws.send_str(payload.decode())
            elif kind == WS_BINARY:
                await ws.send_bytes(payload)
            else:
                break
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def kept(headers: Any) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP]


async def wait_for_signal() -> None:
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, done.set)
    await done.wait()


# ------------------------------------------------------------------- relay


class FloorRelay:
    def __init__(self) -> None:
        self.tunnel: web.WebSocketResponse | None = None
        self.ready = asyncio.Event()
        self.inboxes: dict[int, asyncio.Queue[tuple[int, bytes]]] = {}
        self.next_id = 1

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path == TUNNEL_PATH:
            return await self.serve_tunnel(request)
        await self.ready.wait()
        assert self.tunnel is not None
        stream_id, self.next_id = self.next_id, self.next_id + 1
        inbox = new_inbox()
        self.inboxes[stream_id] = inbox
        try:
            websocket = request.headers.get("Upgrade", "").lower() == "websocket"
            head = [request.method, request.raw_path, kept(request.headers), websocket]
            head.append(request.body_exists)
            await self.tunnel.send_bytes(message(stream_id, OPEN, json.dumps(head).encode()))
            if websocket:
                return await self.websocket(request, stream_id, inbox)
            if request.body_exists:
                async for chunk in batches(request.content):
                    await self.tunnel.send_bytes(message(stream_id, BODY, chunk))
                await self.tunnel.send_bytes(message(stream_id, END))
            kind, payload = await inbox.get()
            if kind == COMPLETE:
                (size,) = struct.unpack_from(">I", payload)
                status, headers = json.loads(payload[4 : 4 + size])
                return web.Response(status=status, headers=headers, body=payload[4 + size :])
            status, headers = json.loads(payload)
            response = web.StreamResponse(status=status, headers=headers)
            await response.prepare(request)
            while True:
                kind, payload = await inbox.get()
                if kind == END:
                    break
                await response.write(payload)
            await response.write_eof()
            return response
        finally:
            del self.inboxes[stream_id]

    async def websocket(
        self, request: web.BaseRequest, stream_id: int, inbox: asyncio.Queue[tuple[int, bytes]]
    ) -> web.StreamResponse:
        assert self.tunnel is not None
        tunnel = self.tunnel
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            await pipe_websocket(ws, tunnel, stream_id, inbox)
        finally:
            await ws.close()
        return ws

    async def serve_tunnel(self, request: web.BaseRequest) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self.tunnel = ws
        self.ready.set()
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                stream_id, kind = PREFIX.unpack_from(msg.data)
                inbox = self.inboxes.get(stream_id)
                if inbox is not None:
                    await inbox.put((kind, msg.data[PREFIX.size :]))
        return ws


async def run_relay(args: argparse.Namespace) -> None:
    relay = FloorRelay()
    # aiohttp's low-level server: no application, router or middleware chain, the
    # cheapest way aiohttp serves HTTP (docs: "Low Level Server").
    server = web.Server(relay.handle, access_log=None, client_max_size=0)
    tls = server_context(Path(args.cert), Path(args.key))
    listener = await asyncio.get_running_loop().create_server(
        server, "127.0.0.1", args.port, ssl=tls
    )
    print("floor relay ready", flush=True)
    await wait_for_signal()
    listener.close()
    await server.shutdown()


# ------------------------------------------------------------------- add-on


class FloorAddon:
    def __init__(self, backend: str, client: aiohttp.ClientSession) -> None:
        self.backend = backend
        self.client = client
        self.inboxes: dict[int, asyncio.Queue[tuple[int, bytes]]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def serve(self, tunnel: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in tunnel:
            if msg.type is not aiohttp.WSMsgType.BINARY:
                continue
            stream_id, kind = PREFIX.unpack_from(msg.data)
            payload = msg.data[PREFIX.size :]
            if kind == OPEN:
                inbox = new_inbox()
                self.inboxes[stream_id] = inbox
                task = asyncio.create_task(self.forward(tunnel, stream_id, payload, inbox))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif (found := self.inboxes.get(stream_id)) is not None:
                await found.put((kind, payload))

    async def forward(
        self,
        tunnel: aiohttp.ClientWebSocketResponse,
        stream_id: int,
        payload: bytes,
        inbox: asyncio.Queue[tuple[int, bytes]],
    ) -> None:
        method, target, headers, websocket, has_body = json.loads(payload)
        try:
            if websocket:
                await self.websocket(tunnel, stream_id, target, inbox)
                return

            async def body() -> AsyncIterator[bytes]:
                while True:
                    kind, chunk = await inbox.get()
                    if kind == END:
                        return
                    yield chunk

            async with self.client.request(
                method,
                self.backend + target,
                headers=headers,
                data=body() if has_body else None,
                allow_redirects=False,
            ) as response:
                out = kept(response.headers)
                length = response.content_length
                if length is not None and length <= SMALL:
                    content = await response.read()
                    out.append(("Content-Length", str(len(content))))
                    head = json.dumps([response.status, out]).encode()
                    await tunnel.send_bytes(
                        message(stream_id, COMPLETE, struct.pack(">I", len(head)) + head + content)
                    )
                    return
                if length is not None:
                    out.append(("Content-Length", str(length)))
                head = json.dumps([response.status, out]).encode()
                await tunnel.send_bytes(message(stream_id, RESPONSE, head))
                async for chunk in batches(response.content):
                    await tunnel.send_bytes(message(stream_id, BODY, chunk))
                await tunnel.send_bytes(message(stream_id, END))
        finally:
            self.inboxes.pop(stream_id, None)

    async def websocket(
        self,
        tunnel: aiohttp.ClientWebSocketResponse,
        stream_id: int,
        target: str,
        inbox: asyncio.Queue[tuple[int, bytes]],
    ) -> None:
        url = self.backend.replace("http", "ws", 1) + target
        async with self.client.ws_connect(url, compress=0) as ws:
            await pipe_websocket(ws, tunnel, stream_id, inbox)


async def run_addon(args: argparse.Namespace) -> None:
    context = ssl.create_default_context(cafile=args.ca)
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=200),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        ) as client,
        aiohttp.ClientSession() as dialer,
        dialer.ws_connect(args.relay, ssl=context, max_msg_size=0, compress=0) as tunnel,
    ):
        print("floor add-on connected", flush=True)
        serving = asyncio.create_task(FloorAddon(args.backend, client).serve(tunnel))
        stop = asyncio.create_task(wait_for_signal())
        await asyncio.wait({serving, stop}, return_when=asyncio.FIRST_COMPLETED)
        serving.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    roles = parser.add_subparsers(dest="role", required=True)
    relay = roles.add_parser("relay")
    relay.add_argument("--port", type=int, required=True)
    relay.add_argument("--cert", required=True)
    relay.add_argument("--key", required=True)
    addon = roles.add_parser("addon")
    addon.add_argument("--relay", required=True)
    addon.add_argument("--ca", required=True)
    addon.add_argument("--backend", required=True)
    args = parser.parse_args()
    uvloop.run(run_relay(args) if args.role == "relay" else run_addon(args))


if __name__ == "__main__":
    main()
