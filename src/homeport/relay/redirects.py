"""Redirects and the return path, shared by the account site and the tenant hosts.

* :func:`redirect`: every relay redirect is a ``303``, so a POST is never
  replayed by the browser at the new address.
* :func:`safe_next`: stops open redirects: a ``next`` value is only ever a
  local path of the site that receives it.
* :func:`binding_for`: the hand-off's browser binding as the account site
  sees it (a hash of the tenant host's state cookie, never the value).
"""

from __future__ import annotations

import hashlib

from aiohttp import web

__all__ = ["binding_for", "redirect", "safe_next"]


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
