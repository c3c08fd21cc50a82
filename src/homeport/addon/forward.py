"""Serve tunnel streams from Home Assistant through one pooled HTTP client.

Threats this stops:

* SSRF / open proxy: the relay only ever names a path.  Every request goes to
  the configured Home Assistant base URL; absolute-form, authority-form and
  ``//host`` targets are refused by the head decoder and again here, and
  ``CONNECT`` is refused outright.
* Request smuggling: we never forward raw bytes.  The head arrives parsed and
  length-framed, and aiohttp's client writes a fresh request from it.
* Header spoofing: hop-by-hop headers are dropped in both directions and the
  ``X-Forwarded-*`` headers Home Assistant sees are the relay's, never the
  browser's (the relay strips the browser's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from yarl import URL

from homeport.protocol.errors import ErrorCode
from homeport.protocol.heads import (
    HOP_BY_HOP,
    HeadError,
    Headers,
    RequestHead,
    ResponseHead,
    connection_tokens,
)
from homeport.tunnel.priorities import response_priority
from homeport.tunnel.stream import Stream, StreamClosed, WsClose

log = logging.getLogger(__name__)

MAX_WS_MESSAGE = 16 * 1024 * 1024

# Hop-by-hop fields, and Host: aiohttp writes Home Assistant's own address there.
NOT_FORWARDED = HOP_BY_HOP | {"host"}
# The relay's view of the client; only for a Home Assistant that trusts us.
FORWARDING = frozenset({"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})
# The add-on's own WebSocket client negotiates these with Home Assistant itself.
WEBSOCKET_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-accept",
        "sec-websocket-protocol",
    }
)


class HomeAssistantForwarder:
    """Turns each stream into one request (or WebSocket) to Home Assistant."""

    def __init__(
        self,
        ha_url: str,
        client: aiohttp.ClientSession,
        *,
        send_forwarded: Callable[[], bool] | None = None,
    ) -> None:
        base = URL(ha_url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"Home Assistant URL must be http(s)://host[:port], not {ha_url!r}")
        self.base = base.with_path("").with_query(None).with_fragment(None)
        self._base_text = str(self.base).rstrip("/")
        self._client = client
        # False while Home Assistant does not trust us as a proxy: it would answer
        # 400 to every request carrying X-Forwarded-For (see addon.ha_trust).
        self._send_forwarded = send_forwarded or _always

    def url_for(self, target: str) -> URL:
        """The upstream URL for an origin-form target; refuses anything else."""
        if not target.startswith("/") or target.startswith("//"):
            raise ValueError("target must be origin-form")
        url = URL(self._base_text + target, encoded=True)
        if url.origin() != self.base.origin():  # belt and braces against parser tricks
            raise ValueError("target escapes the Home Assistant base URL")
        return url

    async def handle(self, stream: Stream) -> None:
        head = stream.request
        assert head is not None
        if head.method == "CONNECT":
            stream.reset(ErrorCode.BAD_REQUEST, "CONNECT is not forwarded")
            return
        try:
            url = self.url_for(head.target)
        except ValueError as exc:
            stream.reset(ErrorCode.BAD_REQUEST, str(exc))
            return
        if stream.websocket:
            await self._websocket(stream, head, url)
        else:
            await self._http(stream, head, url)

    # ----------------------------------------------------------------- HTTP

    async def _http(self, stream: Stream, head: RequestHead, url: URL) -> None:
        started = time.monotonic()
        headers = _request_headers(head.headers, self._send_forwarded())
        body = _body(stream) if stream.request_has_body else None
        try:
            async with self._client.request(
                head.method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            ) as response:
                # A body that is already complete goes out with the head (fewer frames
                # and messages on the tunnel for the many small API answers).
                body_now = await response.read() if response.content.is_eof() else None
                response_head = ResponseHead(response.status, self._response_headers(response))
                # A camera stream or a backup must not crowd out the home's API answers.
                stream.set_priority(response_priority(stream.priority, response_head.headers))
                try:
                    stream.respond(response_head, end=body_now == b"")
                except HeadError:
                    # A head we must not relay (e.g. an interim status, a field
                    # with control characters): the person gets a clean 502.
                    log.warning("addon.bad_upstream_head", extra={"stream": stream.id})
                    stream.reset(ErrorCode.UPSTREAM_UNAVAILABLE, "unusable response head")
                    return
                sent = 0
                if body_now is not None:
                    sent = len(body_now)
                    if body_now:
                        await stream.write(body_now, end=True)
                else:
                    async for chunk in response.content.iter_any():
                        sent += len(chunk)
                        await stream.write(chunk)
                    await stream.write(b"", end=True)
        except StreamClosed:
            return  # the browser went away; aiohttp releases the upstream connection
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            # ClientPayloadError: Home Assistant cut its response short (not a bug here).
            self._upstream_failed(stream, exc)
            return
        # Home Assistant may have answered before reading the whole body: the
        # session releases the stream after this handler, which sends the end of
        # the response first and then stops the upload (RESET NO_ERROR).
        log.debug(
            "addon.request",
            extra={
                "stream": stream.id,
                "method": head.method,
                "status": response.status,
                "bytes_out": sent,
                "ms": round((time.monotonic() - started) * 1000, 1),
            },
        )

    def _upstream_failed(self, stream: Stream, exc: BaseException) -> None:
        """The relay shows the person a page saying Home Assistant is not answering."""
        log.warning(
            "addon.upstream_failed", extra={"stream": stream.id, "error": type(exc).__name__}
        )
        stream.reset(ErrorCode.UPSTREAM_UNAVAILABLE, "Home Assistant is not answering")

    def _response_headers(self, response: aiohttp.ClientResponse) -> Headers:
        out: Headers = []
        listed = connection_tokens(response.headers.getall("connection", []))
        for name, value in response.raw_headers:
            lname = name.decode("latin-1").lower()
            if lname in NOT_FORWARDED or lname in listed:
                continue
            text = value.decode("latin-1")
            if lname == "location":
                text = self._public_location(text)
            out.append((lname, text))
        return out

    def _public_location(self, location: str) -> str:
        """Make redirects to Home Assistant's internal address relative to the public host.

        The result always starts with exactly one ``/`` followed by something
        other than ``/`` or ``\\``: ``http://ha//evil.example`` must become
        ``/evil.example``, never ``//evil.example``, which a browser reads as
        another host (and treats ``/\\evil.example`` the same way, after
        dropping tabs and newlines anywhere in a URL).  An open redirect
        through the relay's own name is what this stops.
        """
        base = self._base_text
        if not location.startswith(base) or location[len(base) : len(base) + 1] not in "/?#":
            return location  # somewhere else: Home Assistant's own business
        rest = "".join(c for c in location[len(base) :] if c not in "\t\n\r")
        return "/" + rest.lstrip("/\\")

    # ------------------------------------------------------------ WebSocket

    async def _websocket(self, stream: Stream, head: RequestHead, url: URL) -> None:
        protocols = tuple(
            p.strip()
            for name, value in head.headers
            if name == "sec-websocket-protocol"
            for p in value.split(",")
            if p.strip()
        )
        headers = [
            (n, v)
            for n, v in _request_headers(head.headers, self._send_forwarded())
            if n not in WEBSOCKET_HANDSHAKE
        ]
        try:
            ws = await self._client.ws_connect(
                url,
                headers=headers,
                protocols=protocols,
                autoclose=False,
                autoping=True,
                max_msg_size=MAX_WS_MESSAGE,
                compress=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            stream.respond(ResponseHead(exc.status or 502, []), end=True)
            return
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            self._upstream_failed(stream, exc)
            return
        answer: Headers = [("sec-websocket-protocol", ws.protocol)] if ws.protocol else []
        stream.respond(ResponseHead(101, answer))
        log.debug("addon.websocket_open", extra={"stream": stream.id})
        async with ws:
            upstream = asyncio.create_task(_ha_to_tunnel(ws, stream))
            try:
                await _tunnel_to_ha(stream, ws)
            finally:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(upstream), timeout=5)
                upstream.cancel()
                with contextlib.suppress(asyncio.CancelledError, StreamClosed):
                    await upstream


async def _tunnel_to_ha(stream: Stream, ws: aiohttp.ClientWebSocketResponse) -> None:
    try:
        while True:
            item = await stream.receive_ws()
            if isinstance(item, WsClose):
                await ws.close(code=_valid_close_code(item.code), message=item.reason.encode())
                return
            if item.text:
                await ws.send_str(item.data.decode("utf-8", "replace"))
            else:
                await ws.send_bytes(item.data)
    except StreamClosed:
        await ws.close(code=1001, message=b"tunnel stream closed")


async def _ha_to_tunnel(ws: aiohttp.ClientWebSocketResponse, stream: Stream) -> None:
    async for msg in ws:
        if msg.type is aiohttp.WSMsgType.TEXT:
            await stream.send_ws(msg.data.encode("utf-8"), text=True)
        elif msg.type is aiohttp.WSMsgType.BINARY:
            await stream.send_ws(msg.data, text=False)
        elif msg.type is aiohttp.WSMsgType.CLOSE or msg.type is aiohttp.WSMsgType.ERROR:
            break
    code = ws.close_code or 1006
    stream.close_ws(1011 if code == 1006 else code, "")


def _valid_close_code(code: int) -> int:
    # RFC 6455 §7.4: 1005/1006/1015 must never be sent on the wire.
    if code in (1000, 1001) or 1002 <= code <= 1003 or 1007 <= code <= 1014:
        return code
    if 3000 <= code <= 4999:
        return code
    return 1000


def _always() -> bool:
    return True


def _request_headers(headers: Headers, send_forwarded: bool = True) -> list[tuple[str, str]]:
    tokens = connection_tokens([v for n, v in headers if n == "connection"])
    dropped = NOT_FORWARDED if send_forwarded else NOT_FORWARDED | FORWARDING
    return [(n, v) for n, v in headers if n not in dropped and n not in tokens]


async def _body(stream: Stream) -> AsyncIterator[bytes]:
    async for chunk in stream.iter_body():
        yield chunk
