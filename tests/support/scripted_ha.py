"""A Home Assistant stand-in that speaks raw HTTP/1.1 exactly as a test scripts it.

For the add-on's upstream tests: malformed heads, responses cut short, a
connection closed while idle, a WebSocket upgrade with the wrong accept key:
things a real server will not do on request.  Real sockets on 127.0.0.1; every
connection and every request head is recorded, so a test can prove that
something never reached Home Assistant.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Request:
    head: bytes
    body: bytes

    @property
    def line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    def header(self, name: str) -> str | None:
        found = self.headers(name)
        return found[0] if found else None

    def headers(self, name: str) -> list[str]:
        wanted = name.lower().encode()
        out = []
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == wanted:
                out.append(value.strip().decode("latin-1"))
        return out


@dataclass
class Conn:
    """One accepted connection, for the script to read requests from and answer on."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    seen: list[Request]

    async def request(self) -> Request | None:
        """The next request (head and body, de-chunked); None at EOF."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        request = Request(head, b"")
        self.seen.append(request)
        length = request.header("content-length")
        if length is not None:
            request.body = await self.reader.readexactly(int(length))
        elif (request.header("transfer-encoding") or "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(data[:-2])
            request.body = b"".join(parts)
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


Script = Callable[[Conn], Awaitable[None]]


@dataclass
class ScriptedHA:
    script: Script
    url: str = ""
    connections: int = 0
    seen: list[Request] = field(default_factory=list)
    open_connections: set[asyncio.StreamWriter] = field(default_factory=set)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections.add(writer)
        try:
            await self.script(Conn(reader, writer, self.seen))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the server is being torn down: this connection ends with it
        finally:
            self.open_connections.discard(writer)
            writer.close()

    @property
    def paths(self) -> list[bytes]:
        return [r.line.split(b" ")[1] for r in self.seen]


@contextlib.asynccontextmanager
async def scripted_ha(script: Script) -> AsyncIterator[ScriptedHA]:
    ha = ScriptedHA(script)
    server = await asyncio.start_server(ha._serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ha.url = f"http://127.0.0.1:{port}"
    try:
        yield ha
    finally:
        server.close()
        for writer in list(ha.open_connections):
            writer.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.wait_closed()


def response(status: int = 200, body: bytes = b"", *extra: str) -> bytes:
    """A well-formed keep-alive response with a content-length."""
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def keep_alive(conn: Conn, answer: bytes = b"") -> None:
    """Answer every request on the connection with ``answer`` (default: 200 "ok")."""
    while await conn.request() is not None:
        await conn.send(answer or response(200, b"ok"))
