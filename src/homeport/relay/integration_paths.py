"""Which requests an integration may send past the session gate: an exact allow-list.

A home's owner can let services on the internet reach Home Assistant without
a Homeport session (:mod:`homeport.relay.integrations`).  Home Assistant
authenticates each of these endpoints itself (an unguessable webhook id; an
HA access token), so the relay only has to be sure that a request it lets
through *is* one of them, and that Home Assistant will route it to that
endpoint and to no other.

Threat this stops: **a gate bypass by a look-alike path.**  Home Assistant
(aiohttp) normalises what it routes: it decodes percent-escapes, resolves dot
segments, and other servers fold case or merge slashes.  If the relay matched
a normalised or decoded path, ``/api/webhook/../states`` or
``/api/webhook/x%2F..%2Fstates`` could be admitted as a webhook and routed by
Home Assistant to ``/api/states``.  So the match is on the raw request target
(after the strict HTTP/1.1 parser of :mod:`homeport.relay.proxy.http1`), and
only targets that no normalisation can change are allowed:

==========================  =======================  ==================  =========
target (exactly)            methods                  query               switch
==========================  =======================  ==================  =========
``/api/webhook/<id>``       GET, HEAD, POST, PUT     allowed             webhooks
``/api/alexa/smart_home``   POST                     none                voice
``/api/google_assistant``   POST                     none                voice
``/auth/token``             POST                     none                voice
==========================  =======================  ==================  =========

``<id>`` is 1 to 128 of ``A-Z a-z 0-9 _ -`` (no ``.``, ``%``, ``/``, so no
dot segment, escape or extra segment can hide in it).  The path is matched
case-sensitively, with nothing before or after it: no trailing slash or
segment, no doubled slash, no absolute-form target, no fragment.  A webhook's
query (``?...``) may carry only printable ASCII without ``#`` (Home Assistant
hands it to the automation; it never changes the route).  A request asking
for a protocol upgrade (``Upgrade`` header, e.g. a WebSocket) never matches.
Every other method (Home Assistant answers these endpoints with 405) never
matches.  Anything that does not match is not refused here: it simply meets
the session gate like any other request.
"""

from __future__ import annotations

import enum
import re
from typing import Final

__all__ = ["IntegrationPath", "Switch", "match"]


class Switch(enum.StrEnum):
    """The owner's switches: each lets a group of paths through."""

    WEBHOOKS = "webhooks"
    VOICE = "voice"


class IntegrationPath(enum.StrEnum):
    """A matched kind of path: what the audit log and the limits call it."""

    WEBHOOK = "webhook"
    ALEXA = "alexa_smart_home"
    GOOGLE_ASSISTANT = "google_assistant"
    TOKEN = "auth_token"  # noqa: S105 (a path kind)

    @property
    def switch(self) -> Switch:
        return Switch.WEBHOOKS if self is IntegrationPath.WEBHOOK else Switch.VOICE


WEBHOOK_PREFIX: Final = "/api/webhook/"
WEBHOOK_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT"})
_WEBHOOK_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: Printable ASCII except "#" (a fragment never belongs in a request target).
_QUERY: Final = re.compile(r"[!-\"$-~]*")
_FIXED: Final = {
    "/api/alexa/smart_home": IntegrationPath.ALEXA,
    "/api/google_assistant": IntegrationPath.GOOGLE_ASSISTANT,
    "/auth/token": IntegrationPath.TOKEN,
}


def match(method: str, target: str, *, upgrade: bool) -> IntegrationPath | None:
    """The integration path ``method target`` is, or None (see the module docstring).

    ``target`` is the raw request target as read; ``upgrade`` is whether the
    request carries an ``Upgrade`` header (or asked to switch protocols).
    """
    if upgrade:
        return None
    path, has_query, query = target.partition("?")
    fixed = _FIXED.get(path)
    if fixed is not None:
        return fixed if method == "POST" and not has_query else None
    if not path.startswith(WEBHOOK_PREFIX) or method not in WEBHOOK_METHODS:
        return None
    if not _WEBHOOK_ID.fullmatch(path[len(WEBHOOK_PREFIX) :]):
        return None
    if has_query and not _QUERY.fullmatch(query):
        return None
    return IntegrationPath.WEBHOOK
