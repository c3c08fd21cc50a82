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
from collections.abc import Callable
from urllib.parse import urlencode

from aiohttp import WSMsgType, web

from homeport.accounts.audit import EventType
from homeport.accounts.service import Accounts
from homeport.accounts.sharing import AppLinkAccess
from homeport.accounts.throttle import network_key
from homeport.protocol.errors import ErrorCode
from homeport.protocol.heads import RequestHead
from homeport.relay import headers as hdr
from homeport.relay.config import RelayConfig
from homeport.relay.gate import SessionGate
from homeport.relay.hub import TunnelHub
from homeport.relay.limits import (
    RETRY_AFTER_SECONDS,
    BodyTooLarge,
    BodyTooSlow,
    TenantLimits,
    TokenBucket,
)
from homeport.relay.live import Ending, Principal
from homeport.relay.pages import HSTS, Pages
from homeport.relay.security_headers import tenant_headers
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
        self.limits = TenantLimits(config)

    async def handle(self, request: web.Request, instance_id: str) -> web.StreamResponse:
        if request.raw_path.startswith(RESERVED_PREFIX):
            return await self._own_paths(request, instance_id)
        # Counted per network like the sign-in throttle (IPv6 per /64): one client
        # cannot dodge the cap by rotating through the addresses it owns.
        with self.limits.clients.hold(network_key(request.remote)) as admitted:
            if not admitted:
                log.warning("tenant.client_limit", extra={"instance": instance_id})
                return self._busy(429, "Too many requests from your address; try again shortly.")
            access = await self.gate.tenant_user(request.cookies.get(SESSION_COOKIE), instance_id)
            if access is None:
                return self._challenge(request, instance_id)
            principal = Principal(user_id=access[0], session_id=access[1])
            return await self._admitted(
                request, instance_id, principal, self.config.tenant_host(instance_id)
            )

    async def handle_app_link(
        self, request: web.Request, access: AppLinkAccess, host: str
    ) -> web.StreamResponse:
        """An app-link host: no session gate (the link is the credential), no relay paths.

        Everything else is as on the tenant host: header hygiene and relay
        cookies cut out (so a relay session cookie is never a substitute for
        anything), the WebSocket ``Origin`` checked against *this* host, the
        same stream, request and bandwidth limits, and Home Assistant's own login
        in front.
        """
        if request.raw_path.startswith(RESERVED_PREFIX):
            if request.path == "/.homeport/static/homeport.css":
                return self.pages.stylesheet()
            return self.pages.message(
                "Not found", "There is nothing here.", status=404, tenant=True
            )
        with self.limits.clients.hold(network_key(request.remote)) as admitted:
            if not admitted:
                log.warning("tenant.client_limit", extra={"instance": access.instance_id})
                return self._busy(429, "Too many requests from your address; try again shortly.")
            principal = Principal(app_link_id=access.link_id)
            return await self._admitted(request, access.instance_id, principal, host)

    async def _admitted(
        self, request: web.Request, instance_id: str, principal: Principal, host: str
    ) -> web.StreamResponse:
        with self.limits.tenants.hold(instance_id) as admitted:
            if not admitted:
                log.warning("tenant.home_limit", extra={"instance": instance_id})
                return self._busy(503, "This home has too many open requests; try again.")
            return await self._forward(request, instance_id, principal, host)

    def _busy(self, status: int, text: str) -> web.Response:
        response = self.pages.message("Busy", text, status=status, tenant=True)
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    async def _forward(
        self, request: web.Request, instance_id: str, principal: Principal, host: str
    ) -> web.StreamResponse:
        tunnel = self.hub.tunnel_for(instance_id)
        if tunnel is None:
            return self.pages.message(
                "This home is offline",
                "The Homeport add-on of this home is not connected to the relay right now. "
                "Check that Home Assistant and the add-on are running and online.",
                status=503,
                tenant=True,
            )
        # Registered with who opened it, so withdrawn access cuts it at once.
        cut = _Cut()
        websocket = _is_websocket(request)
        with self.gate.live.track(
            instance_id, "websocket" if websocket else "http", cut, principal
        ):
            if websocket:
                return await self._websocket(request, instance_id, tunnel, cut, host)
            return await self._http(request, instance_id, tunnel, cut, host)

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
        """Finish the sign-in hand-off: exchange the one-time code for this host's session.

        Any presentation of a code uses it up, also one without this host's state
        cookie (a leaked link opened elsewhere, or a login-CSRF attempt): such a
        code is in the wrong hands, and nobody may use it after that.
        """
        code = request.query.get("code", "")
        state = request.cookies.get(STATE_COOKIE)
        user_id = None
        if code and len(code) <= 128:
            binding = binding_for(state) if state else None
            user_id = await self.accounts.consume_handoff(code, instance_id, binding)
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
        token, row = await self.accounts.create_session(
            user,
            "tenant",
            instance_id=instance_id,
            user_agent=request.headers.get("User-Agent", ""),
            ip=request.remote or "",
            handoff_code=code,  # links the session to the account session, for sign-out
        )
        await self.accounts.audit.record(
            EventType.SESSION_CREATED,
            user_id=user_id,
            instance_id=instance_id,
            ip=request.remote or "",
            user_agent=request.headers.get("User-Agent", ""),
            session_id=row.id,
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

    def _head(self, request: web.Request, host: str, *, websocket: bool) -> RequestHead:
        headers = hdr.request_headers(
            request.raw_headers,
            client_ip=request.remote or "",
            public_host=host + self.config.port_suffix,
            websocket=websocket,
        )
        priority = request_priority(
            request.path, websocket=websocket, content_length=request.content_length
        )
        return RequestHead(request.method, request.raw_path, headers, priority)

    async def _http(
        self,
        request: web.Request,
        instance_id: str,
        tunnel: TunnelSession,
        cut: _Cut,
        host: str,
    ) -> web.StreamResponse:
        started = time.monotonic()
        if self.limits.body_too_large(request.content_length):
            return self._too_large()
        bandwidth = self.limits.bandwidth(instance_id)
        try:
            head = self._head(request, host, websocket=False)
            stream = tunnel.open_stream(head, websocket=False, end_stream=not request.body_exists)
        except StreamClosed as exc:
            return self._tunnel_error(exc)
        except ValueError:
            return self.pages.message(
                "Bad request", "The request cannot be forwarded.", status=400, tenant=True
            )
        with stream:  # released however this ends: no abandoned stream stays open
            cut.set(lambda why: _cut_http(request, stream, why))
            upload = (
                asyncio.create_task(_upload(request, stream, self.limits, bandwidth.up))
                if request.body_exists
                else None
            )
            try:
                return await self._respond(request, stream, upload, bandwidth.down)
            finally:
                if upload is not None and not upload.done():
                    upload.cancel()
                elif upload is not None and not upload.cancelled():
                    upload.exception()  # retrieved: a too-large body was answered above
                log.debug(
                    "tenant.request",
                    extra={
                        "instance": instance_id,
                        "method": request.method,
                        "ms": round((time.monotonic() - started) * 1000, 1),
                    },
                )

    async def _respond(
        self,
        request: web.Request,
        stream: Stream,
        upload: asyncio.Task[None] | None,
        down: TokenBucket,
    ) -> web.StreamResponse:
        """Wait for the home's answer and pass it on to the browser."""
        try:
            async with asyncio.timeout(RESPONSE_HEAD_TIMEOUT):
                head_in = await stream.response_head()
        except StreamClosed as exc:
            refused = _body_refused(upload)
            if refused is not None:
                return self._body_refusal(refused)
            return self._tunnel_error(exc)
        except TimeoutError:
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
        tenant_headers(response)
        if body is not None:
            await down.take(len(body))
            return response  # small and complete: aiohttp writes it in one go
        await response.prepare(request)
        try:
            async for chunk in stream.iter_body():
                await down.take(len(chunk))
                await response.write(chunk)
        except StreamClosed:
            # Mid-body failure: the status line is out; cut the connection so the
            # browser sees a truncated response, not a complete wrong one.
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    def _too_large(self) -> web.Response:
        response = self.pages.message(
            "Too large", "This upload is larger than the relay accepts.", status=413, tenant=True
        )
        response.force_close()  # the rest of the body is not read: the connection cannot go on
        return response

    def _body_refusal(self, refused: BodyTooLarge | BodyTooSlow) -> web.Response:
        if isinstance(refused, BodyTooLarge):
            return self._too_large()
        response = self.pages.message(
            "Too slow", "This upload was too slow and was stopped.", status=408, tenant=True
        )
        response.force_close()  # the rest of the body is not read: the connection cannot go on
        return response

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
            return self._busy(503, "This home has too many open requests; try again.")
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
        self,
        request: web.Request,
        instance_id: str,
        tunnel: TunnelSession,
        cut: _Cut,
        host: str,
    ) -> web.StreamResponse:
        """Proxy a WebSocket; a foreign ``Origin`` is refused (cross-site WebSocket hijacking)."""
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"https://{host}{self.config.port_suffix}":
            log.warning("tenant.ws_bad_origin", extra={"instance": instance_id})
            return web.Response(status=403, text="Cross-origin WebSocket refused.\n")
        try:
            stream = tunnel.open_stream(
                self._head(request, host, websocket=True), websocket=True, end_stream=False
            )
        except StreamClosed as exc:
            return self._tunnel_error(exc)
        with stream:  # released however this ends: a closed tab mid-upgrade included
            cut.set(lambda why: _cut_http(request, stream, why))
            try:
                async with asyncio.timeout(RESPONSE_HEAD_TIMEOUT):
                    head_in = await stream.response_head()
            except StreamClosed as exc:
                return self._tunnel_error(exc)
            except TimeoutError:
                return self._tunnel_error(StreamClosed(ErrorCode.UPSTREAM_TIMEOUT, "timeout"))
            if head_in.status != 101:
                response = web.StreamResponse(status=head_in.status)
                for name, value in hdr.response_headers(head_in.headers):
                    response.headers.add(name, value)
                tenant_headers(response)
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
            tenant_headers(ws)
            await ws.prepare(request)
            cut.set(lambda why: _end_websocket(request, ws, stream, why))
            bandwidth = self.limits.bandwidth(instance_id)
            downstream = asyncio.create_task(_tunnel_to_browser(stream, ws, bandwidth.down))
            try:
                await _browser_to_tunnel(ws, stream, bandwidth.up)
            finally:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(downstream), timeout=5)
                downstream.cancel()
                with contextlib.suppress(asyncio.CancelledError, StreamClosed):
                    await downstream
            return ws


class _Cut:
    """How to end one exchange *now*; what that means changes as it progresses."""

    def __init__(self) -> None:
        self.ended: Ending | None = None
        self._action: Callable[[Ending], None] | None = None

    def set(self, action: Callable[[Ending], None]) -> None:
        self._action = action
        if self.ended is not None:  # access ended while this exchange was being set up
            action(self.ended)

    def __call__(self, why: Ending) -> None:
        self.ended = why
        if self._action is not None:
            self._action(why)


def _cut_http(request: web.Request, stream: Stream, why: Ending) -> None:
    """Access ended mid-exchange: stop the home's side and drop the browser's."""
    stream.reset(ErrorCode.CANCEL, why.reason)
    if request.transport is not None:
        request.transport.close()


def _end_websocket(
    request: web.Request, ws: web.WebSocketResponse, stream: Stream, why: Ending
) -> None:
    """Access ended: close the browser's WebSocket (4001 or 1008) and reset the tunnel side."""

    async def close() -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await ws.close(code=why.code, message=why.reason.encode())
        stream.reset(ErrorCode.CANCEL, why.reason)
        if request.transport is not None:
            request.transport.close()

    task = asyncio.get_running_loop().create_task(close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


#: Close tasks in flight (held so they are not garbage-collected mid-way).
_closing: set[asyncio.Task[None]] = set()


async def _upload(
    request: web.Request, stream: Stream, limits: TenantLimits, bucket: TokenBucket
) -> None:
    """Carry the request body into the tunnel, within the size cap and the minimum rate."""

    def stalled() -> None:  # the pending read fails, so the loop below ends
        request.content.set_exception(BodyTooSlow("request body below the minimum rate"))

    sent = 0
    with contextlib.suppress(StreamClosed):
        try:
            with limits.upload_pace(stalled) as pace:
                async for chunk in request.content.iter_chunked(BODY_CHUNK):
                    pace.received(len(chunk))
                    sent += len(chunk)
                    limits.count_body(sent)
                    with pace.paused():  # the home or the bandwidth cap holds us, not the client
                        await bucket.take(len(chunk))
                        await stream.write(chunk)
        except (BodyTooLarge, BodyTooSlow) as exc:
            # Home Assistant must not act on a cut-off body: the stream is reset.
            stream.reset(ErrorCode.CANCEL, str(exc))
            raise
        await stream.write(b"", end=True)


async def _browser_to_tunnel(
    ws: web.WebSocketResponse, stream: Stream, bucket: TokenBucket
) -> None:
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                data = msg.data.encode("utf-8")
                await bucket.take(len(data))
                await stream.send_ws(data, text=True)
            elif msg.type is WSMsgType.BINARY:
                await bucket.take(len(msg.data))
                await stream.send_ws(msg.data, text=False)
        code = ws.close_code or 1000
        stream.close_ws(code if code not in (1005, 1006) else 1000, "")
    except StreamClosed:
        if not ws.closed:
            await ws.close(code=1011, message=b"home connection lost")


async def _tunnel_to_browser(
    stream: Stream, ws: web.WebSocketResponse, bucket: TokenBucket
) -> None:
    try:
        while True:
            item = await stream.receive_ws()
            if isinstance(item, WsClose):
                await ws.close(code=item.code, message=item.reason.encode()[:123])
                return
            if ws.closed:
                return
            await bucket.take(len(item.data))
            if item.text:
                await ws.send_str(item.data.decode("utf-8", "replace"))
            else:
                await ws.send_bytes(item.data)
    except StreamClosed:
        if not ws.closed:  # a revocation already closed it with its own code
            await ws.close(code=1011, message=b"home connection lost")


def _body_refused(upload: asyncio.Task[None] | None) -> BodyTooLarge | BodyTooSlow | None:
    """Why the upload stopped, if the body broke a limit (too large, or too slow)."""
    if upload is None or not upload.done() or upload.cancelled():
        return None
    refused = upload.exception()
    return refused if isinstance(refused, BodyTooLarge | BodyTooSlow) else None


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"
