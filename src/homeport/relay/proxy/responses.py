"""Response heads and relay-owned answers as bytes, for the tenant data plane.

Proxied heads are written canonically from the parsed head the tunnel
carried (never the home's raw bytes: no response splitting, R-MT-10), with
the relay's own framing (length, chunked or close-delimited) and the tenant
security headers.  The relay's own answers on tenant hosts (sign-in
redirects, busy and offline pages) are built as aiohttp ``Response`` objects
by :mod:`homeport.relay.tenant`, exactly like the account site's, and
serialised here after :func:`homeport.relay.security_headers.finish`: no
code path can leave one without HSTS and the baseline headers.
"""

from __future__ import annotations

import time
from email.utils import formatdate

from aiohttp import web

from homeport.protocol import Headers
from homeport.protocol.heads import connection_tokens
from homeport.relay import security_headers
from homeport.relay.headers import RESPONSE_DROPPED, acceptable_cookie
from homeport.relay.pages import HSTS
from homeport.relay.proxy.http1 import bodiless, reason

#: How a response body is delimited on the browser's connection.
LENGTH = "length"
CHUNKED = "chunked"
CLOSE = "close"
NONE = "none"

_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The ``Date`` header's value, formatted once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


_status_lines: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    line = _status_lines.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason(status).encode("ascii"))
        if 100 <= status <= 999:  # bounded: one line per status code
            _status_lines[status] = line
    return line


# What security_headers.tenant_response_headers adds, as the lines it becomes.
_HSTS_LINE = b"strict-transport-security: " + HSTS.encode("latin-1") + b"\r\n"
_NOSNIFF_LINE = b"x-content-type-options: nosniff\r\n"
_REFERRER_LINE = b"referrer-policy: " + security_headers.TENANT_REFERRER.encode("latin-1") + b"\r\n"
_FRAMING_LINE = (
    b"content-security-policy: " + security_headers.TENANT_FRAMING.encode("latin-1") + b"\r\n"
)


def head_is_clean(head: bytes, lines: int) -> bool:
    """Exactly ``lines`` lines, each ended by CRLF, and no other CR, LF or NUL.

    Response splitting (R-MT-10) needs a CR or LF inside a line: nothing in a
    clean head can end it early or add a line of its own.  The data plane
    checks every proxied head it writes this way, two C calls per head, after
    the tunnel's decoder refused such fields already (two layers).
    """
    stray = len(head) - len(head.translate(None, _CR_LF_NUL)) - 2 * lines
    return not stray and head.count(b"\r\n") == lines


_CR_LF_NUL = b"\r\n\x00"


def response_lines(
    names: list[bytes], values: list[bytes]
) -> tuple[list[bytes], list[int], bytes | None]:
    """A proxied response's header lines for the browser, in one pass over the home's.

    Exactly ``tenant_response_headers(response_headers(headers))`` written as
    ``name: value\\r\\n`` lines (the same hygiene, the same security headers,
    the same order), without the intermediate lists or text: the data plane
    does this for every response, from the fields as the tunnel's block
    carried them (:attr:`ResponseHead.fields`: names lower-case).  Also returns
    where the ``content-length`` lines are (the relay may re-frame the body)
    and the first one's value.

    The fields come from the tunnel's head decoder, which refused any field
    that is not a token and a clean value; unlike ``response_headers`` this
    does not check each field again: the exchange checks the whole head it
    writes (:func:`head_is_clean`).
    """
    dropped = _RESPONSE_DROPPED
    if b"connection" in names:  # rare: the fields it lists are hop-by-hop too
        listed = [
            v.decode("latin-1") for n, v in zip(names, values, strict=True) if n == b"connection"
        ]
        dropped = dropped | {token.encode("latin-1") for token in connection_tokens(listed)}
    lines: list[bytes] = []
    lengths: list[int] = []
    length: bytes | None = None
    nosniff = referrer = framed = False
    # As many values as names, by construction; strict=True would double the call.
    for name, value in zip(names, values):  # noqa: B905
        if name in dropped:
            continue
        if name in _NOTED:
            if name == b"content-length":
                if length is None:
                    length = value
                lengths.append(len(lines))
            elif name == b"set-cookie":
                if not acceptable_cookie(value.decode("latin-1")):
                    continue
            elif name == b"x-content-type-options":
                nosniff = True
            elif name == b"referrer-policy":
                referrer = True
            elif name == b"x-frame-options":
                framed = True
            elif not framed:  # content-security-policy
                framed = security_headers.has_framing_policy(
                    [("content-security-policy", value.decode("latin-1"))]
                )
        lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(_HSTS_LINE)
    if not nosniff:
        lines.append(_NOSNIFF_LINE)
    if not referrer:
        lines.append(_REFERRER_LINE)
    if not framed:
        lines.append(_FRAMING_LINE)
    return lines, lengths, length


_RESPONSE_DROPPED = frozenset(name.encode("latin-1") for name in RESPONSE_DROPPED)
#: The fields response_lines looks at more closely than to drop them or not.
_NOTED = frozenset(
    {
        b"content-length",
        b"set-cookie",
        b"x-content-type-options",
        b"referrer-policy",
        b"x-frame-options",
        b"content-security-policy",
    }
)


def encode_head(status: int, headers: Headers, *, close: bool) -> bytes:
    """A response head from validated fields (the tunnel's decoder checked every byte)."""
    parts = [status_line(status), b"date: ", http_date(), b"\r\n"]
    for name, value in headers:
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def framing(method: str, status: int, headers: Headers, *, http11: bool) -> tuple[str, int]:
    """How to delimit a proxied body: (kind, announced length or -1).

    The home's ``content-length`` is kept when it is a plain number; otherwise
    (none, or chunked upstream) an HTTP/1.1 browser gets chunked encoding and an
    HTTP/1.0 one a body delimited by closing the connection.
    """
    if bodiless(method, status):
        return NONE, -1
    for name, value in headers:
        if name == "content-length":
            if value.isdigit():
                return LENGTH, int(value)
            break
    return (CHUNKED, -1) if http11 else (CLOSE, -1)


def relay_answer(response: web.Response, *, method: str, close: bool) -> bytes:
    """A relay-owned answer (page, redirect, 401) as bytes, with every security header."""
    security_headers.finish(response, secure=True)
    body = response.body if isinstance(response.body, bytes) else b""
    parts = [status_line(response.status), b"date: ", http_date(), b"\r\n"]
    for name, value in response.headers.items():
        if name.lower() in ("content-length", "connection", "transfer-encoding", "date"):
            continue
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    for morsel in response.cookies.values():
        parts.append(f"Set-Cookie: {morsel.OutputString()}\r\n".encode("latin-1"))
    if not bodiless("GET", response.status):
        parts.append(b"Content-Length: %d\r\n" % len(body))
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    if method != "HEAD" and not bodiless("GET", response.status):
        parts.append(body)
    return b"".join(parts)


def error_answer(status: int, text: str) -> bytes:
    """A bare error for a request that could not be read (the connection closes after it)."""
    response = web.Response(status=status, text=text + "\n")
    return relay_answer(response, method="GET", close=True)
