"""Reading the account site's forms (the guard has checked origin and size already)."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web
from multidict import MultiDictProxy

__all__ = ["FormData", "field", "parse_until", "read_form", "text_fields"]

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


def parse_until(text: str) -> datetime | None:
    """A form's ``YYYY-MM-DDTHH:MM[:SS]`` in UTC (what ``datetime-local`` sends); ``""``: none.

    :class:`ValueError` with a message for the person for anything else.
    """
    text = text.strip()
    if not text:
        return None
    if len(text) > 32 or "T" not in text:
        raise ValueError("Give the end as a date and a time.")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("Give the end as a date and a time.") from None
    if value.tzinfo is not None:
        raise ValueError("Give the end in UTC, without a time zone.")
    return value.replace(tzinfo=UTC)


def when(value: datetime | None) -> str:
    """A time as the pages and the audit details write it (UTC), or "never"."""
    return "never" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def home_id(request: web.Request) -> str:
    """The home named in the path (``/instances/{id}/…``); the stores check it."""
    return request.match_info.get("id", "")


def path_int(request: web.Request, name: str) -> int:
    """A numeric id from the path; -1 (no such row) for anything else."""
    return small_int(request.match_info.get(name, ""))


def small_int(text: str) -> int:
    """A numeric id from text; -1 (no such row) for anything else, or anything too long."""
    return int(text) if text.isdigit() and len(text) < 12 else -1
