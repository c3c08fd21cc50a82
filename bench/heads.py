"""The head work of one GET on the data plane, in process, for both header formats.

Run: ``.venv/bin/python bench/heads.py`` (a few seconds).

What the relay and the add-on do with the heads of one small request (the
bench's GET: five request fields from the client, three forwarded ones added,
three response fields from the backend), each step timed on its own in a
warm loop: the relay reading the browser's request (llhttp and the reader's
checks), cleaning its fields, encoding the OPEN head; the add-on decoding it
and writing Home Assistant's request; the add-on encoding Home Assistant's
answer, the relay decoding it and writing the browser's header lines.  The
header block is timed in both protocol versions (``protocol/heads.py``):
this is the measurement version 2 was decided on.  Best of five rounds, in
microseconds per call; compare the rows, not the machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from homeport.addon.messages import request_head, response_fields
from homeport.addon.upstream import Origin
from homeport.protocol.heads import (
    HEADERS_V1,
    HEADERS_V2,
    HeaderFormat,
    RequestHead,
    ResponseHead,
    decode_request_head,
    decode_response_head,
    encode_request_fields,
    encode_response_head,
)
from homeport.relay import headers as relay_headers
from homeport.relay.proxy.http1 import Request, RequestReader
from homeport.relay.proxy.responses import response_lines
from homeport.tunnel.priorities import request_priority, response_priority

ROUNDS = 5
CALLS = 20_000

BROWSER_REQUEST = (
    b"GET /status/204 HTTP/1.1\r\n"
    b"Host: abcdefghijklmnopqrstuvwxyz234567.homes.example:8443\r\n"
    b"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
    b"User-Agent: Python/3.11 aiohttp/3.9.5\r\n"
    b"Cookie: __Host-homeport-tenant=" + b"t" * 43 + b"\r\n\r\n"
)
BACKEND_FIELDS = [
    (b"Content-Length", b"0"),
    (b"Date", b"Sun, 06 Dec 2026 10:00:00 GMT"),
    (b"Server", b"Python/3.11 aiohttp/3.9.5"),
]


class _Sink:
    request: Request | None = None

    def request_started(self, request: Request) -> None:
        self.request = request

    def body_received(self, data: bytes) -> None:
        pass

    def request_ended(self) -> None:
        pass

    def upgraded(self, rest: bytes) -> None:
        pass


def best(call: Callable[[], object]) -> float:
    for _ in range(CALLS // 10):
        call()
    fastest = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(CALLS):
            call()
        fastest = min(fastest, (time.perf_counter() - start) / CALLS)
    return fastest * 1e6


def steps(fmt: HeaderFormat) -> dict[str, Callable[[], object]]:
    sink = _Sink()
    reader = RequestReader(sink)
    reader.feed(BROWSER_REQUEST)
    request = sink.request
    assert request is not None
    names, values = relay_headers.request_fields(
        request.headers, client_ip="127.0.0.1", public_host="h.example:8443", websocket=False
    )
    fields = fmt.encode_fields(names, values)
    opened = encode_request_fields(3, b"GET", request.target.encode("latin-1"), fields)
    head = decode_request_head(opened, fmt)
    origin = Origin.parse("http://127.0.0.1:8123")
    relayed = response_fields(BACKEND_FIELDS, origin)
    answered = encode_response_head(ResponseHead.from_fields(204, *relayed), fmt)
    answer = decode_response_head(answered, fmt)
    return {
        "relay: read the browser's request": lambda: reader.feed(BROWSER_REQUEST),
        "relay: clean its fields": lambda: relay_headers.request_fields(
            request.headers, client_ip="127.0.0.1", public_host="h.example:8443", websocket=False
        ),
        "relay: its traffic class": lambda: request_priority(
            request.path, websocket=False, content_length=None
        ),
        "relay: encode the header block *": lambda: fmt.encode_fields(names, values),
        "relay: encode the OPEN head": lambda: encode_request_fields(
            3, b"GET", request.target.encode("latin-1"), fields
        ),
        "relay: the stream's head": lambda: RequestHead("GET", request.target, [], 3),
        "add-on: decode the OPEN head *": lambda: decode_request_head(opened, fmt),
        "add-on: Home Assistant's request": lambda: request_head(
            head.method, head.target, head.headers, origin, send_forwarded=True, has_body=False
        ),
        "add-on: clean Home Assistant's fields": lambda: response_fields(BACKEND_FIELDS, origin),
        "add-on: the answer's traffic class": lambda: response_priority(3, *relayed),
        "add-on: encode the RESPONSE head *": lambda: encode_response_head(
            ResponseHead.from_fields(204, *relayed), fmt
        ),
        "relay: decode the RESPONSE head *": lambda: decode_response_head(answered, fmt),
        "relay: the browser's header lines": lambda: response_lines(*answer.fields),
    }


def main() -> None:
    timings = {
        fmt.version: {name: best(call) for name, call in steps(fmt).items()}
        for fmt in (HEADERS_V1, HEADERS_V2)
    }
    print(f"{'step (µs per call; * depends on the header format)':<52} {'v1':>7} {'v2':>7}")
    for name in timings[1]:
        print(f"{name:<52} {timings[1][name]:7.2f} {timings[2][name]:7.2f}")
    totals = {version: sum(rows.values()) for version, rows in timings.items()}
    print(f"{'all head work of one GET':<52} {totals[1]:7.2f} {totals[2]:7.2f}")


if __name__ == "__main__":
    main()
