"""The checks every account-site form POST gets, for the site modules beside ``AccountSite``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from multidict import MultiDictProxy

if TYPE_CHECKING:
    from homeport.relay.account_site import AccountSite

__all__ = ["FormData", "field", "read_form"]

FormData = MultiDictProxy[str | bytes | bytearray | web.FileField]
#: Same bound as the account site's own forms.
MAX_FORM = 8 * 1024


async def read_form(site: AccountSite, request: web.Request) -> FormData | web.Response:
    """The posted form, or the refusal to send: 403 cross-site (CSRF), 413 too large."""
    if not site._same_origin(request):
        return site.pages.message("Not allowed", "Cross-site request refused.", status=403)
    if (request.content_length or 0) > MAX_FORM:
        return site.pages.message("Too large", "The form is too large.", status=413)
    return await request.post()


def field(form: FormData, name: str, limit: int = 1024) -> str:
    """One text field, at most ``limit`` characters; files count as empty."""
    value = form.get(name, "")
    return value[:limit] if isinstance(value, str) else ""
