"""Tenant hosts: the access gate, the session hand-off, and the proxy itself.

Every request on ``<instance-id>.<tenant-domain>`` needs this host's own
``__Host-`` session cookie, held by an account allowed on the instance; the
instance comes from the Host header only (deny by default).  Without one, a
browser navigation is sent to sign in on the account site, which hands a
session over with a single-use code bound to a state cookie set here (so a
code cannot log someone else's browser into the attacker's session).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from urllib.parse import urlencode

from aiohttp import WSMsgType, web

from homeport.accounts.service import Accounts
from homeport.protocol.errors import ErrorCode
from homeport.protocol.heads import RequestHead
from homeport.relay import headers as hdr
from homeport.relay.config import RelayConfig
from homeport.relay.gate import SessionGate
from homeport.relay.hub import TunnelHub
from homeport.relay.pages import HSTS, Pages
from homeport.tunnel.priorities import request_priority
from homeport.tunnel.session import TunnelSession
from homeport.tunnel.stream import Stream, StreamClosed, WsClose

log = logging.getLogger(__name__)

SESSION_COOKIE = "__Host-homeport_session"
STATE_COOKIE = "__Host-homeport_state"
RESERVED_PREFIX = "/.homeport/"
STATE_MAX_AGE = 300
MAX_WS_MESSAGE = 16 * 1024 * 1024
RESPONSE_HEAD_TIMEOUT = 300.0
BODY_CHUNK = 64 * 1024


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def binding_for(state: str) -> str:
    """What the account site sees of the state cookie: a hash, never the value."""
    return hashlib.sha256(state.encode()).hexdigest()


def safe_next(value: str | None) -> str:
    """A local path to return to; anything else (other hosts, schemes) becomes ``/``."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    if len(value) > 2048 or any(ord(c) < 0x21 or ord(c) > 0x7E for c in value):
        return "/"
    return value


class TenantProxy:
    def __init__(
        self,
        config: RelayConfig,
        accounts: Accounts,
        hub: TunnelHub,
        gate: SessionGate,
        pages: Pages,
    ) -> None:
        self.config = config
        self.accounts = accounts
        self.hub = hub
        self.gate = gate
        self.pages = pages

    async def handle(self, request: web.Request, instance_id: str) -> web.StreamResponse:
        if request.raw_path.startswith(RESERVED_PREFIX):
            return await self._own_paths(request, instance_id)
        access = await self.gate.tenant_user(request.cookies.get(SESSION_COOKIE), instance_id)
        if access is None:
            return self._challenge(request, instance_id)
        tunnel = self.hub.tunnel_for(instance_id)
        if tunnel is None:
            return self.pages.message(
                "This home is offline",
                "The Homeport add-on of this home is not connected to the relay right now. "
                "Check that Home Assistant and the add-on are running and online.",
                status=503,
                tenant=True,
            )
        if _is_websocket(request):
            return await self._websocket(request, instance_id, tunnel)
        return await self._http(request, instance_id, tunnel)

    # ------------------------------------------------------------ the gate

    def _challenge(self, request: web.Request, instance_id: str) -> web.StreamResponse:
        navigating = request.method in ("GET", "HEAD") and (
            request.headers.get("Sec-Fetch-Mode") == "navigate"
            or "text/html" in request.headers.get("Accept", "")
        )
        if not navigating or _is_websocket(request):
            response = web.Response(
                status=401,
                text="Sign in to Homeport first.\n",
                headers={"WWW-Authenticate": 'Homeport realm="homeport"'},
            )
            response.headers["Strict-Transport-Security"] = HSTS
            return response
        state = secrets.token_urlsafe(32)
        query = urlencode(
            {
                "instance": instance_id,
                "state": binding_for(state),
                "next": safe_next(request.raw_path),
            }
        )
        response = redirect(f"{self.config.account_origin}/connect?{query}")
        response.set_cookie(
            STATE_COOKIE,
            state,
            max_age=STATE_MAX_AGE,
            path="/",
            secure=True,
            httponly=True,
            samesite="Lax",
        )
        self.pages.secure(response)
        return response

    async def _own_paths(self, request: web.Request, instance_id: str) -> web.StreamResponse:
        path = request.path
        if path == "/.homeport/handoff" and request.method == "GET":
            return await self._handoff(request, instance_id)
        if path == "/.homeport/static/homeport.css":
            return self.pages.stylesheet()
        return self.pages.message("Not found", "There is nothing here.", status=404, tenant=True)

    async def _handoff(self, request: web.Request, instance_id: str) -> web.StreamResponse:
        """Finish the sign-in hand-off: exchange the one-time code for this host's session."""
        code = request.query.get("code", "")
        state = request.cookies.get(STATE_COOKIE, "")
        user_id = None
        if code and state and len(code) <= 128:
            user_id = await self.accounts.consume_handoff(code, instance_id, binding_for(state))
        if user_id is None:
            log.warning("tenant.handoff_refused", extra={"instance": instance_id})
            return self.pages.message(
                "This sign-in link cannot be used",
                "It has expired, was already used, or was opened in another browser.",
                status=400,
                tenant=True,
                link="/",
                link_text="Try again",
            )
        user = await self.accounts.get_user(user_id)
        if user is None:
            return self.pages.message(
                "Not allowed", "This account cannot open this home.", status=403, tenant=True
            )
        token, _ = await self.accounts.create_session(
            user,
            "tenant",
            instance_id=instance_id,
            user_agent=request.headers.get("User-Agent", ""),
            ip=request.remote or "",
            handoff_code=code,  # links the session to the account session, for sign-out
        )
        # The code leaves the address bar with this redirect (no token stays in a URL).
        response = redirect(safe_next(request.query.get("next")))
        response.set_cookie(
            SESSION_COOKIE, token, path="/", secure=True, httponly=True, samesite="Lax"
        )
        response.del_cookie(STATE_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
        self.pages.secure(response)
        log.info("tenant.session_started", extra={"instance": instance_id, "user": user_id})
        return response

    # ----------------------------------------------------------- proxy: HTTP

    def _head(self, request: web.Request, instance_id: str, *, websocket: bool) -> RequestHead:
        headers = hdr.request_headers(
            request.raw_headers,
            client_ip=request.remote or "",
            public_host=self.config.tenant_host(instance_id) + self.config.port_suffix,
            websocket=websocket,
        )
        priority = request_priority(
            request.path, websocket=websocket, content_length=request.content_length
        )
        return RequestHead(request.method, request.raw_path, headers, priority)

    async def _http(
        self, request: web.Request, instance_id: str, tunnel: TunnelSession
    ) -> web.StreamResponse:
        started = time.monotonic()
        try:
            head = self._head(request, instance_id, websocket=False)
            stream = tunnel.open_stream(head, websocket=False, end_stream=not request.body_exists)
        except StreamClosed as exc:
            return self._tunnel_error(exc)
        except ValueError:
            return self.pages.message(
                "Bad request", "The request cannot be forwarded.", status=400, tenant=True
            )
        upload = asyncio.create_task(_upload(request, stream)) if request.body_exists else None
        try:
            try:
                async with asyncio.timeout(RESPONSE_HEAD_TIMEOUT):
                    head_in = await stream.response
            except StreamClosed as exc:
                return self._tunnel_error(exc)
            except TimeoutError:
                stream.reset(ErrorCode.CANCEL, "no response head in time")
                return self._tunnel_error(StreamClosed(ErrorCode.UPSTREAM_TIMEOUT, "timeout"))
            body = stream.complete_body() if request.method != "HEAD" else None
            response = (
                web.StreamResponse(status=head_in.status)
                if body is None
                else web.Response(status=head_in.status, body=body)
            )
            for name, value in hdr.response_headers(head_in.headers):
                if body is None or name != "content-length":
                    response.headers.add(name, value)
            _tenant_security_headers(response)
            if body is not None:
                return response  # small and complete: aiohttp writes it in one go
            await response.prepare(request)
            try:
                async for chunk in stream.iter_body():
                    await response.write(chunk)
            except StreamClosed:
                # Mid-body failure: the status line is out; cut the connection so the
                # browser sees a truncated response, not a complete wrong one.
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            return response
        except (ConnectionResetError, asyncio.CancelledError):
            stream.reset(ErrorCode.CANCEL, "browser went away")
            raise
        finally:
            if upload is not None and not upload.done():
                upload.cancel()
            log.debug(
                "tenant.request",
                extra={
                    "instance": instance_id,
                    "method": request.method,
                    "ms": round((time.monotonic() - started) * 1000, 1),
                },
            )

    def _tunnel_error(self, exc: StreamClosed) -> web.Response:
        if exc.code in (ErrorCode.UPSTREAM_UNAVAILABLE,):
            return self.pages.message(
                "Home Assistant is not answering",
                "The add-on is connected, but Home Assistant did not answer it. "
                "It may be starting or restarting; try again in a moment.",
                status=502,
                tenant=True,
            )
        if exc.code is ErrorCode.UPSTREAM_TIMEOUT:
            return self.pages.message(
                "Home Assistant took too long",
                "Home Assistant did not answer in time.",
                status=504,
                tenant=True,
            )
        if exc.code in (ErrorCode.TOO_MANY_STREAMS, ErrorCode.REFUSED):
            return self.pages.message(
                "Busy", "This home has too many open requests; try again.", status=503, tenant=True
            )
        if exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.HEAD_TOO_LARGE):
            return self.pages.message(
                "Bad request", "The request cannot be forwarded.", status=400, tenant=True
            )
        return self.pages.message(
            "Connection to the home lost",
            "The connection to this home dropped while answering. Try again.",
            status=502,
            tenant=True,
        )

    # ------------------------------------------------------ proxy: WebSocket

    async def _websocket(
        self, request: web.Request, instance_id: str, tunnel: TunnelSession
    ) -> web.StreamResponse:
        """Proxy a WebSocket; a foreign ``Origin`` is refused (cross-site WebSocket hijacking)."""
        origin = request.headers.get("Origin")
        if origin is not None and origin != self.config.tenant_origin(instance_id):
            log.warning("tenant.ws_bad_origin", extra={"instance": instance_id})
            return web.Response(status=403, text="Cross-origin WebSocket refused.\n")
        try:
            stream = tunnel.open_stream(
                self._head(request, instance_id, websocket=True), websocket=True, end_stream=False
            )
            async with asyncio.timeout(RESPONSE_HEAD_TIMEOUT):
                head_in = await stream.response
        except StreamClosed as exc:
            return self._tunnel_error(exc)
        except TimeoutError:
            return self._tunnel_error(StreamClosed(ErrorCode.UPSTREAM_TIMEOUT, "timeout"))
        if head_in.status != 101:
            response = web.StreamResponse(status=head_in.status)
            for name, value in hdr.response_headers(head_in.headers):
                response.headers.add(name, value)
            _tenant_security_headers(response)
            await response.prepare(request)
            with contextlib.suppress(StreamClosed):
                async for chunk in stream.iter_body():
                    await response.write(chunk)
            await response.write_eof()
            return response
        protocol = next((v for n, v in head_in.headers if n == "sec-websocket-protocol"), None)
        ws = web.WebSocketResponse(
            protocols=(protocol,) if protocol else (),
            max_msg_size=MAX_WS_MESSAGE,
            autoclose=False,
            autoping=True,
        )
        _tenant_security_headers(ws)
        await ws.prepare(request)
        downstream = asyncio.create_task(_tunnel_to_browser(stream, ws))
        try:
            await _browser_to_tunnel(ws, stream)
        finally:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(downstream), timeout=5)
            downstream.cancel()
            with contextlib.suppress(asyncio.CancelledError, StreamClosed):
                await downstream
            if not stream.closed:
                stream.reset(ErrorCode.CANCEL, "browser WebSocket ended")
        return ws


async def _upload(request: web.Request, stream: Stream) -> None:
    with contextlib.suppress(StreamClosed):
        async for chunk in request.content.iter_chunked(BODY_CHUNK):
            await stream.write(chunk)
        await stream.write(b"", end=True)


async def _browser_to_tunnel(ws: web.WebSocketResponse, stream: Stream) -> None:
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await stream.send_ws(msg.data.encode("utf-8"), text=True)
            elif msg.type is WSMsgType.BINARY:
                await stream.send_ws(msg.data, text=False)
        code = ws.close_code or 1000
        stream.close_ws(code if code not in (1005, 1006) else 1000, "")
    except StreamClosed:
        await ws.close(code=1011, message=b"home connection lost")


async def _tunnel_to_browser(stream: Stream, ws: web.WebSocketResponse) -> None:
    try:
        while True:
            item = await stream.receive_ws()
            if isinstance(item, WsClose):
                await ws.close(code=item.code, message=item.reason.encode()[:123])
                return
            if item.text:
                await ws.send_str(item.data.decode("utf-8", "replace"))
            else:
                await ws.send_bytes(item.data)
    except StreamClosed:
        await ws.close(code=1011, message=b"home connection lost")


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def _tenant_security_headers(response: web.StreamResponse) -> None:
    """Only what cannot break Home Assistant; never weaken a header it sent."""
    response.headers["Strict-Transport-Security"] = HSTS
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
