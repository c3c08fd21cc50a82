"""A slow-POST client (CAPEC-469): a request head, then a body one byte at a time.

``trickle`` opens a TLS connection from a chosen loopback address (Linux routes
all of 127/8 to loopback, so ``127.0.0.2`` is "another client"), sends the
head, then one body byte every ``interval`` seconds until the server answers
or closes, the body is complete, or ``give_up`` seconds have passed.  The
outcome says what the server did and when, so a test can check that a
deadline cut the request, and how soon.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from rawhttp import read_head


@dataclass
class Trickled:
    """What the server did with a trickled request."""

    #: The answer's status, or None if none came (closed without one, or gave up).
    status: int | None
    headers: list[tuple[str, str]]
    #: Seconds from the head being sent to the answer (or the close, or giving up).
    after: float
    #: Body bytes sent before that.
    sent: int
    #: The server closed the connection (right after its answer, if it sent one).
    closed: bool

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name.lower()), None)


async def open_tls(
    port: int, server_hostname: str, ca_path: Path, *, source_ip: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    context = ssl.create_default_context(cafile=str(ca_path))
    return await asyncio.open_connection(
        "127.0.0.1",
        port,
        ssl=context,
        server_hostname=server_hostname,
        local_addr=(source_ip, 0),
    )


def post_head(host: str, port: int, path: str, length: int, *extra: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/x-www-form-urlencoded",
        f"Content-Length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def trickle(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    head: bytes,
    *,
    length: int,
    interval: float,
    give_up: float,
) -> Trickled:
    """Send ``head``, then ``length`` body bytes one per ``interval`` s; see the module."""
    started = time.monotonic()
    writer.write(head)
    sent = 0
    answer: asyncio.Task[tuple[int, str, list[tuple[str, str]]]] = asyncio.create_task(
        read_head(reader)
    )
    try:
        while time.monotonic() - started < give_up:
            done, _ = await asyncio.wait({answer}, timeout=interval)
            if done:
                break
            if sent < length:
                try:
                    writer.write(b"a")
                    await writer.drain()
                except (ConnectionError, OSError):
                    break
                sent += 1
        after = time.monotonic() - started
        if not answer.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(answer), 0.05)
        if answer.done() and answer.exception() is None:
            status, _reason, headers = answer.result()
            return Trickled(status, headers, after, sent, await _closes(reader, 2.0))
        closed = answer.done()  # the read ended: EOF or reset, without an answer
        return Trickled(None, [], after, sent, closed)
    finally:
        answer.cancel()
        with contextlib.suppress(BaseException):
            await answer
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _closes(reader: asyncio.StreamReader, wait: float) -> bool:
    """Whether the server closes within ``wait`` s (what is left of the answer is read)."""
    try:
        async with asyncio.timeout(wait):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        return True
    return True
