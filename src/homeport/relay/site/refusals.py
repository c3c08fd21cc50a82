"""The two refusals of the home pages: "no access" (404) and "only the owner" (403).

Anyone who cannot open a home gets the same 404 whether it exists or not, so
home ids cannot be probed. A member (who can open it, and so knows it exists)
asking for an owner's page or action gets a 403 that says why.
"""

from __future__ import annotations

from aiohttp import web

from homeport.accounts.sessions import SessionInfo
from homeport.relay.site.keys import PAGES

__all__ = ["no_access", "owner_only"]


def no_access(request: web.Request, session: SessionInfo) -> web.Response:
    """404: no such home, or this account cannot open it (the same answer)."""
    return request.app[PAGES].message(
        "No access",
        "This home does not exist, or your account has no access to it.",
        status=404,
        user_email=session.email,
    )


def owner_only(request: web.Request, session: SessionInfo) -> web.Response:
    """403: this account can open the home but may not manage it."""
    return request.app[PAGES].message(
        "Only the owner",
        "This home is shared with you: you can open it, but only its owner can invite "
        "people, make app links, change its settings or hand it over.",
        status=403,
        user_email=session.email,
        link="/",
        link_text="Your homes",
    )
