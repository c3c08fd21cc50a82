"""What the mail-backed account-site pages share: their refusal of a mailed link."""

from __future__ import annotations

from aiohttp import web

from homeport.accounts.throttle import retry_after
from homeport.relay.pages import Pages

__all__ = ["link_refused"]


def link_refused(
    pages: Pages, text: str, *, link: str, link_text: str, wait: float = 0.0
) -> web.Response:
    """A mailed link that is unknown, used or expired (429 while throttled)."""
    response = pages.message(
        "Link not valid",
        text,
        status=429 if wait > 0 else 400,
        link=link,
        link_text=link_text,
    )
    if wait > 0:
        response.headers["Retry-After"] = retry_after(wait)
    return response
