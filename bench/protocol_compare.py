"""Our tunnel framing against HTTP/2 (the ``h2`` library), both sans-I/O, in memory.

Run: ``.venv/bin/python bench/protocol_compare.py`` (about a minute at most).

Each side is a pair of connections joined back to back in one process: bytes
from one side's output go straight into the other's input, with no sockets,
so what is measured is the protocol code itself, which is what the relay
runs once per byte for every tunnel.  Three workloads:

a. bulk: a 256 MiB response body in 32 KiB chunks, the receiver returning
   credit as it consumes (MB/s, 1 MB = 10**6 bytes);
b. small requests: 20,000 GETs with 10 headers, each answered with a 200,
   3 headers and a 200-byte body, up to 100 at once (requests/s);
c. WebSocket-style echo of 1 KiB messages, one at a time (round trips/s).
   Ours carries WebSocket messages natively.  For HTTP/2 it is modelled as
   DATA frames on one long-lived stream each way (a lower bound: real
   RFC 8441 runs RFC 6455 framing, with client masking, *inside* those DATA
   frames), and again with a minimal RFC 6455 framing layer on top.

Both sides get the same budget: 32 KiB frames, a 1 MiB stream window and an
8 MiB connection window.  Prints one JSON line per measurement, then a table
with the ratio ours / h2.
"""

from __future__ import annotations

import gc
import json
import os
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived as H2Data
from h2.events import RequestReceived, StreamEnded
from h2.settings import SettingCodes

from homeport.protocol.connection import Role, Settings, TunnelConnection
from homeport.protocol.events import (
    DataReceived,
    StreamOpened,
    WebSocketMessageReceived,
)
from homeport.protocol.events import (
    ResponseReceived as OurResponse,
)
from homeport.protocol.heads import RequestHead, ResponseHead

MiB = 1024 * 1024
BULK_BYTES = 256 * MiB
CHUNK = 32 * 1024
REQUESTS = 20_000
CONCURRENCY = 100
ECHOES = 20_000
MESSAGE = 1024
STREAM_WINDOW = 1 * MiB
CONNECTION_WINDOW = 8 * MiB
HIGH_WATER = 256 * 1024  # what the I/O layer keeps queued per stream at most
REPEAT = 3  # best of

REQUEST_HEADERS = [
    ("host", "abc123.homeport.example"),
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    ("accept", "application/json"),
    ("accept-language", "en-GB,en;q=0.5"),
    ("accept-encoding", "gzip, deflate, br"),
    ("authorization", "Bearer " + "x" * 180),
    ("referer", "https://abc123.homeport.example/lovelace/0"),
    ("x-forwarded-for", "203.0.113.7"),
    ("x-forwarded-proto", "https"),
    ("cache-control", "no-cache"),
]
RESPONSE_HEADERS = [
    ("content-type", "application/json"),
    ("content-length", "200"),
    ("date", "Tue, 11 Jun 2024 10:00:00 GMT"),
]
BULK_HEADERS = [("content-type", "application/x-tar"), ("content-length", str(BULK_BYTES))]
RESPONSE_BODY = (b"{" + b'"state": "on", ' * 14)[:199] + b"}"
assert len(RESPONSE_BODY) == 200


@dataclass
class Result:
    bench: str
    impl: str
    value: float
    unit: str
    seconds: float
    wire_bytes: int

    def line(self) -> str:
        return json.dumps(
            {
                "bench": self.bench,
                "impl": self.impl,
                "value": round(self.value, 1),
                "unit": self.unit,
                "seconds": round(self.seconds, 3),
                "wire_bytes": self.wire_bytes,
            }
        )


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    gc.collect()
    start = time.perf_counter()
    wire = fn()
    return time.perf_counter() - start, wire


# =========================================================================== ours


def our_pair() -> tuple[TunnelConnection, TunnelConnection, list[int]]:
    settings = Settings(
        initial_stream_window=STREAM_WINDOW, connection_window=CONNECTION_WINDOW, chunk_size=CHUNK
    )
    relay = TunnelConnection(Role.RELAY, settings)
    addon = TunnelConnection(Role.ADDON, settings)
    wire = [0]
    for _ in range(3):
        out = relay.data_to_send()
        wire[0] += len(out)
        addon.receive_data(out)
        back = addon.data_to_send()
        wire[0] += len(back)
        relay.receive_data(back)
    return relay, addon, wire


def ours_bulk() -> int:
    relay, addon, wire = our_pair()
    sid = relay.open_stream(RequestHead("GET", "/backup.tar"), websocket=False, end_stream=True)
    addon.receive_data(relay.data_to_send())
    addon.send_response(sid, ResponseHead(200, BULK_HEADERS), end_stream=False)
    chunk = b"\x5a" * CHUNK
    queued = received = 0
    done = False
    while not done:
        while queued < BULK_BYTES and addon.buffered(sid) < HIGH_WATER:
            last = queued + CHUNK >= BULK_BYTES
            addon.send_data(sid, chunk, end_stream=last)
            queued += CHUNK
        out = addon.data_to_send()
        wire[0] += len(out)
        for event in relay.receive_data(out):
            if isinstance(event, DataReceived):
                received += len(event.data)
                relay.acknowledge(sid, len(event.data))
                done = event.end_stream
        back = relay.data_to_send()
        wire[0] += len(back)
        addon.receive_data(back)
    assert received == BULK_BYTES
    return wire[0]


def ours_small_requests() -> int:
    relay, addon, wire = our_pair()
    head = RequestHead("GET", "/api/states/light.kitchen", REQUEST_HEADERS)
    response = ResponseHead(200, RESPONSE_HEADERS)
    completed = started = 0
    while completed < REQUESTS:
        while started < REQUESTS and relay.open_streams < CONCURRENCY:
            relay.open_stream(head, websocket=False, end_stream=True)
            started += 1
        out = relay.data_to_send()
        wire[0] += len(out)
        for event in addon.receive_data(out):
            if isinstance(event, StreamOpened):
                addon.send_response(event.stream_id, response, end_stream=False)
                addon.send_data(event.stream_id, RESPONSE_BODY, end_stream=True)
        back = addon.data_to_send()
        wire[0] += len(back)
        for event in relay.receive_data(back):
            if isinstance(event, DataReceived):
                relay.acknowledge(event.stream_id, len(event.data))
                if event.end_stream:
                    completed += 1
            elif isinstance(event, OurResponse) and event.end_stream:
                completed += 1  # pragma: no cover - responses here have bodies
    return wire[0]


def ours_echo() -> int:
    relay, addon, wire = our_pair()
    sid = relay.open_stream(RequestHead("GET", "/api/websocket"), websocket=True, end_stream=False)
    addon.receive_data(relay.data_to_send())
    addon.send_response(sid, ResponseHead(101), end_stream=False)
    relay.receive_data(addon.data_to_send())
    message = b"m" * MESSAGE
    for _ in range(ECHOES):
        relay.send_ws_message(sid, message, text=True)
        out = relay.data_to_send()
        wire[0] += len(out)
        for event in addon.receive_data(out):
            assert isinstance(event, WebSocketMessageReceived)
            addon.acknowledge(sid, len(event.data))
            addon.send_ws_message(sid, event.data, text=True)
        back = addon.data_to_send()
        wire[0] += len(back)
        (echo,) = relay.receive_data(back)
        assert isinstance(echo, WebSocketMessageReceived)
        relay.acknowledge(sid, len(echo.data))
    return wire[0]


# ============================================================================ h2


def h2_pair() -> tuple[H2Connection, H2Connection, list[int]]:
    values = {
        SettingCodes.MAX_FRAME_SIZE: CHUNK,
        SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        SettingCodes.MAX_CONCURRENT_STREAMS: 256,
    }
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    for conn in (client, server):
        conn.initiate_connection()
        conn.update_settings(values)  # applied once the peer acknowledges them
    client.increment_flow_control_window(CONNECTION_WINDOW - 65_535)
    server.increment_flow_control_window(CONNECTION_WINDOW - 65_535)
    wire = [0]
    for _ in range(3):
        out = client.data_to_send()
        wire[0] += len(out)
        server.receive_data(out)
        back = server.data_to_send()
        wire[0] += len(back)
        client.receive_data(back)
    return client, server, wire


def h2_request_headers(path: bytes) -> list[tuple[bytes, bytes]]:
    pseudo = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"abc123.homeport.example"),
        (b":path", path),
    ]
    return pseudo + [(n.encode(), v.encode()) for n, v in REQUEST_HEADERS if n != "host"]


def encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in headers]


H2_RESPONSE = [(b":status", b"200"), *encode_headers(RESPONSE_HEADERS)]


def h2_bulk() -> int:
    client, server, wire = h2_pair()
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, h2_request_headers(b"/backup.tar"), end_stream=True)
    server.receive_data(client.data_to_send())
    server.send_headers(sid, [(b":status", b"200"), *encode_headers(BULK_HEADERS)])
    chunk = b"\x5a" * CHUNK
    sent = received = 0
    done = False
    pending = b""
    while not done:
        # The I/O layer sends what the windows allow; the rest waits in its own buffer.
        while sent < BULK_BYTES:
            if not pending:
                pending = chunk
            room = min(server.local_flow_control_window(sid), server.max_outbound_frame_size)
            if room <= 0:
                break
            piece, pending = pending[:room], pending[room:]
            sent += len(piece)
            server.send_data(sid, piece, end_stream=sent >= BULK_BYTES)
        out = server.data_to_send()
        wire[0] += len(out)
        for event in client.receive_data(out):
            if isinstance(event, H2Data):
                received += len(event.data)
                client.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, StreamEnded):
                done = True
        back = client.data_to_send()
        wire[0] += len(back)
        server.receive_data(back)
    assert received == BULK_BYTES
    return wire[0]


def h2_small_requests() -> int:
    client, server, wire = h2_pair()
    completed = started = 0
    open_streams = 0
    headers = h2_request_headers(b"/api/states/light.kitchen")
    while completed < REQUESTS:
        while started < REQUESTS and open_streams < CONCURRENCY:
            client.send_headers(client.get_next_available_stream_id(), headers, end_stream=True)
            started += 1
            open_streams += 1
        out = client.data_to_send()
        wire[0] += len(out)
        for event in server.receive_data(out):
            if isinstance(event, RequestReceived):
                server.send_headers(event.stream_id, H2_RESPONSE)
                server.send_data(event.stream_id, RESPONSE_BODY, end_stream=True)
        back = server.data_to_send()
        wire[0] += len(back)
        for event in client.receive_data(back):
            if isinstance(event, H2Data):
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                completed += 1
                open_streams -= 1
    return wire[0]


def ws_frame(payload: bytes, *, mask: bool) -> bytes:
    """A minimal RFC 6455 text frame (FIN), masked as a client must."""
    length = len(payload)
    if length < 126:
        head = bytes([0x81, (0x80 if mask else 0) | length])
    elif length < 65_536:
        head = bytes([0x81, (0x80 if mask else 0) | 126]) + struct.pack(">H", length)
    else:
        head = bytes([0x81, (0x80 if mask else 0) | 127]) + struct.pack(">Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + xor(payload, key)


def xor(data: bytes, key: bytes) -> bytes:
    repeated = (key * (len(data) // 4 + 1))[: len(data)]
    value = int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")
    return value.to_bytes(len(data), "big")


def ws_parse(data: bytes) -> bytes:
    """Parse one complete frame (what a WebSocket reader does on every message)."""
    length = data[1] & 0x7F
    offset = 2
    if length == 126:
        (length,) = struct.unpack_from(">H", data, 2)
        offset = 4
    elif length == 127:
        (length,) = struct.unpack_from(">Q", data, 2)
        offset = 10
    if data[1] & 0x80:
        key = data[offset : offset + 4]
        return xor(data[offset + 4 : offset + 4 + length], key)
    return data[offset : offset + length]


def h2_echo(*, websocket_framing: bool) -> int:
    client, server, wire = h2_pair()
    sid = client.get_next_available_stream_id()
    # RFC 8441 extended CONNECT would go here; a plain POST keeps h2 happy without it.
    client.send_headers(
        sid,
        [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", b"abc123.homeport.example"),
            (b":path", b"/api/websocket"),
        ],
    )
    server.receive_data(client.data_to_send())
    server.send_headers(sid, [(b":status", b"200")])
    client.receive_data(server.data_to_send())
    message = b"m" * MESSAGE
    for _ in range(ECHOES):
        client.send_data(sid, ws_frame(message, mask=True) if websocket_framing else message)
        out = client.data_to_send()
        wire[0] += len(out)
        for event in server.receive_data(out):
            if isinstance(event, H2Data):
                server.acknowledge_received_data(event.flow_controlled_length, sid)
                data = ws_parse(event.data) if websocket_framing else event.data
                server.send_data(sid, ws_frame(data, mask=False) if websocket_framing else data)
        back = server.data_to_send()
        wire[0] += len(back)
        for event in client.receive_data(back):
            if isinstance(event, H2Data):
                client.acknowledge_received_data(event.flow_controlled_length, sid)
                echo = ws_parse(event.data) if websocket_framing else event.data
                assert len(echo) == MESSAGE
    return wire[0]


# ========================================================================== main


def best(fn: Callable[[], int]) -> tuple[float, int]:
    runs = [timed(fn) for _ in range(REPEAT)]
    return min(runs)


def main() -> int:
    started = time.perf_counter()
    plan: list[tuple[str, str, Callable[[], int], float, str]] = [
        ("bulk", "homeport", ours_bulk, BULK_BYTES / 1e6, "MB/s"),
        ("bulk", "h2", h2_bulk, BULK_BYTES / 1e6, "MB/s"),
        ("small_requests", "homeport", ours_small_requests, REQUESTS, "req/s"),
        ("small_requests", "h2", h2_small_requests, REQUESTS, "req/s"),
        ("ws_echo", "homeport", ours_echo, ECHOES, "round trips/s"),
        ("ws_echo", "h2", lambda: h2_echo(websocket_framing=False), ECHOES, "round trips/s"),
        (
            "ws_echo",
            "h2+rfc6455",
            lambda: h2_echo(websocket_framing=True),
            ECHOES,
            "round trips/s",
        ),
    ]
    results: list[Result] = []
    for bench, impl, fn, amount, unit in plan:
        seconds, wire = best(fn)
        result = Result(bench, impl, amount / seconds, unit, seconds, wire)
        results.append(result)
        print(result.line(), flush=True)

    by_key = {(r.bench, r.impl): r for r in results}
    print()
    print(f"{'workload':<16}{'homeport':>14}{'h2':>14}{'ours/h2':>9}{'wire ours/h2':>14}  unit")
    for bench in ("bulk", "small_requests", "ws_echo"):
        ours = by_key[bench, "homeport"]
        for impl in ("h2", "h2+rfc6455"):
            theirs = by_key.get((bench, impl))
            if theirs is None:
                continue
            label = bench if impl == "h2" else f"{bench} (+6455)"
            print(
                f"{label:<16}{ours.value:>14,.0f}{theirs.value:>14,.0f}"
                f"{ours.value / theirs.value:>9.2f}{ours.wire_bytes / theirs.wire_bytes:>14.2f}"
                f"  {ours.unit}"
            )
    print(f"\ntotal {time.perf_counter() - started:.1f} s, Python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
