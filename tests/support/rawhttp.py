"""Raw HTTP/1.1 over TLS, for the requests a well-behaved client library refuses to send.

``exchange`` writes exactly the bytes given, reads one response (status line,
headers, a ``Content-Length`` or chunked body) and then reports whether the
server closed the connection after it.  ``connect`` hands back the bare
streams for tests that want to misbehave over time (stop reading, vanish).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    #: The server closed the connection after this response.
    closed: bool

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for n, v in reversed(self.headers) if n == name), None)


def tls_context(ca_path: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_path))


async def connect(
    port: int, server_hostname: str, ca_path: Path
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection to the relay on loopback, with SNI for ``server_hostname``."""
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls_context(ca_path), server_hostname=server_hostname
    )


async def read_head(reader: asyncio.StreamReader) -> tuple[int, str, list[tuple[str, str]]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw[:-4].decode("latin-1").split("\r\n")
    _version, status, *reason = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return int(status), (reason[0] if reason else ""), headers


async def _read_body(
    reader: asyncio.StreamReader, headers: list[tuple[str, str]], *, head_only: bool
) -> bytes:
    values = dict(headers)
    if head_only:
        return b""
    if "content-length" in values:
        return await reader.readexactly(int(values["content-length"]))
    if values.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return body
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    return await reader.read()  # delimited by close


async def _closed_after(reader: asyncio.StreamReader, wait: float) -> bool:
    try:
        async with asyncio.timeout(wait):
            extra = await reader.read(1)
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        return True
    return extra == b""


async def exchange(
    port: int,
    server_hostname: str,
    ca_path: Path,
    data: bytes,
    *,
    timeout: float = 10.0,
    close_wait: float = 1.0,
) -> RawResponse:
    """Send ``data`` as is on a fresh TLS connection and read one response."""
    reader, writer = await connect(port, server_hostname, ca_path)
    try:
        async with asyncio.timeout(timeout):
            writer.write(data)
            # The server may answer and close before it has read everything we sent.
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            status, reason, headers = await read_head(reader)
            head_only = data.split(b" ", 1)[0] == b"HEAD" or status in (101, 204, 304)
            body = await _read_body(reader, headers, head_only=head_only)
        closed = await _closed_after(reader, close_wait)
        return RawResponse(status, reason, headers, body, closed)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
