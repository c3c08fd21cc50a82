"""A man in the middle for the tunnel: terminate TLS, re-originate it, copy bytes.

``TlsInterceptor`` listens on 127.0.0.1 with a certificate of the test's
choosing (another valid one from an independent CA, a wrong-name one, or
even the relay's own), opens a verified TLS connection to the real relay for
each client, and relays the plaintext byte for byte in both directions while
keeping a copy of what the client sent.  It is transparent to ALPN: the
relay is asked for the protocol the client chose.  ``client_messages``
decodes the copy (for the raw tunnel, handshake records then tunnel frames;
for the WebSocket transport, an HTTP upgrade request then masked RFC 6455
frames) so a test can say exactly which handshake messages the add-on sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from homeport.tls.context import TUNNEL_ALPN, client_context, server_context

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


@dataclass
class Intercepted:
    """One client connection: what the client sent (plaintext) and what it was sent."""

    from_client: bytearray = field(default_factory=bytearray)
    from_server: bytearray = field(default_factory=bytearray)
    #: The ALPN protocol the client negotiated (and the relay was asked for).
    alpn: str | None = None

    def client_messages(self) -> list[tuple[int, bytes]]:
        if self.alpn == TUNNEL_ALPN:
            return parse_records(self.from_client)
        return parse_frames(self.from_client, masked=True)

    def server_messages(self) -> list[tuple[int, bytes]]:
        if self.alpn == TUNNEL_ALPN:
            return parse_records(self.from_server)
        return parse_frames(self.from_server, masked=False)

    def client_json_types(self) -> list[str]:
        """The ``type`` of every text message the client sent (handshake messages)."""
        return [
            str(json.loads(payload)["type"])
            for opcode, payload in self.client_messages()
            if opcode == OP_TEXT
        ]

    def server_json_types(self) -> list[str]:
        return [
            str(json.loads(payload)["type"])
            for opcode, payload in self.server_messages()
            if opcode == OP_TEXT
        ]


def parse_records(data: bytes) -> list[tuple[int, bytes]]:
    """The raw tunnel: (OP_TEXT, JSON) per handshake record, then (OP_BINARY, the rest).

    Close records count as OP_CLOSE, so both transports read the same way.
    """
    messages: list[tuple[int, bytes]] = []
    pos = 0
    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        payload = bytes(data[pos + 4 : pos + 4 + size])
        try:
            kind = json.loads(payload)["type"] if size <= 16 * 1024 else None
        except (ValueError, KeyError, TypeError):
            kind = None
        if kind is None or pos + 4 + size > len(data):
            break  # tunnel frames from here on
        messages.append((OP_CLOSE if kind == "close" else OP_TEXT, payload))
        pos += 4 + size
    if pos < len(data):
        messages.append((OP_BINARY, bytes(data[pos:])))
    return messages


def parse_frames(data: bytes, *, masked: bool) -> list[tuple[int, bytes]]:
    """(opcode, unmasked payload) of each whole message after the HTTP upgrade head.

    ``masked``: frames from a client, which RFC 6455 5.3 requires to be masked.
    """
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return []
    assert data.startswith(b"GET " if masked else b"HTTP/1.1 101"), data[:40]
    pos = head_end + 4
    messages: list[tuple[int, bytes]] = []
    partial: tuple[int, bytearray] | None = None
    while pos + 2 <= len(data):
        b0, b1 = data[pos], data[pos + 1]
        fin, opcode = bool(b0 & 0x80), b0 & 0x0F
        assert bool(b1 & 0x80) == masked, "client frames are masked, server frames are not"
        length = b1 & 0x7F
        pos += 2
        if length == 126:
            length = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
        elif length == 127:
            length = int.from_bytes(data[pos : pos + 8], "big")
            pos += 8
        mask = data[pos : pos + 4] if masked else b"\0\0\0\0"
        pos += 4 if masked else 0
        if pos + length > len(data):
            break  # a frame cut short: the connection ended mid-frame
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data[pos : pos + length]))
        pos += length
        if opcode >= OP_CLOSE:
            messages.append((opcode, payload))
        elif opcode == OP_CONTINUATION:
            assert partial is not None
            partial[1].extend(payload)
            if fin:
                messages.append((partial[0], bytes(partial[1])))
                partial = None
        elif fin:
            messages.append((opcode, payload))
        else:
            partial = (opcode, bytearray(payload))
    return messages


class TlsInterceptor:
    def __init__(
        self,
        cert: Path,
        key: Path,
        *,
        upstream_port: int,
        upstream_name: str,
        upstream_ca: Path,
        alpn: list[str] | None = None,
    ) -> None:
        self._server_ssl = server_context(cert, key)
        if alpn is not None:  # e.g. a proxy that speaks HTTP/1.1 only
            self._server_ssl.set_alpn_protocols(alpn)
        self._upstream_ca = upstream_ca
        self._upstream_port = upstream_port
        self._upstream_name = upstream_name
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections: list[Intercepted] = []
        self.port = 0

    async def __aenter__(self) -> TlsInterceptor:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self._server_ssl, ssl_handshake_timeout=5
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        record = Intercepted()
        ssl_object = writer.get_extra_info("ssl_object")
        record.alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        self.connections.append(record)
        upstream = client_context(self._upstream_ca, alpn=[record.alpn] if record.alpn else None)
        try:
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1",
                self._upstream_port,
                ssl=upstream,
                server_hostname=self._upstream_name,
            )
        except (OSError, ssl.SSLError):
            writer.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(
                _pipe(reader, up_writer, record.from_client),
                _pipe(up_reader, writer, record.from_server),
            )
        finally:
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, copy: bytearray
) -> None:
    try:
        while data := await reader.read(65536):
            copy.extend(data)
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
        writer.close()
