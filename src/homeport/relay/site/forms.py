"""Reading the account site's forms (the guard has checked origin and size already)."""

from __future__ import annotations

from aiohttp import web
from multidict import MultiDictProxy

__all__ = ["FormData", "field", "read_form", "text_fields"]

FormData = MultiDictProxy[str | bytes | bytearray | web.FileField]


async def read_form(request: web.Request) -> FormData:
    """The posted form (already read by the site's limits, within their deadline)."""
    return await request.post()


def field(form: FormData, name: str, limit: int = 1024) -> str:
    """One text field, at most ``limit`` characters; files count as empty."""
    value = form.get(name, "")
    return value[:limit] if isinstance(value, str) else ""


async def text_fields(request: web.Request) -> dict[str, str]:
    """Every text field of the posted form (files left out)."""
    form = await request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}
