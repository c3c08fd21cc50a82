"""What the relay writes to a browser goes out in as few TLS records as it can.

uvloop's TLS transport encrypts each part of a ``writelines`` as a record of
its own, so a WebSocket frame's header and payload, or a response head and a
small body, would cost two records (two encryptions here, two decryptions in
the browser, 22 bytes more on the wire) where one does.  A raw TLS client
counts the records on the wire: an echoed WebSocket message and a small
response each arrive in exactly one; a body above a record's size still
arrives whole and correct.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from stack import Browser, Stack, start_stack
from yarl import URL

from homeport.websocket_frames import data_frame

pytestmark = pytest.mark.asyncio(loop_scope="module")

_HEADER = 5  # a TLS record's header: type, version, length


class RecordCountingClient:
    """TLS over a plain socket, by hand (``ssl.MemoryBIO``), counting the records received."""

    def __init__(self, stack: Stack, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        context = ssl.create_default_context(cafile=str(stack.ca_path))
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        host = URL(stack.tenant_origin).host
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=host)
        self._reader, self._writer = reader, writer
        self._raw = b""  # received bytes not yet split into whole records
        self.records = 0
        self.plain = b""

    @classmethod
    async def connect(cls, stack: Stack) -> RecordCountingClient:
        url = URL(stack.tenant_origin)
        reader, writer = await asyncio.open_connection("127.0.0.1", url.port)
        client = cls(stack, reader, writer)
        while True:
            try:
                client._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await client._flush()
                await client._receive()
        await client._flush()
        return client

    async def send(self, data: bytes) -> None:
        self._tls.write(data)
        await self._flush()

    async def read_until(self, size: int) -> None:
        """Receive until ``plain`` holds at least ``size`` bytes."""
        async with asyncio.timeout(10):
            while len(self.plain) < size:
                await self._receive()

    async def read_head(self) -> bytes:
        """Receive a response head; returns it, leaving what follows it in ``plain``."""
        async with asyncio.timeout(10):
            while b"\r\n\r\n" not in self.plain:
                await self._receive()
        head, _, self.plain = self.plain.partition(b"\r\n\r\n")
        return head

    async def _flush(self) -> None:
        if pending := self._outgoing.read():
            self._writer.write(pending)
            await self._writer.drain()

    async def _receive(self) -> None:
        data = await self._reader.read(65536)
        assert data, "the relay closed the connection"
        self._raw += data
        while len(self._raw) >= _HEADER:
            end = _HEADER + int.from_bytes(self._raw[3:5], "big")
            if len(self._raw) < end:
                break
            self.records += 1
            self._raw = self._raw[end:]
        self._incoming.write(data)
        while True:
            try:
                chunk = self._tls.read(65536)
            except ssl.SSLWantReadError:
                return
            if not chunk:
                return
            self.plain += chunk

    def close(self) -> None:
        self._writer.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def home(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Stack, str]]:
    async with (
        start_stack(tmp_path_factory.mktemp("records")) as stack,
        stack.browser() as browser,
    ):
        await browser.sign_in("/")
        yield stack, _cookie_header(browser, stack)


@pytest_asyncio.fixture(loop_scope="module")
async def client(home: tuple[Stack, str]) -> AsyncIterator[RecordCountingClient]:
    """A fresh raw TLS connection to the home's host, closed after the test."""
    connected = await RecordCountingClient.connect(home[0])
    try:
        yield connected
    finally:
        connected.close()


def _cookie_header(browser: Browser, stack: Stack) -> str:
    cookies = browser.session.cookie_jar.filter_cookies(URL(stack.tenant_origin))
    return "; ".join(f"{name}={morsel.value}" for name, morsel in cookies.items())


async def _settled(client: RecordCountingClient) -> None:
    """Let whatever the relay sends after the handshake (session tickets) arrive first."""
    await asyncio.sleep(0.2)
    client.records = 0


def _request(stack: Stack, cookie: str, path: str, *extra: str) -> bytes:
    host = URL(stack.tenant_origin).authority
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", f"Cookie: {cookie}", *extra, "", ""]
    return "\r\n".join(lines).encode()


async def test_an_echoed_websocket_message_comes_back_in_one_record(
    home: tuple[Stack, str], client: RecordCountingClient
) -> None:
    stack, cookie = home
    key = base64.b64encode(os.urandom(16)).decode()
    await client.send(
        _request(
            stack,
            cookie,
            "/ws/echo",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            f"Origin: {stack.tenant_origin}",
        )
    )
    head = await client.read_head()
    assert head.startswith(b"HTTP/1.1 101 "), head
    for size in (5, 1024, 8000):
        await _settled(client)
        message = os.urandom(size // 2).hex().encode()[:size]
        await client.send(b"".join(data_frame(message, text=True, mask=True)))
        expected = b"".join(data_frame(message, text=True, mask=False))
        await client.read_until(len(expected))
        assert client.plain == expected
        client.plain = b""
        assert client.records == 1, f"{size}-byte message in {client.records} records"


async def test_a_small_response_comes_in_one_record_and_a_large_one_whole(
    home: tuple[Stack, str], client: RecordCountingClient
) -> None:
    stack, cookie = home
    for size, most_records in ((300, 1), (200_000, 200_000 // 16384 + 3)):
        await _settled(client)
        await client.send(_request(stack, cookie, f"/bytes/{size}"))
        head = await client.read_head()
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert f"content-length: {size}".encode() in head.lower()
        await client.read_until(size)
        assert len(client.plain) == size
        client.plain = b""
        assert 1 <= client.records <= most_records, (size, client.records)
