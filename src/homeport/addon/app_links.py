"""Asking the relay for a companion-app link over the live tunnel (for the ingress panel).

The request rides the tunnel's CONTROL frames (``tunnel/control.py``): the
tunnel is mutually authenticated, so the relay creates the link for the home
this add-on is linked to, on behalf of its owner, and answers with the
link's URL, which is shown once in the panel and never stored or logged here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

from homeport.tunnel.control import ControlFailed
from homeport.tunnel.session import TunnelSession

#: How long the panel waits for the relay's answer.
APP_LINK_TIMEOUT: Final = 10.0
#: Longest device name sent (the relay allows 64 characters; it gives the message).
NAME_MAX_SENT: Final = 200
UNSUPPORTED: Final = "This relay does not support creating app links here; use the account site."
NOT_CONNECTED: Final = "The add-on is not connected to the relay right now; try again in a moment."


@dataclass(frozen=True, slots=True)
class CreatedAppLink:
    url: str
    name: str


class AppLinkRefused(Exception):
    """No app link: ``message`` says why, fit to show the owner; ``code`` is the relay's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AppLinkMaker(Protocol):
    """What the panel needs (the add-on client offers it)."""

    def app_links_supported(self) -> bool | None:
        """True/False once the relay said; None while not connected."""

    async def create_app_link(self, name: str) -> CreatedAppLink: ...


def supported(session: TunnelSession | None) -> bool | None:
    if session is None or session.ended or not session.connection.peer_settings_received:
        return None
    return session.control.supported


async def create_app_link(
    session: TunnelSession | None, name: str, *, timeout: float = APP_LINK_TIMEOUT
) -> CreatedAppLink:
    """The relay's new app link for this home; :class:`AppLinkRefused` otherwise."""
    state = supported(session)
    if session is None or state is None:
        raise AppLinkRefused("not_connected", NOT_CONNECTED)
    if not state:
        raise AppLinkRefused("unsupported", UNSUPPORTED)
    body = {"op": "create_app_link", "name": name[:NAME_MAX_SENT]}
    try:
        reply = await session.control.request(body, timeout=timeout)
    except ControlFailed as exc:
        raise AppLinkRefused("no_answer", f"No answer from the relay: {exc}.") from None
    error = reply.get("error")
    if error is not None:
        message = reply.get("message")
        raise AppLinkRefused(
            str(error)[:40],
            str(message)[:300] if message else "The relay refused to create the app link.",
        )
    url, link_name = reply.get("url"), reply.get("name")
    # The URL goes into a QR code and a text field: only an https address.
    if not (isinstance(url, str) and url.startswith("https://") and isinstance(link_name, str)):
        raise AppLinkRefused("bad_reply", "The relay's answer was not understood.")
    return CreatedAppLink(url=url, name=link_name)
