"""A lean relay and add-on on Homeport's own tunnel protocol: what one layer of I/O would cost.

``bench/shape_floor.py`` runs these beside Homeport and the byte pumps.  The
question they answer (issue #10, GET c=1): how much of the gap between the
Python floor of the shape (two byte pumps, no parsing) and Homeport is the
work any relay of this *design* must do per request, and how much is
Homeport's layering over it (the session, the two objects per stream, the
events, the exchanges, the policy).  So these keep every per-request step of
the design and drop the layers:

* the same three TLS legs, with the tunnel one TLS connection carrying
  Homeport's frames (the raw tunnel, ALPN aside; no handshake: it is per
  tunnel, not per request);
* the relay parses each browser request with llhttp (``httptools``), as
  Homeport's relay does, and opens a stream on Homeport's sans-I/O
  :class:`TunnelConnection` with the head encoded from the parsed bytes
  (``heads.encode_request_fields``); the add-on decodes it on its own
  :class:`TunnelConnection`, writes the request to the backend on a pooled
  keep-alive connection, parses the answer with llhttp and sends it back
  as RESPONSE and DATA frames, which the relay turns into the browser's
  response; flow control is the protocol's own (credit returned as
  consumed), output is scheduled by its scheduler;
* but one object per browser connection and per backend connection, the
  protocol's events handled in one loop that writes straight to the
  browser, the protocol's output written at the end of each read, no task,
  no timers, and none of the policy: no gate, no header hygiene, no
  forwarded headers, no limits, no access log, no error pages.

A second pair, *raw heads* (``--serve raw-relay`` and ``raw-addon``), takes
the heads' codec and the add-on's parse and rewrite away too: the relay
still parses each request, but opens its stream with a head of no fields
and sends the request's own bytes as DATA; the add-on writes them to the
backend as they are and sends the backend's bytes back as DATA, llhttp only
finding where the answer ends.  What is left is the multiplexed framing.

The lean pair carries GETs only (no request bodies, no WebSockets): it
measures the small request.  The raw pair also carries a WebSocket, as any
multiplexed relay could at the least: after the upgrade request both sides
send the connection's bytes as DATA on its stream, parsing no WebSocket frame
(the protocol's WebSocket messages, with a frame parser at each end, cost more
than that).  Not a product: a bad request just closes its connection.

``bench/lean_path.py --warm`` times both sides' Python for one GET of each
pair in memory (no sockets, no TLS), warm, to set beside what the same work
costs in the bench.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, cast

import httptools

from homeport.memory import configure_allocator
from homeport.protocol import (
    DataReceived,
    ErrorCode,
    ResponseHead,
    ResponseReceived,
    Role,
    StreamOpened,
    StreamReset,
    TunnelConnection,
    heads,
)
from homeport.tls.context import server_context

_REASONS = {200: b"OK", 204: b"No Content", 404: b"Not Found"}
#: Fields of the backend's connection that the add-on does not pass on.
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding"})


def best_micros(call: Callable[[], None], rounds: int) -> float:
    """Best of five rounds: µs per call of ``call``, warm (the caller warms it up first)."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            call()
        best = min(best, (time.perf_counter() - start) / rounds * 1e6)
    return best


class RequestCollector:
    """llhttp's request callbacks: the URL and each field as bytes, as a relay's gate reads them."""

    url: bytes
    names: list[bytes]
    values: list[bytes]

    def reset_request(self) -> None:
        self.url = b""
        self.names = []
        self.values = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.names.append(name.lower())
        self.values.append(value)


class Tunnel(asyncio.Protocol):
    """One TLS connection carrying frames; ``owner`` handles the protocol's events."""

    def __init__(self, connection: TunnelConnection, owner: LeanRelay | LeanAddon) -> None:
        self.connection = connection
        self.owner = owner
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.owner.handle(self.connection.receive_data(data))
        self.flush()

    def flush(self) -> None:
        if self.transport is None:
            return
        while data := self.connection.data_to_send():
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


# ------------------------------------------------------------------- relay


class Browser(RequestCollector, asyncio.Protocol):
    """One browser connection on the lean relay: requests in, responses out."""

    def __init__(self, relay: LeanRelay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.reset_request()
        self.chunked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.upgraded()
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()
        self.relay.tunnel.flush()

    def upgraded(self) -> None:
        """A WebSocket upgrade request was read (GETs only here: refused by closing)."""
        if self.transport is not None:
            self.transport.close()

    def on_message_complete(self) -> None:
        relay = self.relay
        fields = relay.connection.header_format.encode_fields(self.names, self.values)
        method = self.parser.get_method()
        encoded = heads.encode_request_fields(heads.PRIORITY_DEFAULT, method, self.url, fields)
        head = heads.RequestHead(method.decode(), "", [], heads.PRIORITY_DEFAULT)
        stream_id = relay.connection.open_stream(
            head, websocket=False, end_stream=True, encoded=encoded
        )
        relay.browsers[stream_id] = self
        self.reset_request()

    def respond(self, head: ResponseHead, end: bool) -> None:
        names, values = head.fields
        status = head.status
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))]
        lines.extend(b"%s: %s\r\n" % pair for pair in zip(names, values, strict=True))
        # The add-on passes the body without its framing: re-frame it unless its size is known.
        self.chunked = not end and status not in (204, 304) and b"content-length" not in names
        if self.chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"\r\n")
        if self.transport is not None:
            self.transport.write(b"".join(lines))

    def body(self, data: bytes, end: bool) -> None:
        if self.transport is None:
            return
        if self.chunked:
            if data:
                self.transport.writelines([b"%x\r\n" % len(data), data, b"\r\n"])
            if end:
                self.transport.write(b"0\r\n\r\n")
        elif data:
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class LeanRelay:
    def __init__(self) -> None:
        self.connection = TunnelConnection(Role.RELAY)
        self.tunnel = Tunnel(self.connection, self)
        self.browsers: dict[int, Browser] = {}

    def handle(self, events: Sequence[object]) -> None:
        connection = self.connection
        for event in events:
            kind = type(event)
            if kind is ResponseReceived:
                assert isinstance(event, ResponseReceived)
                browser = self.browsers[event.stream_id]
                browser.respond(event.head, event.end_stream)
                if event.end_stream:
                    del self.browsers[event.stream_id]
            elif kind is DataReceived:
                assert isinstance(event, DataReceived)
                browser = self.browsers[event.stream_id]
                browser.body(event.data, event.end_stream)
                connection.acknowledge(event.stream_id, len(event.data))
                if event.end_stream:
                    del self.browsers[event.stream_id]
            elif kind is StreamReset:
                assert isinstance(event, StreamReset)
                gone = self.browsers.pop(event.stream_id, None)
                if gone is not None and gone.transport is not None:
                    gone.transport.close()


# ------------------------------------------------------------------- add-on


class Backend(asyncio.Protocol):
    """One pooled keep-alive connection from the lean add-on to the backend."""

    def __init__(self, addon: LeanAddon) -> None:
        self.addon = addon
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.stream_id = 0
        self.names: list[bytes] = []
        self.values: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        self.addon.tunnel.flush()

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name not in _HOP_BY_HOP:
            self.names.append(name)
            self.values.append(value)

    def on_headers_complete(self) -> None:
        head = ResponseHead.from_fields(self.parser.get_status_code(), self.names, self.values)
        self.names = []
        self.values = []
        self.addon.connection.send_response(self.stream_id, head, end_stream=False)

    def on_body(self, data: bytes) -> None:
        self.addon.connection.send_data(self.stream_id, data)

    def on_message_complete(self) -> None:
        connection = self.addon.connection
        connection.send_data(self.stream_id, b"", end_stream=True)
        connection.release_stream(self.stream_id)
        self.stream_id = 0
        self.addon.idle.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.stream_id:  # gone mid-answer: the browser's request ends too
            self.addon.connection.reset_stream(self.stream_id, ErrorCode.CANCEL, "backend gone")
            self.addon.tunnel.flush()
        with contextlib.suppress(ValueError):
            self.addon.idle.remove(self)


class LeanAddon:
    def __init__(self, backend_port: int) -> None:
        self.connection = TunnelConnection(Role.ADDON)
        self.tunnel = Tunnel(self.connection, self)
        self.backend_port = backend_port
        self.idle: list[Backend] = []
        self.host = b"127.0.0.1:%d" % backend_port
        # The loop keeps only weak references to tasks: a dial must not be collected.
        self.dials: set[asyncio.Task[None]] = set()

    def dial_later(self, dial: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(dial)
        self.dials.add(task)
        task.add_done_callback(self.dials.discard)

    def handle(self, events: Sequence[object]) -> None:
        for event in events:
            if type(event) is StreamOpened:
                assert isinstance(event, StreamOpened)
                head = event.head
                lines = [
                    b"%s %s HTTP/1.1\r\nhost: %s\r\n"
                    % (head.method.encode(), head.target.encode(), self.host)
                ]
                lines.extend(
                    b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
                    for name, value in head.headers
                    if name != "host"
                )
                lines.append(b"\r\n")
                request = b"".join(lines)
                if self.idle:
                    self.use(self.idle.pop(), event.stream_id, request)
                else:
                    self.dial_later(self.connect(event.stream_id, request))

    def use(self, backend: Backend, stream_id: int, request: bytes) -> None:
        backend.stream_id = stream_id
        if backend.transport is None:
            self.connection.reset_stream(stream_id, ErrorCode.CANCEL, "backend gone")
            return
        backend.transport.write(request)

    async def connect(self, stream_id: int, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, backend = await loop.create_connection(
            lambda: Backend(self), "127.0.0.1", self.backend_port
        )
        self.use(backend, stream_id, request)


# ------------------------------------------- raw heads: HTTP/1.1 bytes in frames


class RawBrowser(Browser):
    """The browser side of the raw variant: the request's own bytes go through as DATA.

    It still parses every request (as a gate must), but sends a head with no
    fields and the request exactly as read; the add-on's answer arrives as
    Home Assistant's own bytes.  Bench only: a read must hold whole requests,
    one at a time (the load generator does not pipeline).
    """

    def __init__(self, relay: LeanRelay) -> None:
        super().__init__(relay)
        self.raw: list[bytes] = []
        self.complete = 0
        self.websocket = 0  # the stream this connection's WebSocket rides, once upgraded

    def data_received(self, data: bytes) -> None:
        if self.websocket:  # the WebSocket's frames, as they are
            self.relay.connection.send_data(self.websocket, data)
            self.relay.tunnel.flush()
            return
        self.raw.append(data)
        self.complete = 0
        super().data_received(data)
        if self.complete > 1 and self.transport is not None:
            self.transport.close()  # pipelined: not what this variant measures

    def on_message_complete(self) -> None:
        self.complete += 1
        relay = self.relay
        connection = relay.connection
        method = self.parser.get_method()
        fields = connection.header_format.encode_fields([], [])
        encoded = heads.encode_request_fields(heads.PRIORITY_DEFAULT, method, self.url, fields)
        head = heads.RequestHead(method.decode(), "", [], heads.PRIORITY_DEFAULT)
        stream_id = connection.open_stream(head, websocket=False, end_stream=False, encoded=encoded)
        # An upgrade keeps the stream open: the WebSocket's bytes follow as DATA.
        upgrade = self.parser.should_upgrade()
        connection.send_data(stream_id, b"".join(self.raw), end_stream=not upgrade)
        if upgrade:
            self.websocket = stream_id
        relay.browsers[stream_id] = self
        self.raw = []
        self.reset_request()

    def upgraded(self) -> None:
        pass  # on_message_complete opened the WebSocket's stream

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.websocket:  # the add-on closes the backend's side
            self.relay.connection.reset_stream(self.websocket, ErrorCode.CANCEL, "browser gone")
            self.relay.browsers.pop(self.websocket, None)
            self.websocket = 0
            self.relay.tunnel.flush()

    def respond(self, head: ResponseHead, end: bool) -> None:
        pass  # the head comes as bytes, in the body

    def body(self, data: bytes, end: bool) -> None:
        if self.transport is not None and data:
            self.transport.write(data)


class RawBackend(Backend):
    """The add-on's backend connection in the raw variant: llhttp finds the end, no more.

    After a 101 the connection is the WebSocket's: its bytes go on as DATA,
    unparsed, until one side closes.
    """

    def __init__(self, addon: RawAddon) -> None:
        super().__init__(addon)
        self.raw_addon = addon
        self.pending: list[bytes] = []
        self.head_done = False
        self.head_sent = False
        self.done = False
        self.websocket = False

    def data_received(self, data: bytes) -> None:
        connection = self.addon.connection
        if self.websocket:
            connection.send_data(self.stream_id, data)
            self.addon.tunnel.flush()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.websocket = True  # a 101: on_message_complete came first
        if self.head_done and not self.head_sent:
            self.head_sent = True
            # The status is the relay's to ignore (the head travels in the bytes);
            # the protocol accepts a 101 only on a WebSocket stream, which this is not.
            status = 200 if self.websocket else self.parser.get_status_code()
            connection.send_response(self.stream_id, ResponseHead(status), end_stream=False)
        if self.websocket:
            connection.send_data(self.stream_id, data)
        else:
            connection.send_data(self.stream_id, data, end_stream=self.done)
        if self.done and not self.websocket:
            connection.release_stream(self.stream_id)
            self.stream_id = 0
            self.head_done = self.head_sent = self.done = False
            self.addon.idle.append(self)
        self.addon.tunnel.flush()

    on_header = None  # type: ignore[assignment]  # llhttp calls only what is defined

    def on_headers_complete(self) -> None:
        self.head_done = True

    on_body = None  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self.done = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.raw_addon.bound.pop(self.stream_id, None)
        super().connection_lost(exc)


class RawAddon(LeanAddon):
    def __init__(self, backend_port: int) -> None:
        super().__init__(backend_port)
        self.bound: dict[int, RawBackend] = {}

    def handle(self, events: Sequence[object]) -> None:
        connection = self.connection
        for event in events:
            kind = type(event)
            if kind is StreamOpened:
                assert isinstance(event, StreamOpened)
                if self.idle:
                    backend = self.idle.pop()
                    assert isinstance(backend, RawBackend)
                    backend.stream_id = event.stream_id
                    self.bound[event.stream_id] = backend
                else:
                    backend = RawBackend(self)
                    backend.stream_id = event.stream_id
                    self.bound[event.stream_id] = backend
                    self.dial_later(self.dial(backend))
            elif kind is DataReceived:
                assert isinstance(event, DataReceived)
                backend = self.bound[event.stream_id]
                if event.end_stream:
                    del self.bound[event.stream_id]
                connection.acknowledge(event.stream_id, len(event.data))
                if backend.transport is not None:
                    backend.transport.write(event.data)
                else:
                    backend.pending.append(event.data)
            elif kind is StreamReset:  # the browser left (its WebSocket): so does the backend
                assert isinstance(event, StreamReset)
                gone = self.bound.pop(event.stream_id, None)
                if gone is not None and gone.transport is not None:
                    gone.stream_id = 0
                    gone.transport.close()

    async def dial(self, backend: RawBackend) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: backend, "127.0.0.1", self.backend_port)
        assert backend.transport is not None
        backend.transport.writelines(backend.pending)
        backend.pending.clear()


# ------------------------------------------------------------- warm, in memory


class _Sink:
    """A transport that keeps what is written (``--warm``: no sockets, no TLS)."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.out.extend(parts)

    def close(self) -> None:
        raise RuntimeError("the warm loop's request was refused")


_WARM_REQUEST = (
    b"GET /status/204 HTTP/1.1\r\nHost: localhost:4443\r\nAccept: */*\r\n"
    b"Accept-Encoding: gzip, deflate\r\nUser-Agent: Python/3.11 aiohttp/3.13\r\n\r\n"
)
_WARM_RESPONSE = (
    b"HTTP/1.1 204 No Content\r\nDate: Sun, 06 Dec 2026 22:00:00 GMT\r\n"
    b"Server: Python/3.11 aiohttp/3.13\r\n\r\n"
)


def warm_micros(raw: bool, rounds: int = 20_000) -> float:
    """Both sides' Python for one GET, in memory, warm: µs per request (best of five).

    The same objects as in the served pair, their transports replaced by
    sinks and the tunnel's bytes handed across by hand: what the work costs
    when nothing else runs between two requests, to set beside what it costs
    in the bench (``docs/performance.md``, ninth pass).
    """
    relay = LeanRelay()
    addon: LeanAddon = RawAddon(1) if raw else LeanAddon(1)
    sides = (relay.tunnel, addon.tunnel)
    for tunnel in sides:
        tunnel.transport = _Sink()  # type: ignore[assignment]

    def move(source: Tunnel, target: Tunnel) -> None:
        sink = cast(_Sink, source.transport)
        out, sink.out = sink.out, []
        for data in out:
            target.data_received(data)

    for tunnel in sides:
        tunnel.flush()
    move(relay.tunnel, addon.tunnel)
    move(addon.tunnel, relay.tunnel)
    browser = (RawBrowser if raw else Browser)(relay)
    backend = RawBackend(addon) if isinstance(addon, RawAddon) else Backend(addon)
    browser.transport = _Sink()  # type: ignore[assignment]
    backend.transport = _Sink()  # type: ignore[assignment]
    addon.idle.append(backend)

    def one() -> None:
        browser.data_received(_WARM_REQUEST)
        move(relay.tunnel, addon.tunnel)
        backend.data_received(_WARM_RESPONSE)
        move(addon.tunnel, relay.tunnel)
        for sink in (browser.transport, backend.transport):
            cast(_Sink, sink).out.clear()

    for _ in range(2_000):
        one()
    return best_micros(one, rounds)


# ------------------------------------------------------------------ serving


async def serve_until_signalled(server: asyncio.Server) -> None:
    """Say ``ready`` (what ``bench/run.py``'s ``wait_for_output`` waits for), serve until
    SIGINT or SIGTERM, then close: the tail of every served pair and pump."""
    print("ready", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, done.set)
    await done.wait()
    server.close()


async def serve(args: argparse.Namespace) -> None:
    configure_allocator()  # as Homeport's processes and the floor's pumps do
    loop = asyncio.get_running_loop()
    tls_in = server_context(Path(args.cert), Path(args.key))
    raw = args.serve.startswith("raw")
    if args.serve.endswith("-addon"):
        addon = (RawAddon if raw else LeanAddon)(args.upstream_port)
        server = await loop.create_server(lambda: addon.tunnel, "127.0.0.1", args.port, ssl=tls_in)
    else:
        relay = LeanRelay()
        tls_out = ssl.create_default_context(cafile=args.ca)
        tls_out.minimum_version = ssl.TLSVersion.TLSv1_3
        await loop.create_connection(
            lambda: relay.tunnel,
            "127.0.0.1",
            args.upstream_port,
            ssl=tls_out,
            server_hostname="localhost",
        )
        server = await loop.create_server(
            lambda: (RawBrowser if raw else Browser)(relay), "127.0.0.1", args.port, ssl=tls_in
        )
    await serve_until_signalled(server)


if __name__ == "__main__":
    if sys.argv[1:] != ["--warm"]:
        sys.exit("usage: bench/lean_path.py --warm  (bench/shape_floor.py serves the pairs)")
    for name, raw in (("lean protocol", False), ("raw heads", True)):
        print(f"{name}: both sides' Python per GET, warm, in memory: {warm_micros(raw):.1f} µs")
