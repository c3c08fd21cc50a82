"""Slow and piled-up requests on the account site (R-MT-14).

Threats this stops:

* **Slow bodies** (slow POST, CAPEC-469): a form POST that trickles one byte
  every few seconds would hold its connection, its file descriptor and its
  handler for as long as the sender likes; the idle deadline (75 s) covers
  request heads only.  Here the whole body must arrive within
  ``account_body_seconds`` (forms are a few KiB: seconds, not minutes), or the
  request gets ``408`` and the connection closes.  The body is read by the
  site's outermost middleware, before any other check or handler, so every
  route (and every route added later, unknown paths included) is covered, and
  the handlers find it already read (``request.read()``, ``post()`` and
  ``json()`` answer from aiohttp's cache).
* **Many requests from one client**: at most ``account_max_requests`` requests
  per client network (IPv4 address, IPv6 /64: the keying of
  :func:`homeport.accounts.throttle.network_key`, so rotating through one's own
  /64 does not help) are open at once; the excess gets ``429`` +
  ``Retry-After`` and the connection closes, so one address cannot use up the
  relay's file descriptors and keep everyone else off the site.

The add-ons' tunnels (``GET /v1/tunnel``, long-lived WebSockets without a
body, many of them behind one carrier-grade NAT address) are not counted:
the hub has its own handshake deadlines and link-code limits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from homeport.accounts.throttle import network_key
from homeport.relay.config import RelayConfig
from homeport.relay.limits import RETRY_AFTER_SECONDS, BodyCut, BodyTooSlow, Slots
from homeport.relay.pages import Pages

__all__ = ["TUNNEL_PATH", "AccountLimits"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TUNNEL_PATH = "/v1/tunnel"


class AccountLimits:
    """Per-network request cap and whole-body deadline in front of the account site."""

    def __init__(self, config: RelayConfig, pages: Pages) -> None:
        self.pages = pages
        self.apply(config)

    def apply(self, config: RelayConfig) -> None:
        """Take the limits from ``config``, with fresh counters."""
        self.body_seconds = config.account_body_seconds
        self.clients = Slots(config.account_max_requests)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The site's outermost middleware: nothing runs before these limits."""
        if request.method == "GET" and request.path == TUNNEL_PATH and not request.body_exists:
            return await handler(request)
        with self.clients.hold(network_key(request.remote)) as admitted:
            if not admitted:
                log.warning("account.client_limit", extra={"ip": request.remote})
                _stop_reading(request, BodyCut("too many requests from this network"))
                return self._refuse(
                    429, "Busy", "Too many requests from your address; try again shortly."
                )
            if request.body_exists and not await self._read_body(request):
                log.warning("account.body_timeout", extra={"ip": request.remote})
                _stop_reading(request, BodyTooSlow("request body missed its deadline"))
                return self._refuse(408, "Too slow", "The form took too long to arrive.")
            return await handler(request)

    async def _read_body(self, request: web.Request) -> bool:
        """Read the whole body into aiohttp's cache; False if it missed the deadline."""
        try:
            async with asyncio.timeout(self.body_seconds if self.body_seconds > 0 else None):
                if request.content_type == "multipart/form-data":
                    await request.post()  # aiohttp keeps the parsed form, not the bytes
                else:
                    await request.read()
        except TimeoutError:
            return False
        return True

    def _refuse(self, status: int, title: str, text: str) -> web.Response:
        response = self.pages.message(title, text, status=status)
        if status == 429:
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        response.force_close()  # the rest of a body is not read: the connection cannot go on
        return response


def _stop_reading(request: web.Request, why: BodyCut) -> None:
    """No more of this body is read: the connection closes right after the answer."""
    if request.body_exists:
        request.content.set_exception(why)
